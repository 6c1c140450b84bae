"""ResNet-38 (Wu, Shen & van den Hengel, "Wider or Deeper", model A), RelationNet's backbone (§II-A-1,
SPEC.md 3(b)), in the output-stride-8 form of the released segmentation weights (`rna-a1`, the layout of the
PSA / SEAM repositories' `resnet38d.py`).

Pre-activation residual units (BN-ReLU before each conv; the projection shortcut reads the BN-ReLU of the
input). One 3x3 conv "conv1a" (no BN after it), then:

  block  units  unit (widths, base_width = 64)        first-unit stride   3x3 dilations (first unit; others)
  B2     3      3x3 128, 3x3 128                      2                   1, 1
  B3     3      3x3 256, 3x3 256                      2                   1, 1
  B4     6      3x3 512, 3x3 512                      2                   1, 1
  B5     3      3x3 512, 3x3 1024                     1                   (1, 2); (2, 2)
  B6     1      1x1 512, 3x3 1024, 1x1 2048           1                   4
  B7     1      1x1 1024, 3x3 2048, 1x1 4096          1                   4
  bn7 + ReLU -> features "out" [B,ceil(H/8),ceil(W/8),64 base_width]

The pooling of the ImageNet classifier before B2-B4 is the strided first conv of those blocks; B5-B7 keep
stride 1 and dilate instead (B5's second conv dilation 2, B6/B7's 3x3 dilation 4), so the output stride is 8.
`deformable=True` makes the 3x3 convs of B6 and B7 deformable (models/deformable.py, DCN v1; RelationNet's
"+DCN"): the same "kernel" at the same path plus zero-initialised "offset" convs, so the model starts as the
plain one. Released-weight details we do not copy: the Dropout2d (0.3 in B6, 0.5 in B7) of the PSA code.

Widths scale with `base_width` (64 = the paper; 4 gives a CPU-sized test model): conv1a base_width, then
base_width x (2, 4, 8, 8|16, 8|16|32, 16|32|64). Padding is symmetric d (k - 1) / 2 (models/layers.py), so any
input size H gives ceil(H / 2), ceil(H / 4), ceil(H / 8) after B2, B3, B4 (odd sizes included).

Parameter names mirror the torch layout of those repositories (`b4_3.conv_branch2a.weight` ->
`b4_3/conv_branch2a/kernel`, `bn7.running_mean` -> batch_stats `bn7/mean`; models/pretrained.py maps them):
  conv1a; b{S}[_{i}]/{bn_branch2a, conv_branch2a, bn_branch2b1, conv_branch2b1, conv_branch1}
  (+ bn_branch2b2, conv_branch2b2 in B6 and B7; unit 0 of a block has no "_0"); bn7; fc (num_classes only).
With num_classes set, "logits" [B,num_classes] (global average pool of "out" + Dense "fc") is the ImageNet
classifier: 109,167,912 parameters with 1000 classes (105,070,912 without), exactly the released definition's
(tests/test_resnet38.py); Wu et al.'s table prints 124M for model A, which that definition does not reach.
Weights: the PSA-converted ImageNet file loads through models/pretrained.py; without one the backbone is random
(the trainer warns).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.deformable import DeformableConv
from semeda_jax.models.layers import BatchNormed, check_bn_mode, conv

RESNET38_DEPTH = 38
# block -> (units, widths per unit as multiples of base_width, first-unit stride, 3x3 dilations of the first
# unit's convs, of the other units' convs); two widths = a basic unit (3x3, 3x3), three = a bottleneck one
RESNET38_BLOCKS = (
    ("b2", 3, (2, 2), 2, (1, 1), (1, 1)),
    ("b3", 3, (4, 4), 2, (1, 1), (1, 1)),
    ("b4", 6, (8, 8), 2, (1, 1), (1, 1)),
    ("b5", 3, (8, 16), 1, (1, 2), (2, 2)),
    ("b6", 1, (8, 16, 32), 1, (4,), (4,)),
    ("b7", 1, (16, 32, 64), 1, (4,), (4,)),
)
DEFORMABLE_BLOCKS = ("b6", "b7")  # RelationNet: the second convolutions of blocks 6 and 7


def check_resnet38_config(depth: int, output_stride: int, bn_mode: str) -> None:
    """Raise ValueError naming the bad attribute and its valid value."""
    if depth != RESNET38_DEPTH:
        raise ValueError(f"depth: ResNet-38 has depth 38 only (widths scale with base_width), got {depth!r}")
    if output_stride != 8:
        raise ValueError(f"output_stride: ResNet-38 (RelationNet's) has output stride 8 only, got {output_stride!r}")
    check_bn_mode(bn_mode)


class PreActUnit(BatchNormed):
    """One pre-activation residual unit of ResNet-38 (module docstring): basic (widths (m, o): 3x3 m, 3x3 o) or
    bottleneck (widths (m1, m2, o): 1x1 m1, 3x3 m2, 1x1 o); the stride sits on the first conv.

    x [B,H,W,Cin] -> [B,ceil(H/strides),ceil(W/strides),widths[-1]]. The shortcut is x itself when Cin equals the
    output width and the stride is 1, else a strided 1x1 conv of BN-ReLU(x) ("conv_branch1").
    """
    widths: tuple[int, ...]
    strides: int = 1
    dilations: tuple[int, ...] = (1, 1)
    deformable: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def bn_relu(y, name):
            return nn.relu(self.batch_norm(train, name)(y))

        out_features = self.widths[-1]
        activated = bn_relu(x, "bn_branch2a")
        if self.strides == 1 and x.shape[-1] == out_features:
            shortcut = x
        else:
            shortcut = conv(out_features, 1, strides=self.strides, dtype=self.dtype, name="conv_branch1")(activated)
        if len(self.widths) == 2:
            mid, _ = self.widths
            y = conv(mid, 3, strides=self.strides, dilation=self.dilations[0], dtype=self.dtype,
                     name="conv_branch2a")(activated)
            y = conv(out_features, 3, dilation=self.dilations[1], dtype=self.dtype,
                     name="conv_branch2b1")(bn_relu(y, "bn_branch2b1"))
        else:
            reduce, mid, _ = self.widths
            y = conv(reduce, 1, strides=self.strides, dtype=self.dtype, name="conv_branch2a")(activated)
            y = bn_relu(y, "bn_branch2b1")
            if self.deformable:
                y = DeformableConv(mid, 3, dilation=self.dilations[0], dtype=self.dtype, name="conv_branch2b1")(y)
            else:
                y = conv(mid, 3, dilation=self.dilations[0], dtype=self.dtype, name="conv_branch2b1")(y)
            y = conv(out_features, 1, dtype=self.dtype, name="conv_branch2b2")(bn_relu(y, "bn_branch2b2"))
        return shortcut + y


class ResNet38(BatchNormed):
    """ResNet-38 feature extractor (module docstring), output stride 8.

    images [B,H,W,3] -> {"low_level": B3's output [B,ceil(H/4),ceil(W/4),4 base_width],
                         "out": ReLU(bn7(B7)) [B,ceil(H/8),ceil(W/8),64 base_width]}
    plus "logits" [B,num_classes] float32 (global average pool + Dense "fc") when num_classes is set.
    """
    depth: int = RESNET38_DEPTH
    output_stride: int = 8
    base_width: int = 64
    deformable: bool = False
    num_classes: int | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_resnet38_config(self.depth, self.output_stride, self.bn_mode)
        x = conv(self.base_width, 3, dtype=self.dtype, name="conv1a")(images.astype(self.dtype))
        features = {}
        for block, units, widths, stride, first_dilations, dilations in RESNET38_BLOCKS:
            for i in range(units):
                x = PreActUnit(tuple(self.base_width * w for w in widths), strides=stride if i == 0 else 1,
                               dilations=first_dilations if i == 0 else dilations,
                               deformable=self.deformable and block in DEFORMABLE_BLOCKS,
                               name=block if i == 0 else f"{block}_{i}", **self.norm_kwargs())(x, train)
            if block == "b3":
                features["low_level"] = x
        x = nn.relu(self.batch_norm(train, "bn7")(x))
        features["out"] = x
        if self.num_classes is not None:
            logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                              name="fc")(jnp.mean(x, axis=(1, 2)))
            features["logits"] = logits.astype(jnp.float32)
        return features
