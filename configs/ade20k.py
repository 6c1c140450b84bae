"""ADE20K (SceneParsing, 150 classes): DeepLab v3+ R-101-D8 at mmseg's 512x512 recipe; train 20,210, val 2,000.

    python -m semeda_jax.main --config=configs/ade20k.py --workdir=runs/ade_r101 \
        --config.dataset.root=/data/ADEChallengeData2016 --config.model.pretrained=/weights/r101.safetensors
    python -m semeda_jax.main --config=configs/ade20k.py:160k,ms_flip ...    # 160k steps, multi-scale + flip eval
    python -m semeda_jax.main --config=configs/ade20k.py:semeda ...          # CE + SEMEDA (or :bal)
    python -m semeda_jax.main --config=configs/ade20k.py:tfds --config.dataset.data_dir=/data/tfds ...
    python -m semeda_jax.main --config=configs/ade20k.py:smoke --workdir=/tmp/ade --config.dataset.root=DIR

mmseg's recipe (configs/mmseg_recipe.py, which also lists what differs): 512x512 crops of images rescaled by
0.5-2.0 (mmseg: towards 2048x512 times 0.5-2.0, the same factor for the release's images with a shorter side of
512; smaller images get no upscaling here), flips, batch 16, SGD lr 0.01 poly, weight decay 5e-4, SyncBN;
label 0 ("other") is void (ade20k.py). Evaluation: the whole image at its own size (= mmseg's short side 512 for
the large images) padded to 1024x1024; an image beyond that fails before anything runs with a line naming it and
the size to set (config.data.eval_pad_size).
mmseg, DeepLabV3+ R-101-D8 512x512, ADE20K val mIoU: 44.60 (80k), 45.47 (160k), 46.35 (160k, multi-scale + flip).
Variants: 80k (default) | 160k, ms_flip, semeda | bal, tfds (TFDS scene_parse150: its "test" split is the
validation set), smoke.
"""
from __future__ import annotations

import ml_collections

from configs import mmseg_recipe
from semeda_jax.data.ade20k import ADE20K_CLASSES

# The same data from TFDS (scene_parse150: raw 0 = other -> void, 1..150 -> 0..149); its "test" split is the
# validation set.
TFDS = {"dataset.name": "tfds", "dataset.tfds_name": "scene_parse150", "dataset.train_split": "train",
        "dataset.val_split": "test", "dataset.image_key": "image", "dataset.label_key": "annotation",
        "dataset.label_offset": -1, "dataset.void_values": (0, 255), "dataset.class_names": ADE20K_CLASSES}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return mmseg_recipe.mmseg_config(
        arg, config_file="configs/ade20k.py",
        dataset=dict(name="ade20k", num_classes=150, train_split="training", val_split="validation"),
        crop_size=(512, 512), steps={"80k": 80_000, "160k": 160_000}, learning_rate=0.01, weight_decay=5e-4,
        input_scale=1.0, eval_pad_size=(1024, 1024), variants={"source": {"tfds": TFDS}})
