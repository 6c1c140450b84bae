"""Focal loss (Lin et al. 2017, Eq. 5) in its multi-class softmax form, per pixel.

    p_t = softmax(logits resized to the labels)[y],   FL = -alpha_y (1 - p_t)^gamma log p_t
    loss = sum_i w[y_i] FL_i / sum_i w[y_i]   over counted pixels (non-void, in `pixel_mask`)

`alpha` (per-class factors, tuple of C or None = 1) scales each pixel's term and is NOT in the normaliser (the
paper's alpha-balanced form: the mean over the counted pixels); `class_weights` give the weighted mean of
cross_entropy (torch's CrossEntropyLoss(weight=...)), so with gamma = 0 and alpha = None this IS
cross_entropy(logits, labels, class_weights=..., pixel_mask=...), the same arithmetic. Lin et al. normalise by
the number of positive anchors; a dense segmentation map has no background anchors, so every counted pixel
counts. 1 - p_t is computed as -expm1(log p_t) (exact near p_t = 1); (1 - p_t)^gamma is 0 at p_t = 1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from semeda_jax.losses.common import (check_class_weights, check_number, check_pixel_mask, counted_pixels,
                                      pixel_cross_entropy, resize_to_labels, void_out_of_range, weighted_pixel_mean)
from semeda_jax.validation import check_logits_labels


@functools.partial(jax.jit, static_argnames=("gamma",))
def _focal(logits, labels, alpha, class_weights, pixel_mask, gamma):
    labels = void_out_of_range(labels, logits.shape[-1])
    ce = pixel_cross_entropy(resize_to_labels(logits, labels), labels)  # -log p_t, 0 at void
    counted = counted_pixels(labels, pixel_mask)
    if gamma != 0:
        miss = -jnp.expm1(-ce)  # 1 - p_t
        safe = jnp.where(miss > 0, miss, 1.0)
        ce = jnp.where(miss > 0, safe ** gamma, 0.0) * ce
    if alpha is not None:
        ce = jnp.asarray(alpha, ce.dtype)[jnp.where(counted, labels, 0)] * ce
    return weighted_pixel_mean(ce, labels, counted, class_weights)


def focal_loss(logits: jax.Array, labels: jax.Array, *, gamma: float = 2.0, alpha=None, class_weights=None,
               pixel_mask: jax.Array | None = None) -> jax.Array:
    """Focal loss: logits [B,h,w,C] float, labels [B,H,W] int (void 255) -> scalar.

    sum_i w[y_i] alpha_{y_i} (1 - p_t)^gamma (-log p_t) / sum_i w[y_i] over counted pixels (module docstring);
    `alpha` [C] or None, `class_weights` [C] or None, `pixel_mask` [B,H,W] bool or None. gamma is static (a new
    value recompiles); gamma = 0 with alpha = None equals cross_entropy exactly. 0 when no pixel counts.
    """
    num_classes = check_logits_labels(logits, labels)
    check_number("gamma", gamma)
    check_class_weights("alpha", alpha, num_classes)
    check_class_weights("class_weights", class_weights, num_classes)
    check_pixel_mask(pixel_mask, labels)
    return _focal(logits, labels, alpha, class_weights, pixel_mask, float(gamma))
