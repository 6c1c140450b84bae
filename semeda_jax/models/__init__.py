"""Segmentation models (flax.linen, NHWC): backbone + head + optional auxiliary heads (models/builder.py).

`build_model("deeplab_v3plus", num_classes=21, depth=101, output_stride=16)` returns an unbound flax module whose
apply gives a dict of named outputs, "logits" [B,h,w,C] first (`backbone="xception"` for Xception-71);
`build_segmentation_model(config, num_classes)` builds config.model. Heads: models/deeplab.py (ASPP-L, LargeFOV,
ASPP, v3+ decoder) and models/pac.py (pyramid atrous convolution); models/vgg.py is DeepLab's VGG-16 and
models/guidance.py the classification branch ("class_logits"); RelationNet: models/resnet38.py (ResNet-38),
models/relation.py (relation module + head "relation"), models/similarity.py (aux head "similarity" ->
"pair_logits"). models/pretrained.py fills the backbone from torchvision/timm (and PSA's ResNet-38) ImageNet
weights (`load_backbone_weights`).
"""
from __future__ import annotations

from semeda_jax.models.aspp import ASPP, ASPPL
from semeda_jax.models.builder import (AUX_HEADS, BACKBONES, HEADS, MODELS, SegmentationModel, build_model,
                                       build_segmentation_model, constructor_fields)
from semeda_jax.models.deeplab import ASPPHead, ASPPLHead, DecoderHead, LargeFOVHead, upsample_logits
from semeda_jax.models.guidance import ClassificationBranch
from semeda_jax.models.layers import BN_MODES, ConvBNReLU, frozen_bn_mask, norm
from semeda_jax.models.pac import PACHead, PyramidAtrousConv
from semeda_jax.models.pretrained import load_backbone_weights
from semeda_jax.models.relation import RelationHead, RelationModule
from semeda_jax.models.resnet import ResNet
from semeda_jax.models.resnet38 import ResNet38
from semeda_jax.models.similarity import SimilarityHead
from semeda_jax.models.vgg import VGG16
from semeda_jax.models.xception import Xception

__all__ = [
    "ASPP",
    "ASPPHead",
    "ASPPL",
    "ASPPLHead",
    "AUX_HEADS",
    "BACKBONES",
    "BN_MODES",
    "ClassificationBranch",
    "HEADS",
    "MODELS",
    "ConvBNReLU",
    "DecoderHead",
    "LargeFOVHead",
    "PACHead",
    "PyramidAtrousConv",
    "RelationHead",
    "RelationModule",
    "ResNet",
    "ResNet38",
    "SegmentationModel",
    "SimilarityHead",
    "VGG16",
    "Xception",
    "build_model",
    "build_segmentation_model",
    "constructor_fields",
    "frozen_bn_mask",
    "load_backbone_weights",
    "norm",
    "upsample_logits",
]
