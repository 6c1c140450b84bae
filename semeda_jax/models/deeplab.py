"""The DeepLab heads: ASPP-L (v2), LargeFOV (v1), ASPP + classifier (v3), ASPP + decoder + classifier (v3+).

A head maps the backbone's features {"out": [B,h,w,Cb] at the output stride, "low_level": [B,H/4,W/4,Cl]} to
logits [B,h',w',num_classes] float32 (h' = ceil(H / output_stride) for v2/v3, ceil(H / 4) for v3+). The model
builder (models/builder.py) composes a backbone, one head and optional auxiliary heads; heads sit in the model's
scope, so the parameter tree is {backbone, aspp, classifier, ...} (v2: backbone, aspp; LargeFOV: backbone, fc6,
fc7, classifier; v3+: backbone, aspp, decoder_low, decoder_conv1, decoder_conv2, classifier). Classifier 1x1
convs have a bias and N(0, 0.01) kernels. Head widths default to the papers' (ASPP/decoder 256, LargeFOV 1024,
low-level projection 48) scaled by
base_width / 64, so `base_width=8` builds a CPU-sized model; `head_width` / `low_level_width` override them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.aspp import ASPP, ASPPL, scaled_rates
from semeda_jax.models.layers import BatchNormed, ConvBNReLU, conv, resize_bilinear

classifier_init = nn.initializers.normal(0.01)


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
    """logits [B,h,w,C] -> [B,H,W,C] for size (H, W): bilinear, half-pixel centres (torch align_corners=False)."""
    return resize_bilinear(logits, size)


def classifier(num_classes: int, dtype: Any, x: jax.Array, name: str = "classifier") -> jax.Array:
    """1x1 conv with bias, N(0, 0.01) kernel -> float32 logits (call from a compact method)."""
    logits = conv(num_classes, 1, use_bias=True, dtype=dtype, kernel_init=classifier_init, name=name)(x)
    return logits.astype(jnp.float32)


class ASPPLHead(nn.Module):
    """DeepLab v2: ASPP-L on features["out"], rates (6, 12, 18, 24) at OS8, straight to the classes."""
    num_classes: int
    output_stride: int = 8
    aspp_rates: Sequence[int] = (6, 12, 18, 24)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> jax.Array:
        logits = ASPPL(self.num_classes, output_stride=self.output_stride, base_rates=self.aspp_rates,
                       dtype=self.dtype, name="aspp")(features["out"])
        return logits.astype(jnp.float32)


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV (the guidance paper's segmentation branch, "two Conv layers with 1024 filters").

    features["out"] [B,h,w,Cb] -> fc6 (3x3, dilation 12 at OS8, scaled like ASPP's rates: 6 at OS16) -> ReLU ->
    dropout -> fc7 (1x1) -> ReLU -> dropout -> 1x1 classifier -> logits [B,h,w,num_classes] float32. fc6/fc7 have
    biases and no BN (VGG's); width 1024 scaled by base_width / 64 (`head_width` overrides). Dropout 0.5
    (DeepLab's) is active only when train=True. Submodules: fc6, fc7, classifier.
    """
    num_classes: int
    output_stride: int = 8
    base_width: int = 64
    head_width: int | None = None
    largefov_rate: int = 12
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> jax.Array:
        width = self.head_width or 16 * self.base_width
        (rate,) = scaled_rates((self.largefov_rate,), 8, self.output_stride)
        x = conv(width, 3, dilation=rate, use_bias=True, dtype=self.dtype, name="fc6")(features["out"])
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        x = conv(width, 1, use_bias=True, dtype=self.dtype, name="fc7")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return classifier(self.num_classes, self.dtype, x)


class ASPPHead(BatchNormed):
    """DeepLab v3: ASPP (rates (6, 12, 18) at OS16, dropout after the projection) + 1x1 classifier."""
    num_classes: int
    output_stride: int = 16
    base_width: int = 64
    aspp_rates: Sequence[int] = (6, 12, 18)
    head_width: int | None = None
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> jax.Array:
        width = self.head_width or 4 * self.base_width
        x = ASPP(width, output_stride=self.output_stride, base_rates=self.aspp_rates,
                 dropout_rate=self.dropout_rate, name="aspp", **self.norm_kwargs())(features["out"], train)
        return classifier(self.num_classes, self.dtype, x)


class DecoderHead(BatchNormed):
    """DeepLab v3+: ASPP, then the decoder on the stride-4 "low_level" features.

    low_level -> 1x1 conv to low_level_width (48) + BN-ReLU; ASPP output bilinearly upsampled to that size;
    concat; two 3x3 conv-BN-ReLU of head_width (256); 1x1 classifier.
    """
    num_classes: int
    output_stride: int = 16
    base_width: int = 64
    aspp_rates: Sequence[int] = (6, 12, 18)
    head_width: int | None = None
    low_level_width: int | None = None
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> jax.Array:
        width = self.head_width or 4 * self.base_width
        low_width = self.low_level_width or max(1, 3 * self.base_width // 4)
        bn_kwargs = self.norm_kwargs()
        x = ASPP(width, output_stride=self.output_stride, base_rates=self.aspp_rates,
                 dropout_rate=self.dropout_rate, name="aspp", **bn_kwargs)(features["out"], train)
        low = ConvBNReLU(low_width, 1, name="decoder_low", **bn_kwargs)(features["low_level"], train)
        x = resize_bilinear(x, low.shape[1:3])
        x = jnp.concatenate([x, low], axis=-1)
        x = ConvBNReLU(width, 3, name="decoder_conv1", **bn_kwargs)(x, train)
        x = ConvBNReLU(width, 3, name="decoder_conv2", **bn_kwargs)(x, train)
        return classifier(self.num_classes, self.dtype, x)
