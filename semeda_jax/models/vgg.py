"""VGG-16 for DeepLab-LargeFOV (Chen et al. 2015; the guidance paper's VGG-16 segmentation branch).

The backbone is VGG-16's conv1-conv5 (13 3x3 convs with bias and ReLU, no batch norm) with DeepLab's pooling:
3x3 max pools with padding 1; pool1-pool3 have stride 2; pool4 keeps stride 2 at output stride 16 and drops it
at output stride 8 (conv5 then runs at dilation 2, LargeFOV); pool5 always has stride 1. The image is first
zero-padded at the bottom and right to a multiple of the output stride (the guidance paper: "we pad the image
size to a multiply of 8 or 16"; after the mean/std normalisation zero is the mean colour, Caffe's padding), so
every pool halves exactly and the features have ceil(H / output_stride) rows, as every backbone here.

Channel widths are base_width * (1, 2, 4, 8, 8) (64 = VGG-16; 8 gives a CPU-sized test model). Parameter names
are Caffe's (conv1_1 ... conv5_3); models/pretrained.py maps torchvision's `features.<i>` onto them
(VGG16_FEATURES). The LargeFOV head (fc6 3x3 dilation 12, fc7 1x1, 1024 filters each) is
models/deeplab.LargeFOVHead; the parameter tree does not depend on the output stride.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.layers import conv

# (convs per block) of VGG-16 and the torchvision `features` index of every conv, in order.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_OUTPUT_STRIDES = (8, 16)


def vgg16_conv_names() -> tuple[str, ...]:
    """conv1_1, conv1_2, conv2_1, ..., conv5_3 (Caffe's names, in torchvision's `features` order)."""
    return tuple(f"conv{b}_{k}" for b, n in enumerate(VGG16_BLOCKS, start=1) for k in range(1, n + 1))


def pad_to_multiple(images: jax.Array, multiple: int) -> jax.Array:
    """images [B,H,W,C] -> [B,ceil(H/m)*m,ceil(W/m)*m,C], zeros appended at the bottom and right."""
    height, width = images.shape[1:3]
    pad_h, pad_w = math.ceil(height / multiple) * multiple - height, math.ceil(width / multiple) * multiple - width
    if not (pad_h or pad_w):
        return images
    return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    """[B,H,W,C] -> [B,ceil(H/stride),ceil(W/stride),C]: DeepLab's 3x3 max pool, padding 1 (ignored: -inf)."""
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))


class VGG16(nn.Module):
    """VGG-16 conv1-conv5 at output stride 8 or 16 (see the module docstring).

    images [B,H,W,3] -> {"low_level": conv3_3 [B,H'/4,W'/4,4 base_width],
                         "out": pool5(conv5_3) [B,H'/os,W'/os,8 base_width]}
    with H' = ceil(H / os) * os, W' likewise (the padded size; os = output_stride).
    `depth` must be 16 (the builder fills it; the field exists so a depth meant for ResNet is refused).
    """
    depth: int = 16
    output_stride: int = 8
    base_width: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.depth != 16:
            raise ValueError(f"depth: backbone 'vgg16' has depth 16, got {self.depth!r}")
        if self.output_stride not in VGG_OUTPUT_STRIDES:
            raise ValueError(f"output_stride: got {self.output_stride!r}; valid values for vgg16 are "
                             f"{list(VGG_OUTPUT_STRIDES)}")
        x = pad_to_multiple(images.astype(self.dtype), self.output_stride)
        names = iter(vgg16_conv_names())
        widths = tuple(self.base_width * m for m in (1, 2, 4, 8, 8))
        pool_strides = (2, 2, 2, 2 if self.output_stride == 16 else 1, 1)
        features = {}
        for block, (num_convs, width, stride) in enumerate(zip(VGG16_BLOCKS, widths, pool_strides), start=1):
            dilation = 2 if block == 5 and self.output_stride == 8 else 1
            for _ in range(num_convs):
                x = nn.relu(conv(width, 3, dilation=dilation, use_bias=True, dtype=self.dtype, name=next(names))(x))
            if block == 3:
                features["low_level"] = x
            x = max_pool_3x3(x, stride)
        features["out"] = x
        return features
