"""Segmentation models (flax.linen, NHWC) and their registry.

`build_model("deeplab_v3plus", num_classes=21, depth=101, output_stride=16)` returns an unbound flax module
(`backbone="xception"` for Xception-71); see models/deeplab.py for the call signature and output resolution.
models/pretrained.py fills the backbone from torchvision/timm ImageNet weights (`load_backbone_weights`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from semeda_jax.models.aspp import ASPP, ASPPL
from semeda_jax.models.deeplab import BACKBONES, DeepLabV2, DeepLabV3, DeepLabV3Plus, upsample_logits
from semeda_jax.models.layers import BN_MODES, ConvBNReLU, frozen_bn_mask, norm
from semeda_jax.models.pretrained import load_backbone_weights
from semeda_jax.models.resnet import ResNet
from semeda_jax.models.xception import Xception

MODELS = {
    "deeplab_v2": DeepLabV2,
    "deeplab_v3": DeepLabV3,
    "deeplab_v3plus": DeepLabV3Plus,
}


def model_attributes(cls: type[nn.Module]) -> tuple[str, ...]:
    """The constructor attributes of a flax module class (without flax's own `parent` and `name`)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name"))


def build_model(name: str, **kwargs) -> nn.Module:
    """The registered model `name` built with `kwargs`; ValueError for an unknown name or attribute."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are {sorted(MODELS)}")
    cls = MODELS[name]
    valid = model_attributes(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"model {name!r}: unknown argument(s) {unknown}; valid arguments are {list(valid)}")
    return cls(**kwargs)


__all__ = [
    "ASPP",
    "ASPPL",
    "BACKBONES",
    "BN_MODES",
    "MODELS",
    "ConvBNReLU",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "ResNet",
    "Xception",
    "build_model",
    "frozen_bn_mask",
    "load_backbone_weights",
    "model_attributes",
    "norm",
    "upsample_logits",
]
