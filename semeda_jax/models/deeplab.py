"""DeepLab v2 / v3 / v3+ on a dilated ResNet (models/resnet.py) or aligned Xception-71 (models/xception.py)
with the ASPP heads of models/aspp.py.

Use: variables = model.init(key, images, train=False)
     logits = model.apply(variables, images, train=False)                       # eval
     logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": key})                        # train (v3/v3+ dropout)
images [B,H,W,3] float (normalised by the data pipeline) -> logits [B,h,w,num_classes] float32 at the head's
resolution: h = ceil(H / output_stride) for v2/v3, ceil(H / 4) for v3+. The losses resize logits to the labels;
`upsample_logits` gives full-resolution logits for eval/predict.

Backbone: `backbone="resnet"` (ResNet-`depth` with `stem`) or "xception" (Xception-`depth`, see
models/xception.py; `stem` must stay "standard"); `depth` None is the paper's: ResNet-101, Xception-71. Both
return stride-4 "low_level" features for the v3+ decoder. The Xception backbone keeps its own BN epsilon 1e-3
(that of its TF-trained weights); `bn_epsilon` applies to the heads and to the ResNet backbone.

Submodules: backbone (ResNet or Xception), then v2: aspp (ASPPL); v3: aspp, classifier; v3+: aspp, decoder_low,
decoder_conv1, decoder_conv2, classifier. Classifier 1x1 convs have a bias and N(0, 0.01) kernels.
Head widths default to the papers' (ASPP/decoder 256, low-level projection 48) scaled by base_width / 64, so
`base_width=8` builds a CPU-sized model; `head_width` / `low_level_width` override them.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.aspp import ASPP, ASPPL
from semeda_jax.models.layers import BatchNormed, ConvBNReLU, conv, resize_bilinear
from semeda_jax.models.resnet import ResNet
from semeda_jax.models.xception import Xception

BACKBONES = ("resnet", "xception")
DEFAULT_DEPTHS = {"resnet": 101, "xception": 71}

classifier_init = nn.initializers.normal(0.01)


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
    """logits [B,h,w,C] -> [B,H,W,C] for size (H, W): bilinear, half-pixel centres (torch align_corners=False)."""
    return resize_bilinear(logits, size)


class _DeepLab(BatchNormed):
    """Attributes shared by the DeepLab variants (see the module docstring)."""
    num_classes: int
    depth: int | None = None
    output_stride: int = 16
    stem: str = "standard"
    multi_grid: Sequence[int] | None = None
    base_width: int = 64
    backbone: str = "resnet"

    def _features(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: unknown {self.backbone!r}; valid backbones are {list(BACKBONES)}")
        depth = self.depth or DEFAULT_DEPTHS[self.backbone]
        if self.backbone == "resnet":
            backbone = ResNet(depth=depth, output_stride=self.output_stride, stem=self.stem,
                              multi_grid=self.multi_grid, base_width=self.base_width, name="backbone",
                              **self.norm_kwargs())
        else:
            if self.stem != "standard":
                raise ValueError(f"stem: {self.stem!r} is a ResNet stem; backbone='xception' has its own stem, "
                                 "leave stem at 'standard'")
            norm_kwargs = {k: v for k, v in self.norm_kwargs().items() if k != "bn_epsilon"}
            backbone = Xception(depth=depth, output_stride=self.output_stride, multi_grid=self.multi_grid,
                                base_width=self.base_width, name="backbone", **norm_kwargs)
        return backbone(images, train)

    def _classifier(self, x: jax.Array) -> jax.Array:
        logits = conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, kernel_init=classifier_init,
                      name="classifier")(x)
        return logits.astype(jnp.float32)


class DeepLabV2(_DeepLab):
    """DeepLab v2: backbone at output stride 8 (default) + ASPP-L, rates (6, 12, 18, 24) at OS8.

    images [B,H,W,3] -> logits [B,ceil(H/os),ceil(W/os),num_classes] float32.
    """
    output_stride: int = 8
    aspp_rates: Sequence[int] = (6, 12, 18, 24)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = self._features(images, train)["out"]
        logits = ASPPL(self.num_classes, output_stride=self.output_stride, base_rates=self.aspp_rates,
                       dtype=self.dtype, name="aspp")(x)
        return logits.astype(jnp.float32)


class DeepLabV3(_DeepLab):
    """DeepLab v3: backbone + ASPP (rates (6, 12, 18) at OS16) + 1x1 classifier.

    images [B,H,W,3] -> logits [B,ceil(H/os),ceil(W/os),num_classes] float32.
    """
    aspp_rates: Sequence[int] = (6, 12, 18)
    head_width: int | None = None
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = self._features(images, train)["out"]
        width = self.head_width or 4 * self.base_width
        x = ASPP(width, output_stride=self.output_stride, base_rates=self.aspp_rates,
                 dropout_rate=self.dropout_rate, name="aspp", **self.norm_kwargs())(x, train)
        return self._classifier(x)


class DeepLabV3Plus(_DeepLab):
    """DeepLab v3+: backbone + ASPP + decoder on the backbone's stride-4 "low_level" features.

    Decoder: low_level -> 1x1 conv to low_level_width (48) + BN-ReLU; ASPP output bilinearly upsampled to that size;
    concat; two 3x3 conv-BN-ReLU of head_width (256); 1x1 classifier.
    images [B,H,W,3] -> logits [B,ceil(H/4),ceil(W/4),num_classes] float32.
    """
    aspp_rates: Sequence[int] = (6, 12, 18)
    head_width: int | None = None
    low_level_width: int | None = None
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        features = self._features(images, train)
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
        return self._classifier(x)
