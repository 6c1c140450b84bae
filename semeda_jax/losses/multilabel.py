"""Multi-label classification loss of the guidance paper's classification branch (an optional extra term).

The paper trains the branch only through the segmentation loss (its Eq. 3 adds s_g to the unary) and names no
classification loss (SPEC.md 4(a)); this term supervises s_g directly with the image-level labels every
segmentation label map implies: class c is present in image b when some non-void pixel of labels[b] is c.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from semeda_jax.losses.common import void_out_of_range
from semeda_jax.validation import IGNORE_LABEL, InputError, check_labels, check_rank


def present_classes(labels: jax.Array, num_classes: int, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """labels [B,H,W] int -> float32 [B,C]: 1 where the class occurs at some pixel of the image, else 0.

    Void (`ignore_label`) and any value outside [0, C) count as no class.
    """
    labels = void_out_of_range(labels, num_classes, ignore_label)
    hits = labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)
    return jnp.any(hits, axis=(1, 2)).astype(jnp.float32)


def multilabel_loss(class_logits: jax.Array, labels: jax.Array, *, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """class_logits [B,C] float, labels [B,H,W] int -> scalar: the sigmoid binary cross-entropy of every
    (image, class) against present_classes(labels), averaged over the B*C pairs.

    BCE(z, t) = -t log sigmoid(z) - (1 - t) log sigmoid(-z), by jax.nn.log_sigmoid: exact at any z, and its
    gradient is sigmoid(z) - t everywhere (z = 0 included).
    """
    check_rank("class_logits", class_logits, 2, "[B,C]")
    check_rank("labels", labels, 3, "[B,H,W]")
    if class_logits.shape[0] != labels.shape[0]:
        raise InputError(f"class_logits and labels: batch sizes differ ({class_logits.shape[0]} vs "
                         f"{labels.shape[0]})")
    check_labels("labels", labels, int(class_logits.shape[-1]), ignore_label)
    return _multilabel_loss(class_logits, labels, ignore_label=ignore_label)


@functools.partial(jax.jit, static_argnames=("ignore_label",))
def _multilabel_loss(class_logits, labels, *, ignore_label):
    targets = present_classes(labels, class_logits.shape[-1], ignore_label).astype(class_logits.dtype)
    z = class_logits
    return -jnp.mean(targets * jax.nn.log_sigmoid(z) + (1 - targets) * jax.nn.log_sigmoid(-z))
