"""RelationNet's similarity estimation subnet (§II-A-3, Fig. 3, SPEC.md 3(c)): for every pixel m and each of the 9
offsets (dy, dx) of the 3x3 neighbourhood (NEIGHBOUR_OFFSETS, (0, 0) included), a binary classifier of the (anchor,
shifted) feature pair says whether m and m + (dy, dx) carry the same label; the spatial correlation loss
(losses/scl.py, term "scl") trains it. Training only: inference reads "logits" alone, and under jit XLA removes the
subnet from the compiled prediction (tests/test_similarity.py checks the FLOPs).

Pair combination (the paper: zero-pad, shift, crop and concatenate the anchor and shifted features; the
subnet's layers are not given). Ours, per pair:
    z(m, k) = w2 . ReLU(W1 [f(m); f~(m + o_k)] + b1) + b2
f~ is f zero-padded outside the image (the paper's padding), W1 a 1x1 conv of the 2D-channel concatenation to
`width` channels, w2 a 1x1 conv to one logit. Since W1 is linear, W1 [a; s] = W_a a + W_s s: the subnet
projects the features once by W_a (with b1) and once by W_s (no bias, so the zero padding projects to zero),
then shifts the W_s projection; that is exactly the concatenation's first layer at 2 matmuls instead of 9
(the NumPy reference in the tests does the literal concatenation). `width` = similarity_width, or
4 * base_width (256 at the paper's width) when None. The input is the features the head's classifier reads
("classifier_input": the relation module's output in RelationNet, as in the paper), or the backbone's "out"
for a head that shares none.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.deeplab import classifier_init
from semeda_jax.models.layers import conv

# The 9 (dy, dx) of the 3x3 neighbourhood, row-major, (0, 0) at index 4: the order of losses.scl's pair targets
# (models/ does not import losses/; tests/test_similarity.py checks the two agree).
NEIGHBOUR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def shift_neighbours(x: jax.Array) -> jax.Array:
    """x [B,h,w,C] -> [B,h,w,9,C]: entry k at (i, j) is x[i + dy_k, j + dx_k] (NEIGHBOUR_OFFSETS order), zero
    where that lies outside the image."""
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.stack([padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in NEIGHBOUR_OFFSETS],
                     axis=3)


class SimilarityHead(nn.Module):
    """The similarity subnet as an auxiliary head (module docstring for the layers).

    features {"classifier_input" or "out": [B,h,w,D], ...} -> {"pair_logits": [B,h,w,9]}, logits before the
    sigmoid, float32 (bfloat16 compute is cast up; float64 stays float64). Params {"anchor": {"kernel"
    [1,1,D,width], "bias"}, "neighbour": {"kernel" [1,1,D,width]}, "pair_classifier": {"kernel" [1,1,width,1],
    "bias"}}; the last kernel N(0, 0.01), so training starts near P = 1/2 for every pair. Memory: the hidden
    pairs [B,h,w,9,width] (8 x 64 x 65 x 9 x 256 float32 = 0.3 GiB for the paper's batch and crop).
    """
    base_width: int = 64
    similarity_width: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> dict[str, jax.Array]:
        x = features.get("classifier_input", features["out"])
        width = self.similarity_width or 4 * self.base_width
        anchor = conv(width, 1, use_bias=True, dtype=self.dtype, name="anchor")(x)  # W_a f(m) + b1
        neighbour = conv(width, 1, dtype=self.dtype, name="neighbour")(x)  # W_s f(m'), zero outside
        hidden = nn.relu(anchor[:, :, :, None, :] + shift_neighbours(neighbour))  # [B,h,w,9,width]
        batch, height, cols = hidden.shape[:3]
        logits = conv(1, 1, use_bias=True, dtype=self.dtype, kernel_init=classifier_init,
                      name="pair_classifier")(hidden.reshape(batch, height, cols * 9, width))  # pairs as pixels
        logits = logits.reshape(batch, height, cols, 9)
        return {"pair_logits": logits.astype(jnp.promote_types(logits.dtype, jnp.float32))}
