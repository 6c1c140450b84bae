"""The classification branch of the guidance paper (Shen & Zeng §3.1, Fig. 2, Eq. 3; SPEC.md 4(a), 4(c)).

    s_g = classifier( fc7( fc6( adaptive_max_pool_7x7( features["out"] ) ) ) )      [B, C]   "class_logits"
    logits = s_l + s_g broadcast over (h, w), before upsampling                       [B,h,w,C] "logits"

fc6 and fc7 are dense layers of 4096 units with ReLU and dropout 0.5 (Fast R-CNN's fc6/fc7, which the paper
fine-tunes from; torchvision VGG-16's classifier.0/.3 have exactly these shapes for 512-channel features). The
paper says the branch outputs "512 channels", which contradicts its per-label phi_g (Eq. 7): we add a third dense
layer to the C classes (SPEC.md 4(a)). `class_reduce` optionally maps the features first by a 1x1 conv + ReLU
(ResNet-101's 2048 channels make fc6 7*7*2048*4096 = 411M weights; 512 gives VGG's shape); the paper says
nothing for ResNet, so the default is no projection. The model builder adds the branch with `class_branch=True`
(models/builder.py); its parameters sit at params["class_branch"]: {reduce,} fc6, fc7, classifier.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.layers import conv


def adaptive_bins(size: int, bins: int) -> list[tuple[int, int]]:
    """torch AdaptiveMaxPool2d's bins along one axis: bin i covers [floor(i*size/bins), ceil((i+1)*size/bins))."""
    return [(i * size // bins, -(-(i + 1) * size // bins)) for i in range(bins)]


def adaptive_max_pool(x: jax.Array, output_size: int) -> jax.Array:
    """x [B,H,W,C] -> [B,n,n,C], the max over each adaptive bin (bins overlap or repeat when H or W < n)."""
    rows = jnp.stack([x[:, a:b].max(axis=1) for a, b in adaptive_bins(x.shape[1], output_size)], axis=1)
    return jnp.stack([rows[:, :, a:b].max(axis=2) for a, b in adaptive_bins(x.shape[2], output_size)], axis=2)


class ClassificationBranch(nn.Module):
    """features {"out": [B,h,w,Cf], ...} -> class_logits [B,num_classes] float32 (see the module docstring).

    Widths: `class_width` (default 4096 * base_width / 64) for fc6 and fc7; dropout `class_dropout_rate`, active
    only when train=True. Parameters: fc6 kernel [n*n*Cf', W], fc7 [W, W], classifier [W, C], each with a bias
    (Cf' = class_reduce or Cf; the flattened input is the NHWC pool [n, n, Cf'] in row-major order).
    """
    num_classes: int
    base_width: int = 64
    class_width: int | None = None
    class_pool_size: int = 7
    class_reduce: int | None = None
    class_dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> jax.Array:
        width = self.class_width or 64 * self.base_width
        x = features["out"].astype(self.dtype)
        if self.class_reduce:
            x = nn.relu(conv(self.class_reduce, 1, use_bias=True, dtype=self.dtype, name="reduce")(x))
        x = adaptive_max_pool(x, self.class_pool_size).reshape(x.shape[0], -1)
        init = nn.initializers.normal(0.01)  # torchvision VGG's (and Fast R-CNN's) dense-layer initialisation
        for name in ("fc6", "fc7"):
            x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name=name)(x)
            x = nn.Dropout(self.class_dropout_rate, deterministic=not train)(nn.relu(x))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                          name="classifier")(x)
        return logits.astype(jnp.float32)
