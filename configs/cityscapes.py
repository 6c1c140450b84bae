"""SEMEDA on Cityscapes (fine annotations): train 2,975, evaluate on val 500 at full 2048x1024, 19 classes.

    python -m semeda_jax.main --config=configs/cityscapes.py --workdir=runs/cs_semeda \
        --config.dataset.root=/data/cityscapes --config.model.pretrained=/weights/xception71.safetensors
    python -m semeda_jax.main --config=configs/cityscapes.py:ppce --workdir=runs/cs_ppce ...   # PPCE baseline

DeepLab v3+ / Xception-71 with CE + SEMEDA, lambdas (4, 2, 0) (the paper's best on Cityscapes, Table 1), frozen BN,
321x321 crops of full-resolution images, batch 6, lr 5e-4. The DeepLab v2 variant (`:v2`) sees the images at half
resolution, 1024x512, as the paper's v2 runs (§4.1, "for memory reasons"): data.input_scale = 0.5; it is still
evaluated against the full-resolution labels (logits upsampled).
Paper, Cityscapes val mIoU: X-71 PPCE 75.5 / Sobel 76.3 / SEMEDA 77.3 (Table 1); R-101 72.4 / SEMEDA 73.6 (Table 5).
"""
from __future__ import annotations

import ml_collections

from configs import semeda_paper


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = semeda_paper.semeda_config(
        arg, config_file="configs/cityscapes.py",
        dataset=dict(name="cityscapes", num_classes=19, train_split="train", val_split="val", annotation="gtFine"),
        lambdas=(4.0, 2.0, 0.0), steps=30000, eval_pad_size=(1024, 2048), eval_batch_size=1)
    if config.model.name == "deeplab_v2":
        config.data.input_scale = 0.5
    return config
