"""Per-pixel cross-entropy (PPCE, SEMEDA Eq. 2) with void ignore, optional class weights and pixel mask."""
from __future__ import annotations

import functools
from typing import Sequence

import jax

from semeda_jax.losses.common import (check_class_weights, check_pixel_mask, counted_pixels, pixel_cross_entropy,
                                      resize_to_labels, void_out_of_range, weighted_pixel_mean)
from semeda_jax.validation import IGNORE_LABEL, check_logits_labels


def cross_entropy(logits: jax.Array, labels: jax.Array, *, class_weights: Sequence[float] | jax.Array | None = None,
                  pixel_mask: jax.Array | None = None, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """logits [B,h,w,C] float, labels [B,H,W] int -> scalar.

    Eq. 2 sums -log S_hat[label] over pixels; we take the mean over non-void pixels so the scale does not depend
    on the crop size. With `class_weights` [C] the mean is weighted, sum_i w[y_i] CE_i / sum_i w[y_i] (the
    torch/TF convention). `pixel_mask` [B,H,W] bool (e.g. `ohem_kept_mask`, a pixel sampler) restricts the
    pixels that count, ANDed with the non-void mask. No counted pixel (all void) gives 0.0 and a zero gradient.
    """
    num_classes = check_logits_labels(logits, labels, ignore_label)
    check_class_weights("class_weights", class_weights, num_classes)
    check_pixel_mask(pixel_mask, labels)
    return _cross_entropy(logits, labels, class_weights, pixel_mask, ignore_label=ignore_label)


@functools.partial(jax.jit, static_argnames=("ignore_label",))
def _cross_entropy(logits, labels, class_weights, pixel_mask, *, ignore_label):
    labels = void_out_of_range(labels, logits.shape[-1], ignore_label)
    ce = pixel_cross_entropy(resize_to_labels(logits, labels), labels, ignore_label)
    return weighted_pixel_mean(ce, labels, counted_pixels(labels, pixel_mask, ignore_label), class_weights)
