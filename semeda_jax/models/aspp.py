"""Atrous spatial pyramid pooling heads: ASPP (DeepLab v3, Chen et al. 2017) and ASPP-L (DeepLab v2, 2016).

Rates are given for a reference output stride and scaled to the backbone's: rate = base_rate * ref / output_stride
(ASPP: (6, 12, 18) at OS16 -> (12, 24, 36) at OS8; ASPP-L: (6, 12, 18, 24) at OS8 -> (3, 6, 9, 12) at OS16).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.layers import BatchNormed, ConvBNReLU, conv


def scaled_rates(base_rates: Sequence[int], reference_stride: int, output_stride: int) -> tuple[int, ...]:
    """Dilation rates for `output_stride`, given `base_rates` tuned for `reference_stride` (at least 1 each)."""
    return tuple(max(1, round(rate * reference_stride / output_stride)) for rate in base_rates)


class ASPP(BatchNormed):
    """DeepLab v3 ASPP: [1x1 conv, three dilated 3x3 convs, image pooling] -> concat -> 1x1 projection.

    Every conv is conv-BN-ReLU with `features` channels; the image-pooling branch is global mean -> 1x1 conv ->
    BN-ReLU -> broadcast back to h x w. After the projection comes dropout (`dropout_rate`, active only when
    `train=True`; then apply needs rngs={"dropout": key}).
    Submodules: conv1x1, atrous1..3, pool, project.
    x [B,h,w,Cin] -> [B,h,w,features].

    Note: in bn_mode "train" the pooling branch's BN normalises over the batch only (one value per image), so a
    batch of one gives that branch a constant output (as in torch, which refuses such a batch).
    """
    features: int = 256
    output_stride: int = 16
    base_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cbr = self.norm_kwargs()
        branches = [ConvBNReLU(self.features, 1, name="conv1x1", **cbr)(x, train)]
        for i, rate in enumerate(scaled_rates(self.base_rates, 16, self.output_stride), start=1):
            branches.append(ConvBNReLU(self.features, 3, dilation=rate, name=f"atrous{i}", **cbr)(x, train))
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        pooled = ConvBNReLU(self.features, 1, name="pool", **cbr)(pooled, train)
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
        y = ConvBNReLU(self.features, 1, name="project", **cbr)(jnp.concatenate(branches, axis=-1), train)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class ASPPL(nn.Module):
    """DeepLab v2 ASPP-L: sum of dilated 3x3 convs (with bias, no BN), each straight to `num_classes`.

    Submodules: branch0..3 (one per rate). x [B,h,w,Cin] -> logits [B,h,w,num_classes] in `dtype`.
    """
    num_classes: int
    output_stride: int = 8
    base_rates: Sequence[int] = (6, 12, 18, 24)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rates = scaled_rates(self.base_rates, 8, self.output_stride)
        # DeepLab v2 initialises its classifier convs with N(0, 0.01).
        init = nn.initializers.normal(0.01)
        return sum(conv(self.num_classes, 3, dilation=rate, use_bias=True, dtype=self.dtype, kernel_init=init,
                        name=f"branch{i}")(x) for i, rate in enumerate(rates))
