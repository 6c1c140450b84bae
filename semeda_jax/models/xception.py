"""Aligned (modified) Xception-71 of DeepLab v3+ (Chen et al. 2018), layer for layer timm's `xception71`.

Structure (channels at base_width 64; timm/models/xception_aligned.py, TF DeepLab's xception_71):
  stem     3x3/2 conv 32, 3x3 conv 64 (each + BN + ReLU)
  entry    5 blocks: 128/2, 256, 256/2, 728, 728/2
  middle   16 blocks of 728
  exit     block (728, 1024, 1024)/2, then block (1536, 1536, 2048) without skip
A block is three 3x3 separable convs (depthwise 3x3 + BN, pointwise 1x1 + BN); the stride sits on the third,
which replaces Xception's max-pooling. Residual blocks apply a ReLU BEFORE each separable conv and none inside
it, and add a 1x1-conv + BN projection of the input when the channels or the nominal stride change. The last
block has no skip and a ReLU after BOTH the depthwise and the pointwise BN (the paper's "BN + ReLU after each
depthwise conv" applies only there in TF DeepLab and timm, whose weights we load). BN epsilon is 1e-3, the value
the TF-trained weights use (timm: BatchNorm2d(eps=.001)); pass `bn_epsilon` to override it.
Widths scale with `base_width` (64 = the paper; 8 builds a CPU-sized model): channels c -> c * base_width // 64.
`depth` counts the layers (2 stem convs + 3 separable convs a block) and so sets the middle flow's length:
depth = 23 + 3 * middle blocks, 71 = the paper's 16; 26 (one middle block) is the CPU-sized model of tests and
`:smoke` configs. Block indices after the middle flow shift with it; pretrained weights exist for 71 only.

Output stride as timm/TF: a block whose stride would take the features past `output_stride` runs at stride 1
with the rate so far, and every later block's rate is multiplied by that stride (OS16: the exit flow at rate 2;
OS8: middle at 2, exit at 4). The projection shortcuts depend on the nominal (stride-32) layout only, so the
parameter tree is the same at every output stride (timm drops blocks.4.shortcut at OS8; TF keeps it).
`multi_grid` multiplies the rates of the last block's three separable convs (TF DeepLab's exit-flow unit rates).
`remat` (layers.REMAT_MODES): what the backward pass recomputes of each block (layers module docstring).

Parameter names mirror timm 1:1 (models/pretrained.py relies on this):
  timm xception71                              here
  stem.J.conv / stem.J.bn                      stemJ/conv, stemJ/bn               (J = 0, 1)
  blocks.i.stack.convK.conv_dw / bn_dw         blocki/convK/conv_dw, bn_dw         (K = 1, 2, 3)
  blocks.i.stack.convK.conv_pw / bn_pw         blocki/convK/conv_pw, bn_pw
  blocks.i.shortcut.conv / shortcut.bn         blocki/shortcut/conv, shortcut/bn
  head.fc                                      fc                                  (only with num_classes)
Depthwise kernels are [3,3,1,C] (flax feature_group_count=C; torch [C,1,3,3] transposed (2, 3, 1, 0), the
same transpose as every other conv).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.layers import BatchNormed, ConvBNReLU, DepthwiseConv, check_bn_mode, conv, remat_block

XCEPTION_BN_EPSILON = 1e-3
OUTPUT_STRIDES = (8, 16, 32)
STEM_WIDTHS = (32, 64)
XCEPTION_DEPTH = 71
# Blocks at base width 64: (widths of the three separable convs, nominal stride, residual).
ENTRY_BLOCKS = (
    ((128, 128, 128), 2, True),
    ((256, 256, 256), 1, True),
    ((256, 256, 256), 2, True),
    ((728, 728, 728), 1, True),
    ((728, 728, 728), 2, True),
)
MIDDLE_BLOCK = ((728, 728, 728), 1, True)
EXIT_BLOCKS = (
    ((728, 1024, 1024), 2, True),
    ((1536, 1536, 2048), 1, False),
)
FIXED_LAYERS = len(STEM_WIDTHS) + 3 * (len(ENTRY_BLOCKS) + len(EXIT_BLOCKS))  # 23: depth without the middle flow
# He-normal over the 9 inputs of a depthwise filter (fan-out would count all C output channels).
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def xception_blocks(depth: int) -> tuple:
    """The blocks of an aligned Xception of `depth` layers (ValueError unless depth = 23 + 3 * middle, middle >= 1)."""
    middle, remainder = divmod(depth - FIXED_LAYERS, 3)
    if middle < 1 or remainder:
        raise ValueError(f"depth: Xception depth {depth!r} is not {FIXED_LAYERS} + 3 * middle blocks (middle >= 1); "
                         f"{XCEPTION_DEPTH} is the paper's Xception-71, {FIXED_LAYERS + 3} the smallest")
    return (*ENTRY_BLOCKS, *(MIDDLE_BLOCK,) * middle, *EXIT_BLOCKS)


def check_xception_config(output_stride: int, bn_mode: str) -> None:
    """Raise ValueError naming the bad attribute and its valid values."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: got {output_stride!r}; valid values are {list(OUTPUT_STRIDES)}")
    check_bn_mode(bn_mode)


class SeparableConv(BatchNormed):
    """Depthwise 3x3 (stride, dilation) + BN [+ ReLU], pointwise 1x1 + BN [+ ReLU]; ReLUs only if `relu`.

    Submodules conv_dw (kernel [3,3,1,Cin]), bn_dw, conv_pw (kernel [1,1,Cin,features]), bn_pw.
    x [B,H,W,Cin] -> [B,ceil(H/strides),ceil(W/strides),features]. Padding: symmetric `dilation` (layers.conv).
    """
    features: int
    strides: int = 1
    dilation: int = 1
    relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = DepthwiseConv(3, self.strides, self.dilation, self.dtype, depthwise_init, name="conv_dw")(x)
        x = self.batch_norm(train, "bn_dw")(x)
        if self.relu:
            x = nn.relu(x)
        x = conv(self.features, 1, dtype=self.dtype, name="conv_pw")(x)
        x = self.batch_norm(train, "bn_pw")(x)
        return nn.relu(x) if self.relu else x


class XceptionBlock(BatchNormed):
    """Three separable convs (see the module docstring); residual: ReLU before each, plus the (projected) input.

    x [B,H,W,Cin] -> (out [B,ceil(H/strides),ceil(W/strides),features[2]],
                      the input of the third separable conv [B,H,W,features[1]], timm's `stack.act3`).
    `project` adds the 1x1-conv shortcut (decided by the nominal layout, not by `strides`).
    """
    features: Sequence[int]
    strides: int = 1
    rates: Sequence[int] = (1, 1, 1)
    residual: bool = True
    project: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        y = x
        for k, (features, rate) in enumerate(zip(self.features, self.rates)):
            if self.residual:
                y = nn.relu(y)
            if k == 2:
                inner = y
            y = SeparableConv(features, strides=self.strides if k == 2 else 1, dilation=rate,
                              relu=not self.residual, name=f"conv{k + 1}", **self.norm_kwargs())(y, train)
        if not self.residual:
            return y, inner
        shortcut = x
        if self.project:
            shortcut = ConvBNReLU(self.features[-1], 1, strides=self.strides, relu=False, name="shortcut",
                                  **self.norm_kwargs())(x, train)
        return y + shortcut, inner


class Xception(BatchNormed):
    """Aligned Xception-`depth` (71) feature extractor (see the module docstring).

    images [B,H,W,3] -> {"low_level": stride-4 features [B,ceil(H/4),ceil(W/4),C4] (block2's stack.act3),
                         "out": [B,ceil(H/output_stride),ceil(W/output_stride),C32]}
    plus "logits" [B,num_classes] float32 (global average pool + Dense "fc") when num_classes is set.
    C4 = 256 and C32 = 2048 at base_width 64 (scaled by base_width / 64).
    """
    output_stride: int = 32
    multi_grid: Sequence[int] | None = None
    base_width: int = 64
    depth: int = XCEPTION_DEPTH
    num_classes: int | None = None
    remat: str = "none"
    bn_epsilon: float = dataclasses.field(default=XCEPTION_BN_EPSILON, kw_only=True)

    def width(self, channels: int) -> int:
        """Channels at this base width (at least 1)."""
        return max(1, channels * self.base_width // 64)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_xception_config(self.output_stride, self.bn_mode)
        blocks = xception_blocks(self.depth)
        x = images.astype(self.dtype)
        for j, features in enumerate(STEM_WIDTHS):
            x = ConvBNReLU(self.width(features), 3, strides=2 if j == 0 else 1, name=f"stem{j}",
                           **self.norm_kwargs())(x, train)

        features = {}
        nominal_stride, current_stride, rate = 2, 2, 1
        in_features = self.width(STEM_WIDTHS[-1])
        block = remat_block(XceptionBlock, self.remat)
        for i, (widths, stride, residual) in enumerate(blocks):
            widths = tuple(self.width(c) for c in widths)
            rates = (rate,) * 3
            if i == len(blocks) - 1 and self.multi_grid:
                rates = tuple(rate * self.multi_grid[k % len(self.multi_grid)] for k in range(3))
            block_stride = stride
            if current_stride * stride > self.output_stride:
                block_stride, rate = 1, rate * stride
            current_stride *= block_stride
            project = residual and (stride > 1 or in_features != widths[-1])
            x, inner = block(widths, strides=block_stride, rates=rates, residual=residual, project=project,
                                     name=f"block{i}", **self.norm_kwargs())(x, train)
            if nominal_stride == 4 and stride == 2:
                features["low_level"] = inner
            nominal_stride *= stride
            in_features = widths[-1]
        features["out"] = x
        if self.num_classes is not None:
            pooled = jnp.mean(x, axis=(1, 2))
            logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(pooled)
            features["logits"] = logits.astype(jnp.float32)
        return features
