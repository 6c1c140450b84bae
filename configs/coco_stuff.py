"""COCO-Stuff 164k (171 classes): DeepLab v3+ R-101-D8 at mmseg's 512x512 recipe; train 118k, val 5k.

    python -m semeda_jax.main --config=configs/coco_stuff.py --workdir=runs/cocostuff_r101 \
        --config.dataset.root=/data/coco_stuff164k --config.model.pretrained=/weights/r101.safetensors
    python -m semeda_jax.main --config=configs/coco_stuff.py:160k,ms_flip ...  # 160k steps, multi-scale + flip
    python -m semeda_jax.main --config=configs/coco_stuff.py:smoke --workdir=/tmp/cs --config.dataset.root=DIR

Labels: the released stuffthingmaps (codes 0..181, mapped on the fly to the 171 classes) or mmseg's
*_labelTrainIds.png, detected per split (`--config.dataset.label_format=stuffthingmaps|trainids` forces one;
coco_stuff.py). mmseg's recipe (configs/mmseg_recipe.py, which also lists what differs): 512x512 crops of images
rescaled towards 2048x512 times 0.5-2.0, flips, batch 16, SGD lr 0.01 poly, weight decay 5e-4, SyncBN,
80k / 160k / 320k steps. The typical COCO image is 640x480, which mmseg rescales by 512 / 480: data.input_scale
= 512 / 480, so training scales are 0.53-2.13 and evaluation runs at 683x512 against the original labels; the
images (at most 640 per side) are padded to 640x640.
Variants: 80k (default) | 160k | 320k, ms_flip, semeda | bal, smoke.
"""
from __future__ import annotations

import ml_collections

from configs import mmseg_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return mmseg_recipe.mmseg_config(
        arg, config_file="configs/coco_stuff.py",
        dataset=dict(name="coco_stuff", num_classes=171, train_split="train2017", val_split="val2017",
                     label_format="auto"),
        crop_size=(512, 512), steps={"80k": 80_000, "160k": 160_000, "320k": 320_000}, learning_rate=0.01,
        weight_decay=5e-4, input_scale=512 / 480, eval_pad_size=(640, 640))
