"""Segmentation models (flax.linen, NHWC): backbone + head + optional auxiliary heads (models/builder.py).

`build_model("deeplab_v3plus", num_classes=21, depth=101, output_stride=16)` returns an unbound flax module whose
apply gives a dict of named outputs, "logits" [B,h,w,C] first (`backbone="xception"` for Xception-71);
`build_segmentation_model(config, num_classes)` builds config.model. Heads: models/deeplab.py (ASPP-L, ASPP,
v3+ decoder) and models/pac.py (pyramid atrous convolution). models/pretrained.py fills the backbone from
torchvision/timm ImageNet weights (`load_backbone_weights`).
"""
from __future__ import annotations

from semeda_jax.models.aspp import ASPP, ASPPL
from semeda_jax.models.builder import (AUX_HEADS, BACKBONES, HEADS, MODELS, SegmentationModel, build_model,
                                       build_segmentation_model, constructor_fields)
from semeda_jax.models.deeplab import ASPPHead, ASPPLHead, DecoderHead, upsample_logits
from semeda_jax.models.layers import BN_MODES, ConvBNReLU, frozen_bn_mask, norm
from semeda_jax.models.pac import PACHead, PyramidAtrousConv
from semeda_jax.models.pretrained import load_backbone_weights
from semeda_jax.models.resnet import ResNet
from semeda_jax.models.xception import Xception

__all__ = [
    "ASPP",
    "ASPPHead",
    "ASPPL",
    "ASPPLHead",
    "AUX_HEADS",
    "BACKBONES",
    "BN_MODES",
    "HEADS",
    "MODELS",
    "ConvBNReLU",
    "DecoderHead",
    "PACHead",
    "PyramidAtrousConv",
    "ResNet",
    "SegmentationModel",
    "Xception",
    "build_model",
    "build_segmentation_model",
    "constructor_fields",
    "frozen_bn_mask",
    "load_backbone_weights",
    "norm",
    "upsample_logits",
]
