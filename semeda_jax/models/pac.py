"""Pyramid atrous convolution (PAC, Yu et al., PAC paper §3.3-3.4, SPEC.md 2(c)) and the DeepLab v3 head built on it.

PAC applies ONE 3x3 kernel W at several dilation rates and merges the responses:
    sum    (the paper's best, Table 2: +0.29)   y = sum_r conv_{3x3, dilation r}(x; W)
    concat (its ablation: +0.21)                y = conv_1x1(concat_r conv_{3x3, dilation r}(x; W))
then BN-ReLU (DeepLab v3's convention; the paper gives no normalisation). Rates (1, 3, 5, 7, 9) are for output
stride 16 and scale with it like ASPP's ((2, 6, 10, 14, 18) at OS8). The kernel size 3 is our reading (the
paper says "one filter").

The head replaces ASPP's atrous branches by PAC and maps straight to the classes (PAC paper Fig. 3):
    logits = conv_1x1 -> C( concat[ 1x1 conv-BN-ReLU(x), broadcast(1x1 conv-BN-ReLU(GAP(x))), PAC(x) ] )
with no 256-channel projection in between (unlike ASPP) and no dropout.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.aspp import scaled_rates
from semeda_jax.models.deeplab import classifier
from semeda_jax.models.layers import BatchNormed, ConvBNReLU, conv, conv_init

PAC_MERGES = ("sum", "concat")


def dilated_conv(x: jax.Array, kernel: jax.Array, rate: int) -> jax.Array:
    """x [B,H,W,Cin], kernel [3,3,Cin,F] -> [B,H,W,F]: 'same'-size 3x3 conv at dilation `rate` (zero padding)."""
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), window_strides=(1, 1),
                                        padding=((rate, rate), (rate, rate)), rhs_dilation=(rate, rate),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class PyramidAtrousConv(BatchNormed):
    """One shared 3x3 kernel ("kernel" [3,3,Cin,features]) at each of `rates`, merged by `merge`, then BN-ReLU.

    Params: kernel, (concat: merge/kernel [1,1,R*features,features]), bn. x [B,h,w,Cin] -> [B,h,w,features].
    """
    features: int
    rates: Sequence[int] = (1, 3, 5, 7, 9)
    merge: str = "sum"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.merge not in PAC_MERGES:
            raise ValueError(f"pac_merge: unknown {self.merge!r}; valid merges are {list(PAC_MERGES)}")
        kernel = self.param("kernel", conv_init, (3, 3, x.shape[-1], self.features), jnp.float32)
        x = x.astype(self.dtype)
        responses = [dilated_conv(x, kernel, rate) for rate in self.rates]
        if self.merge == "sum":
            y = sum(responses)
        else:
            y = conv(self.features, 1, dtype=self.dtype, name="merge")(jnp.concatenate(responses, axis=-1))
        return nn.relu(self.batch_norm(train, "bn")(y))


class PACHead(BatchNormed):
    """DeepLab v3 with PAC in place of ASPP (see the module docstring). Submodules: conv1x1, pool, pac,
    classifier. features["out"] [B,h,w,Cin] -> logits [B,h,w,num_classes] float32."""
    num_classes: int
    output_stride: int = 16
    base_width: int = 64
    pac_rates: Sequence[int] = (1, 3, 5, 7, 9)
    pac_merge: str = "sum"
    head_width: int | None = None

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> jax.Array:
        x = features["out"]
        width = self.head_width or 4 * self.base_width
        cbr = self.norm_kwargs()
        branches = [ConvBNReLU(width, 1, name="conv1x1", **cbr)(x, train)]
        pooled = ConvBNReLU(width, 1, name="pool", **cbr)(jnp.mean(x, axis=(1, 2), keepdims=True), train)
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (width,)))
        rates = scaled_rates(self.pac_rates, 16, self.output_stride)
        branches.append(PyramidAtrousConv(width, rates=rates, merge=self.pac_merge, name="pac", **cbr)(x, train))
        return classifier(self.num_classes, self.dtype, jnp.concatenate(branches, axis=-1))
