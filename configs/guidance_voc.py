"""Classification guidance + guidance CRF on Pascal VOC 2012 + SBD: the guidance paper's Table 3 rows as variants.

    python -m semeda_jax.main --config=configs/guidance_voc.py:resnet101,learned --workdir=runs/guidance_r101 \
        --config.dataset.root=/data/VOCdevkit/VOC2012 --config.dataset.sbd_root=/data/benchmark_RELEASE/dataset

Variants, comma-separated after the file name; one row and one backbone (defaults: learned, resnet101). VOC val
mIoU of each row in the paper (Table 3, VGG-16 / ResNet-101), every row evaluated on the 6 views (scales 0.8,
1.0, 1.2 x flips; "we run 6 candidates and combine ... by averaging"):
    baseline       DeepLab (VGG-16 LargeFOV OS 8 / ResNet-101 + the two 1024-filter convs, OS 16), CE,
                   fusion avg                                                              72.54 / 76.35
    clsnet         + the classification branch (class_logits added to the scores, Eq. 3)   74.13 / 77.71
    compatibility  + the guidance CRF (guided-filter mean field, content-sensitive
                   compatibility from class_logits, Eqs. 4-7) as post-processing           75.89 / 78.12
    learned        + learned per-class view weights (Eqs. 9-10; stage learn_fusion on the
                   training split after train, then eval)                                  75.99 / 81.32
    backbone       resnet101 (default) | vgg16
    multilabel     adds the multi-label loss on class_logits (ce+multilabel; the paper describes none)
    potts          the CRF with the Potts compatibility instead (an ablation of compatibility, not a row)
    crflayer       the CRF as an unrolled layer in training and inference (config.model.crf_layer) in place
                   of the post-processing: our extension, the paper trains piecewise (not a row)
    smoke          tiny model, crops and step counts (tests; needs dataset.root or a dataset override)
The ResNet "+learn to combine" jump (+3.2) disagrees with Table 2's marginal gains (SPEC.md 4(b)).
Settings (guidance paper §4.1, SPEC.md 4(b)): crop 512; VGG-16: batch 1, lr 1e-5, momentum 0.99, weight decay
5e-4 (no BN); ResNet-101: batch 16 with synchronized BN over groups of 8, lr 0.01, momentum 0.9, weight decay 1e-4;
poly 0.9 (max_iter not given: 30k). CRF (config.eval.crf): eps 10 on 0-255 intensities (the paper's); radius 4,
5 iterations, pairwise weight 1 and lambda 1 are ours (not given). No COCO pre-training (the paper's baseline has
it) and the pool6 global pooling of its baseline is not built.
"""
from __future__ import annotations

import ml_collections

from configs import common

ROWS = ("baseline", "clsnet", "compatibility", "learned")
BACKBONES = {
    "resnet101": dict(model=dict(name="deeplab_guidance", backbone="resnet", depth=101, stem="deeplab",
                                 output_stride=16, bn_mode="train", bn_group_size=8),
                      baseline=dict(class_branch=False), batch_size=16,
                      optimizer=dict(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)),
    "vgg16": dict(model=dict(name="deeplab_largefov_guidance", backbone="vgg16", depth=16, stem="standard",
                             output_stride=8),
                  baseline=dict(name="deeplab_largefov"), batch_size=1,
                  optimizer=dict(learning_rate=1e-5, momentum=0.99, weight_decay=5e-4)),
}
FLAGS = ("multilabel", "potts", "crflayer")
# {group: (default, tokens)}: one row, one backbone, each flag on or off, smoke.
VARIANTS = {"row": ("learned", ROWS), "backbone": ("resnet101", tuple(BACKBONES)),
            **{flag: (None, (flag,)) for flag in FLAGS}, **common.SMOKE}
FIRST_ROW = {"multilabel": "clsnet", "potts": "compatibility", "crflayer": "compatibility"}  # a flag's first row


def parse_variant(arg: str | None) -> dict:
    """'vgg16,compatibility,smoke' -> {"row": "compatibility", "backbone": "vgg16", "multilabel": None, ...}
    (common.parse_variants); a ValueError names a flag given with a row before the one it modifies."""
    chosen = common.parse_variants(arg, "configs/guidance_voc.py", VARIANTS)
    for flag, row in FIRST_ROW.items():
        if chosen[flag] and ROWS.index(chosen["row"]) < ROWS.index(row):
            raise ValueError(f"configs/guidance_voc.py: variant {flag!r} needs the row {row!r} or a later one, "
                             f"got {chosen['row']!r}")
    return chosen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_variant(arg)
    backbone = BACKBONES[variant["backbone"]]
    row = ROWS.index(variant["row"])
    config = common.base_config()
    config.dataset.update(name="voc", num_classes=21, train_split="train_aug", val_split="val")
    config.model.update(backbone["model"])
    if row == 0:  # the DeepLab baseline: no classification branch
        config.model.update(backbone["baseline"])
    config.data.update(crop_size=(512, 512), scale_range=(0.5, 2.0), batch_size=backbone["batch_size"],
                       eval_pad_size=(512, 512))
    config.loss = "ce+multilabel" if variant["multilabel"] and row >= 1 else "ce"
    config.optimizer.update(warmup_steps=0, poly_power=0.9, **backbone["optimizer"])
    config.eval.inference.update(scales=(0.8, 1.0, 1.2), flip=True, fusion="avg")
    if row >= 2:
        config.eval.crf.update(radius=4, eps=10.0, iterations=5, weight=1.0, lam=1.0,
                               compatibility="potts" if variant["potts"] else "content")
        if variant["crflayer"]:
            config.model.crf_layer = True
        else:
            config.eval.inference.postprocess = "guided_crf"
    if row == 3:
        config.eval.inference.fusion = "learned"
        config.eval.learn_fusion.split = "train"  # VOC's 1,464 train images: a subset of train_aug, never val
        config.stages = ("train", "learn_fusion", "eval")
    if variant["smoke"]:
        common.shrink_for_smoke(config)
    return config
