"""SEMEDA on Pascal VOC 2012 + SBD: train on train_aug (10,582 images), evaluate on val (1,449), 21 classes.

    python -m semeda_jax.main --config=configs/voc.py --workdir=runs/voc_semeda \
        --config.dataset.root=/data/VOCdevkit/VOC2012 --config.dataset.sbd_root=/data/benchmark_RELEASE/dataset \
        --config.model.pretrained=/weights/xception71.safetensors
    python -m semeda_jax.main --config=configs/voc.py:ppce --workdir=runs/voc_ppce ...       # PPCE baseline
    python -m semeda_jax.main --config=configs/voc.py:sobel,resnet101 --workdir=runs/voc_sobel_r101 ...

DeepLab v3+ / Xception-71 with CE + SEMEDA, lambdas (2, 4, 0) (the paper's best on VOC, Table 1), frozen BN,
321x321 crops, batch 6, lr 5e-4 (configs/semeda_paper.py lists the variants and the choices the paper leaves open).
Paper, VOC val mIoU (single scale): X-71 PPCE 77.1 / Sobel 77.6 / SEMEDA 78.8 (Table 1); R-101 74.4 / SEMEDA 75.3
(Table 5).
"""
from __future__ import annotations

import ml_collections

from configs import semeda_paper


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return semeda_paper.semeda_config(
        arg, config_file="configs/voc.py",
        dataset=dict(name="voc", num_classes=21, train_split="train_aug", val_split="val"),
        lambdas=(2.0, 4.0, 0.0), steps=30000, eval_pad_size=(512, 512), eval_batch_size=4)
