"""Per-pixel cross-entropy (PPCE, SEMEDA Eq. 2) with void ignore and optional class weights."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.losses.common import pixel_cross_entropy, resize_to_labels, valid_mask, void_out_of_range
from semeda_jax.validation import IGNORE_LABEL, InputError, check_logits_labels


def cross_entropy(logits: jax.Array, labels: jax.Array, *, class_weights: Sequence[float] | jax.Array | None = None,
                  ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """logits [B,h,w,C] float, labels [B,H,W] int -> scalar.

    Eq. 2 sums -log S_hat[label] over pixels; we take the mean over non-void pixels so the scale does not depend
    on the crop size. With `class_weights` [C] the mean is weighted, sum_i w[y_i] CE_i / sum_i w[y_i] (the
    torch/TF convention). A batch with no valid pixel (all void) gives 0.0 and a zero gradient.
    """
    num_classes = check_logits_labels(logits, labels, ignore_label)
    if class_weights is not None and np.shape(class_weights) != (num_classes,):
        raise InputError(f"class_weights: expected shape ({num_classes},), got {np.shape(class_weights)}")
    return _cross_entropy(logits, labels, class_weights, ignore_label=ignore_label)


@functools.partial(jax.jit, static_argnames=("ignore_label",))
def _cross_entropy(logits, labels, class_weights, *, ignore_label):
    labels = void_out_of_range(labels, logits.shape[-1], ignore_label)
    ce = pixel_cross_entropy(resize_to_labels(logits, labels), labels, ignore_label)
    valid = valid_mask(labels, ignore_label)
    if class_weights is None:
        weights = valid.astype(ce.dtype)
    else:
        class_weights = jnp.asarray(class_weights, ce.dtype)
        weights = jnp.where(valid, class_weights[jnp.where(valid, labels, 0)], 0.0)
    return jnp.sum(weights * ce) / jnp.where(jnp.sum(weights) > 0, jnp.sum(weights), 1.0)
