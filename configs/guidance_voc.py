"""Classification guidance + guidance CRF on Pascal VOC 2012 + SBD, ResNet-101 (the guidance paper's Table 3).

    python -m semeda_jax.main --config=configs/guidance_voc.py --workdir=runs/guidance_voc \
        --config.dataset.root=/data/VOCdevkit/VOC2012 --config.dataset.sbd_root=/data/benchmark_RELEASE/dataset

Needs what is not built yet, and says so: the model "deeplab_guidance" (DeepLab on ResNet-101 at output stride 16
plus the classification branch: 7x7 max pool -> FC 4096 -> FC 4096 -> C), its classification loss, the
content-sensitive label compatibility and the mean-field guidance CRF with a guided-filter kernel (the
post-processing "guidance_crf" of semeda_jax/inference.py); the test-time ensemble below runs on the inference
seam. `check_config` stops at once with a ConfigError naming the model.
Settings (guidance paper §4.1, SPEC.md 4(b)): crop 512, batch 16 with synchronized BN over groups of 8, lr 0.01,
poly 0.9, momentum 0.9, weight decay 1e-4. CRF: guided-filter eps 10 on 0-255 intensities; the paper gives no
window radius, iteration count or compatibility weight (ours: radius 4, 5 iterations, lambda 1).
Paper, VOC val mIoU: DeepLab 76.35, +clsNet 77.71, +compatibility 78.12, +learned combination 81.32.
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.dataset.update(name="voc", num_classes=21, train_split="train_aug", val_split="val",
                          sbd_root=ml_collections.config_dict.placeholder(str))
    config.model.update(dict(
        name="deeplab_guidance", depth=101, base_width=64, output_stride=16, stem="deeplab", bn_mode="train",
        bn_group_size=8))  # synchronized BN over groups of 8 samples of the batch of 16 (the paper's best)
    config.data.update(crop_size=(512, 512), scale_range=(0.5, 2.0), batch_size=16, eval_pad_size=(512, 512))
    config.loss = "ce"
    config.optimizer.update(learning_rate=0.01, momentum=0.9, weight_decay=1e-4, warmup_steps=0, poly_power=0.9)
    # Test-time ensemble (Eq. 8): 3 scales x flips fused by (avg + max) / 2, then the guidance CRF (to be
    # registered as the post-processing "guidance_crf"; its settings are in the docstring above).
    config.eval.inference.update(scales=(0.8, 1.0, 1.2), flip=True, fusion="avg+max", postprocess="guidance_crf")
    return common.apply_variant(config, arg, "configs/guidance_voc.py")
