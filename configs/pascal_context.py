"""Pascal Context (60 classes with background, or 59 with background void): DeepLab v3+ R-101-D8 at mmseg's
480x480 recipe; train 4,998, val 5,105 (VOC 2010 images).

    python -m semeda_jax.main --config=configs/pascal_context.py --workdir=runs/context_r101 \
        --config.dataset.root=/data/VOCdevkit/VOC2010 --config.model.pretrained=/weights/r101.safetensors
    python -m semeda_jax.main --config=configs/pascal_context.py:59,80k ...   # the 59-class benchmark, 80k steps
    python -m semeda_jax.main --config=configs/pascal_context.py:smoke --workdir=/tmp/pc --config.dataset.root=DIR

Labels: SegmentationClassContext/<id>.png with codes 0..59 (pascal_context.py). mmseg's recipe
(configs/mmseg_recipe.py, which also lists what differs): 480x480 crops of images rescaled towards 520x520 times
0.5-2.0, flips, batch 16, SGD lr 0.004 poly, weight decay 1e-4, SyncBN, 40k / 80k steps; evaluation by 480x480
windows every 320 pixels on the image rescaled towards 520x520. VOC images are at most 500 per side, which mmseg
rescales by 520 / 500: data.input_scale = 1.04 (training scales 0.52-2.08, evaluation at 520 against the
original labels); images are padded to 500x500.
Variants: 40k (default) | 80k, 59 (background void), ms_flip, semeda | bal, smoke.
"""
from __future__ import annotations

import ml_collections

from configs import mmseg_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = mmseg_recipe.mmseg_config(
        arg, config_file="configs/pascal_context.py",
        dataset=dict(name="pascal_context", num_classes=60, train_split="train", val_split="val"),
        crop_size=(480, 480), steps={"40k": 40_000, "80k": 80_000}, learning_rate=0.004, weight_decay=1e-4,
        input_scale=520 / 500, eval_pad_size=(500, 500), variants={"classes": {"59": {"dataset.num_classes": 59}}})
    config.eval.inference.update(mode="sliding", window=(480, 480), stride=(320, 320))
    return config
