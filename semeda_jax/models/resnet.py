"""ResNet v1 backbones (He et al. 2016) with dilation for DeepLab: depths 18/34 (basic) and 50/101/152 (bottleneck).

Bottleneck blocks put the stride on the 3x3 conv (torchvision's "v1.5"). Stems:
  "standard"  7x7/2 conv 64 + BN + ReLU + 3x3/2 max-pool (torchvision).
  "deeplab"   3x3/2 conv 64, 3x3 conv 64, 3x3 conv 128 (each + BN + ReLU), then the max-pool (TF DeepLab's
              resnet_v1_beta; timm's deep stem "c"/"s" variants with stem_width 64).
Channel widths scale with `base_width` (64 = the paper; 8 gives CPU-sized test models): stage planes are
base_width * (1, 2, 4, 8), bottleneck outputs 4x that, the deeplab stem base_width * (1, 1, 2).

Output stride: 32 = the classifier; 16 replaces layer4's stride by dilation 2; 8 replaces layer3's by dilation 2
and layer4's by dilation 4. Every block of a dilated stage uses that stage's rate (TF DeepLab; torchvision
keeps the previous rate in the first block), and `multi_grid` (e.g. (1, 2, 4)) multiplies the rate of block i
of layer4 by multi_grid[i % len(multi_grid)]. The parameter tree does not depend on output stride or
multi-grid, so one checkpoint serves every setting.

`remat` (layers.REMAT_MODES): what the backward pass recomputes of each residual block (layers module docstring).

Parameter names mirror torchvision 1:1 (a later weight-mapping module relies on this):
  torchvision            here
  conv1 / bn1            stem_conv / stem_bn            (deeplab stem: stem_conv1..3 / stem_bn1..3)
  layerS.i.convK / bnK   layerS_blocki/convK, bnK       (K = 1, 2 [, 3 for bottleneck])
  layerS.i.downsample.0  layerS_blocki/downsample_conv
  layerS.i.downsample.1  layerS_blocki/downsample_bn
  fc                     fc                             (only with num_classes, for parameter-count checks)
Conv kernels are HWIO (torch OIHW transposed (2, 3, 1, 0)); BN 'scale'/'bias' = weight/bias, batch_stats
'mean'/'var' = running_mean/running_var.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.layers import BatchNormed, check_bn_mode, conv, max_pool_3x3_s2, remat_block

# depth -> (block kind, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("standard", "deeplab")
# output stride -> (strides, dilations) of layer1..layer4
OUTPUT_STRIDES = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


def check_resnet_config(depth: int, output_stride: int, stem: str, bn_mode: str) -> None:
    """Raise ValueError naming the bad attribute and its valid values."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"depth: unknown ResNet depth {depth!r}; valid depths are {sorted(RESNET_SPECS)}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: got {output_stride!r}; valid values are {sorted(OUTPUT_STRIDES)}")
    if stem not in STEMS:
        raise ValueError(f"stem: unknown {stem!r}; valid stems are {list(STEMS)}")
    check_bn_mode(bn_mode)


class ResidualBlock(BatchNormed):
    """One basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block; the stride sits on the first 3x3 conv.

    x [B,H,W,Cin] -> [B,ceil(H/strides),ceil(W/strides),planes * (1 basic | 4 bottleneck)].
    """
    kind: str
    planes: int
    strides: int = 1
    dilation: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def bn(name):
            return self.batch_norm(train, name)

        if self.kind == "basic":
            out_features = self.planes
            y = conv(self.planes, 3, strides=self.strides, dilation=self.dilation, dtype=self.dtype, name="conv1")(x)
            y = nn.relu(bn("bn1")(y))
            y = conv(self.planes, 3, dilation=self.dilation, dtype=self.dtype, name="conv2")(y)
            y = bn("bn2")(y)
        else:
            out_features = 4 * self.planes
            y = conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
            y = nn.relu(bn("bn1")(y))
            y = conv(self.planes, 3, strides=self.strides, dilation=self.dilation, dtype=self.dtype, name="conv2")(y)
            y = nn.relu(bn("bn2")(y))
            y = conv(out_features, 1, dtype=self.dtype, name="conv3")(y)
            y = bn("bn3")(y)
        shortcut = x
        if self.downsample:
            shortcut = conv(out_features, 1, strides=self.strides, dtype=self.dtype, name="downsample_conv")(x)
            shortcut = bn("downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(BatchNormed):
    """ResNet v1 feature extractor (see the module docstring).

    images [B,H,W,3] -> {"low_level": layer1 output [B,ceil(H/4),ceil(W/4),C1],
                         "out": layer4 output [B,ceil(H/output_stride),ceil(W/output_stride),C4]}
    plus "logits" [B,num_classes] float32 (global average pool + Dense "fc") when num_classes is set.
    C1 = base_width (basic) or 4 * base_width (bottleneck); C4 = 8x C1.
    """
    depth: int = 50
    output_stride: int = 32
    stem: str = "standard"
    multi_grid: Sequence[int] | None = None
    base_width: int = 64
    num_classes: int | None = None
    remat: str = "none"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_resnet_config(self.depth, self.output_stride, self.stem, self.bn_mode)
        kind, stage_blocks = RESNET_SPECS[self.depth]
        strides, dilations = OUTPUT_STRIDES[self.output_stride]
        def bn(name):
            return self.batch_norm(train, name)

        x = images.astype(self.dtype)
        if self.stem == "standard":
            x = conv(self.base_width, 7, strides=2, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(bn("stem_bn")(x))
        else:
            widths = (self.base_width, self.base_width, 2 * self.base_width)
            for i, width in enumerate(widths, start=1):
                x = conv(width, 3, strides=2 if i == 1 else 1, dtype=self.dtype, name=f"stem_conv{i}")(x)
                x = nn.relu(bn(f"stem_bn{i}")(x))
        x = max_pool_3x3_s2(x)

        features = {}
        in_features = x.shape[-1]
        expansion = 1 if kind == "basic" else 4
        block = remat_block(ResidualBlock, self.remat)
        for stage, (num_blocks, stride, rate) in enumerate(zip(stage_blocks, strides, dilations), start=1):
            planes = self.base_width * 2 ** (stage - 1)
            for i in range(num_blocks):
                block_rate = rate
                if stage == 4 and self.multi_grid:
                    block_rate = rate * self.multi_grid[i % len(self.multi_grid)]
                # Presence of the projection depends on the nominal (stride-32) layout only, so the parameter
                # tree is the same at every output stride.
                downsample = i == 0 and (stage > 1 or in_features != planes * expansion)
                x = block(kind, planes, strides=stride if i == 0 else 1, dilation=block_rate,
                                  downsample=downsample, name=f"layer{stage}_block{i}", **self.norm_kwargs())(x, train)
                in_features = planes * expansion
            if stage == 1:
                features["low_level"] = x
        features["out"] = x
        if self.num_classes is not None:
            pooled = jnp.mean(x, axis=(1, 2))
            logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(pooled)
            features["logits"] = logits.astype(jnp.float32)
        return features
