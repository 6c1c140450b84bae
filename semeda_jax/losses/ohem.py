"""Online hard example mining cross-entropy of RelationNet (Zhuang et al.), Eq. 3 and Sec. III-B.

    S      = { i valid : p_{i,y_i} < t },  t = 0.6
    L_ohem = -(1/|S|) sum_{i in S} log p_{i,y_i}        (Eq. 3 is printed without the minus sign)

The selection runs over the whole batch: every valid pixel of every image is a candidate, the mean is taken
over all kept pixels together (an image with more hard pixels weighs more), and `min_kept` counts over the
batch. `min_kept` is a guard from other OHEM implementations, NOT in the paper: the `min_kept` valid pixels
with the lowest true-class probability are kept as well (all valid pixels if there are fewer);
`min_kept = 0` reproduces the paper. The loss is 0 when nothing is kept. The selection carries no gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from semeda_jax.losses.common import (masked_mean, pixel_cross_entropy, resize_to_labels, true_class_probability,
                                      valid_mask, void_out_of_range)
from semeda_jax.validation import check_int, check_logits_labels


def _check_args(logits, labels, min_kept: int) -> None:
    check_logits_labels(logits, labels)
    check_int("min_kept", min_kept, minimum=0)


def _kept_mask(logits, labels, threshold, min_kept):
    valid = valid_mask(labels)
    prob = true_class_probability(logits, labels)
    _, hardest = lax.top_k(-jnp.where(valid, prob, jnp.inf).reshape(-1), min(min_kept, labels.size))
    forced = jnp.zeros(labels.size, bool).at[hardest].set(True).reshape(labels.shape)
    return valid & ((prob < threshold) | forced)  # bool: the selection carries no gradient


@functools.partial(jax.jit, static_argnames=("min_kept",))
def _ohem_kept_mask(logits, labels, threshold, min_kept):
    labels = void_out_of_range(labels, logits.shape[-1])
    return _kept_mask(resize_to_labels(logits, labels), labels, threshold, min_kept)


@functools.partial(jax.jit, static_argnames=("min_kept",))
def _ohem_cross_entropy(logits, labels, threshold, min_kept):
    labels = void_out_of_range(labels, logits.shape[-1])
    logits = resize_to_labels(logits, labels)
    return masked_mean(pixel_cross_entropy(logits, labels), _kept_mask(logits, labels, threshold, min_kept))


def ohem_kept_mask(logits: jax.Array, labels: jax.Array, *, threshold: float = 0.6,
                   min_kept: int = 0) -> jax.Array:
    """The pixels OHEM keeps: logits [B,h,w,C] float, labels [B,H,W] int -> bool [B,H,W], no gradient.

    True at valid pixels whose true-class probability (softmax of the logits resized to H x W) is below
    `threshold`, and at the `min_kept` valid pixels of the batch with the lowest true-class probability.
    This is OHEM as a pixel sampler (mmseg's OHEMPixelSampler design): pass it as `pixel_mask` to any loss that
    takes one (cross_entropy, the Dice family, focal, Lovasz, surface, BAL); `ohem_cross_entropy(...)` equals
    `cross_entropy(logits, labels, pixel_mask=ohem_kept_mask(logits, labels, ...))`.
    """
    _check_args(logits, labels, min_kept)
    return _ohem_kept_mask(logits, labels, threshold, int(min_kept))


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, *, threshold: float = 0.6,
                       min_kept: int = 0) -> jax.Array:
    """L_ohem (RelationNet Eq. 3): logits [B,h,w,C] float, labels [B,H,W] int -> scalar of the logits' dtype.

    Mean cross-entropy over the pixels of `ohem_kept_mask(logits, labels, threshold=..., min_kept=...)`, 0 when
    none is kept. `min_kept` is static (a new value recompiles); `threshold` may be a traced scalar.
    """
    _check_args(logits, labels, min_kept)
    return _ohem_cross_entropy(logits, labels, threshold, int(min_kept))
