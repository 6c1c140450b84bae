"""mmsegmentation's DeepLab v3+ R-101-D8 recipe, shared by configs/ade20k.py, coco_stuff.py and pascal_context.py.

mmseg (configs/deeplabv3plus, _base_/models/deeplabv3plus_r50-d8.py, its dataset and schedule files): ResNet-101
V1c at output stride 8 with the DeepLab v3+ head, SyncBN, SGD (momentum 0.9) with poly 0.9 decay, a global batch
of 16 (4 GPUs x 4), random crops of images rescaled towards a base size times a ratio in [0.5, 2.0] (mmseg's
Resize(img_scale, ratio_range, keep_ratio)), flips; evaluation of the whole image rescaled towards the base size,
the multi-scale variant at ratios 0.5-1.75 with flips.

Mapping onto our pipeline: mmseg's rescale factor of an image is min(long_base * r / long side, short_base * r /
short side); ours is one factor in `scale_range` (times data.input_scale) for every image. `input_scale` = the
factor mmseg applies to the dataset's typical image (ADE20K: 1, its large images have a short side of 512
already; COCO-Stuff: 512 / 480; Pascal Context: 520 / 500), so training sees that factor times [0.5, 2.0] and
evaluation resizes by it and scores the logits upsampled to the original labels, as mmseg does. Images of
another size get the same factor instead of mmseg's per-image one. Evaluation pads to `eval_pad_size` (one
compiled shape; the padding is the mean colour and void).
Not built here: mmseg's auxiliary FCN head (CE weight 0.4 on stage 3), PhotoMetricDistortion, the crop's
cat_max_ratio=0.75 retry, the learning-rate floor (mmseg decays to 1e-4, ours to 0), weight decay on biases and
BN parameters (ours: kernels only), and the V1c stem widths (32-32-64; our "deeplab" deep stem is 64-64-128, so
mmseg's resnet101_v1c weights do not load: config.model.pretrained = timm's resnet101s.gluon_in1k, README).

Variants (comma-separated after the file name, one per group; common.parse_variants): a token maps to config
overrides (OVERRIDES):
    <n>k       train.steps = n * 1000 (the file's schedules)
    ms_flip    evaluation at scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 with flips (mmseg's aug test)
    semeda     loss CE + SEMEDA (lambdas 2, 4, 0: the paper's VOC setting; g_phi pre-trained first)
    bal        loss BAL (gaussian, n 35, sigma 3, beta 0.5, down 4: the paper's best)
    smoke      tiny model, crops and step counts on the dataset's layout (tests; needs dataset.root)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections

from configs import common

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# token -> config overrides (dotted paths); the groups below say which tokens exclude each other.
OVERRIDES = {
    "ms_flip": {"eval.inference.scales": MS_SCALES, "eval.inference.flip": True},
    "semeda": {"loss": "ce+semeda"},
    "bal": {"loss": "bal"},
}
GROUPS = {"eval": (None, ("ms_flip",)), "loss": (None, ("semeda", "bal")), **common.SMOKE}


def mmseg_config(arg: str | None, *, config_file: str, dataset: dict, crop_size: Sequence[int], steps: dict,
                 learning_rate: float, weight_decay: float, input_scale: float, eval_pad_size: Sequence[int],
                 variants: Mapping[str, Mapping] | None = None) -> ml_collections.ConfigDict:
    """The recipe on `dataset` (config.dataset fields); `steps` {"80k": 80000, ...}: the schedules, the first
    the default; `variants` {group: {token: overrides}}: the file's own variant groups (default: none)."""
    overrides = {**{name: {"train.steps": n} for name, n in steps.items()}, **OVERRIDES}
    groups = {"steps": (next(iter(steps)), tuple(steps)), **GROUPS}
    for group, tokens in (variants or {}).items():
        overrides.update(tokens)
        groups[group] = (None, tuple(tokens))
    chosen = common.parse_variants(arg, config_file, groups)
    config = common.base_config()
    config.dataset.update(dataset)
    config.model.update(name="deeplab_v3plus", backbone="resnet", depth=101, output_stride=8, stem="deeplab",
                        bn_mode="train")  # SyncBN: statistics of the global batch
    config.data.update(crop_size=tuple(crop_size), scale_range=(0.5, 2.0), batch_size=16, input_scale=input_scale,
                       eval_pad_size=tuple(eval_pad_size), eval_batch_size=4)
    config.loss = "ce"
    config.optimizer.update(learning_rate=learning_rate, momentum=0.9, weight_decay=weight_decay, warmup_steps=0,
                            poly_power=0.9)
    config.train.update(log_every=50, eval_every=8000, checkpoint_every=4000)
    for group, token in chosen.items():
        if token is not None and group != "smoke":
            config.update_from_flattened_dict(overrides[token])  # dotted paths of existing fields
    if chosen["smoke"]:
        common.shrink_for_smoke(config)
        config.data.input_scale = 1.0  # the generated images fit the smoke eval_pad_size as they are
    return config
