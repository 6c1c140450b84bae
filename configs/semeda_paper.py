"""The SEMEDA paper's training setup, shared by configs/voc.py, configs/cityscapes.py and configs/helen.py.

SEMEDA §3.4 / §4.1 (SPEC.md 1(c)): DeepLab v3+ on an ImageNet-pretrained backbone, 321x321 random crops with random
scaling and mirroring, mini-batches of 6 with frozen batch norm, initial learning rate 5e-4, single-scale unflipped
evaluation. The paper does not give the optimiser, schedule, length or scale range: we use SGD + momentum 0.9,
weight decay 1e-4, poly 0.9, scale 0.5-2.0 (DeepLab's), output stride 16 and `steps` per dataset.

Variants, comma-separated after the file name (`configs/voc.py:ppce,resnet101`):
    loss      semeda (default: CE + SEMEDA, Eq. 6) | ppce (CE only) | sobel (CE + Sobel, coefficient 4)
    model     v3plus (default) | v2 (DeepLab v2 with ASPP-L, output stride 8)
    backbone  xception71 (default, the paper's Table 1) | resnet101
    smoke     tiny model, crops and step counts: every stage on tiny shapes (tests; needs dataset.root)
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

from configs import common

LOSS_VARIANTS = {"semeda": "ce+semeda", "ppce": "ce", "sobel": "ce+sobel"}
MODEL_VARIANTS = {"v3plus": "deeplab_v3plus", "v2": "deeplab_v2"}
BACKBONE_VARIANTS = {
    "xception71": dict(backbone="xception", depth=71, stem="standard"),
    "resnet101": dict(backbone="resnet", depth=101, stem="standard"),  # torchvision's; "deeplab" for resnet101s
}


# Input normalisation (0-255 RGB -> (x - mean) / std) that each backbone's ImageNet weights expect:
# torchvision/timm ResNets use the ImageNet statistics, TF-trained Xception-71 maps to [-1, 1].
BACKBONE_NORMALISATION = {
    "xception71": dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
    "resnet101": dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
}


# The variant groups of configs/voc.py, cityscapes.py and helen.py: {group: (default, tokens)}.
VARIANTS = {"loss": ("semeda", tuple(LOSS_VARIANTS)), "model": ("v3plus", tuple(MODEL_VARIANTS)),
            "backbone": ("xception71", tuple(BACKBONE_VARIANTS)), **common.SMOKE}


def semeda_config(arg: str | None, *, config_file: str, dataset: dict, lambdas: Sequence[float], steps: int,
                  eval_pad_size: Sequence[int], eval_batch_size: int) -> ml_collections.ConfigDict:
    """The SEMEDA setup on `dataset` (config.dataset fields) with the paper's `lambdas` for that dataset."""
    variants = common.parse_variants(arg, config_file, VARIANTS)
    config = common.base_config()
    config.dataset.update(dataset)

    config.model.name = MODEL_VARIANTS[variants["model"]]
    config.model.update(BACKBONE_VARIANTS[variants["backbone"]])
    config.model.bn_mode = "frozen"  # §3.4: "we fix parameters in batch norm layers"
    if variants["model"] == "v2":
        config.model.output_stride = 8

    config.data.update(BACKBONE_NORMALISATION[variants["backbone"]])
    config.data.update(crop_size=(321, 321), scale_range=(0.5, 2.0), batch_size=6,
                       eval_pad_size=tuple(eval_pad_size), eval_batch_size=eval_batch_size)
    config.loss = LOSS_VARIANTS[variants["loss"]]
    config.losses.semeda.lambdas = tuple(float(v) for v in lambdas)
    config.losses.sobel.coefficient = 4.0  # the paper's best Sobel coefficient (Table 1)
    config.optimizer.update(learning_rate=5e-4, momentum=0.9, weight_decay=1e-4, warmup_steps=0, poly_power=0.9)
    config.train.update(steps=steps, log_every=50, eval_every=2000, checkpoint_every=1000)

    if variants["smoke"]:
        common.shrink_for_smoke(config)
    return config
