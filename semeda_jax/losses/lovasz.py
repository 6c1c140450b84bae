"""Lovasz-softmax loss (Berman, Rannen Triki, Blaschko 2018, Eq. 9 and Algorithm 1), as the paper's code.

For class c over a set of N counted pixels (one image with `per_image`, else the whole batch; counted =
non-void and in `pixel_mask`), with p the softmax of the logits resized to the labels and g = [y == c]:

    m_i = |g_i - p_{i,c}|                                   errors [N]
    Delta_J(M) = 1 - |G ∩ ~M| / |G ∪ M| = |M| / |G ∪ M|    Jaccard loss of the mispredicted set M, G = {g = 1}
    Lovasz(m) = sum_k m_{pi_k} (Delta_J({pi_1..pi_k}) - Delta_J({pi_1..pi_{k-1}})),  m_{pi_1} >= m_{pi_2} >= ...

i.e. the Lovasz extension of Delta_J (the gradient of Algorithm 1, from the errors sorted in decreasing order;
on 0/1 errors it equals Delta_J). The sort order carries no gradient; the errors do. `classes="present"` (the
paper's default) averages over the classes with a truth pixel among the counted pixels; `classes="all"`
averages over every class (an absent class then scores max_i p_{i,c}, its worst false positive). With
`class_weights` the class mean is sum w_c L_c / sum w_c. Per image: the mean over images with counted pixels
of the per-image class means; no counted pixel at all gives 0 with zero gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from semeda_jax.losses.common import (check_choice, check_class_weights, check_pixel_mask, class_weighted_mean,
                                      counted_pixels, one_hot_labels, probabilities_at_labels, void_out_of_range)
from semeda_jax.validation import check_logits_labels

CLASSES = ("present", "all")


def lovasz_extension(errors: jax.Array, truth: jax.Array) -> jax.Array:
    """The Lovasz extension of the Jaccard loss: errors [K,N] float >= 0, truth [K,N] {0,1} -> [K].

    sum_k m_(k) (Delta_J(first k) - Delta_J(first k-1)) over the errors sorted in decreasing order (module
    docstring). A pixel with error 0 and truth 0 changes nothing (how uncounted pixels are left out).
    """
    order = jnp.argsort(-lax.stop_gradient(errors), axis=-1)
    errors = jnp.take_along_axis(errors, order, axis=-1)
    truth = jnp.take_along_axis(truth, order, axis=-1)
    total = jnp.sum(truth, axis=-1, keepdims=True)
    jaccard = 1.0 - (total - jnp.cumsum(truth, axis=-1)) / (total + jnp.cumsum(1.0 - truth, axis=-1))
    steps = jnp.concatenate([jaccard[:, :1], jnp.diff(jaccard, axis=-1)], axis=-1)
    return jnp.sum(errors * steps, axis=-1)


@functools.partial(jax.jit, static_argnames=("per_image", "classes"))
def _lovasz_softmax(logits, labels, class_weights, pixel_mask, per_image, classes):
    num_classes = logits.shape[-1]
    labels = void_out_of_range(labels, num_classes)
    probs = probabilities_at_labels(logits, labels)
    counted = counted_pixels(labels, pixel_mask)[..., None]
    truth = one_hot_labels(labels, num_classes, probs.dtype) * counted
    errors = jnp.where(counted, jnp.abs(truth - probs), 0.0)
    rows = probs.shape[0] if per_image else 1

    def to_rows(x):  # [B,H,W,C] -> [rows * C, pixels of a row]
        return jnp.moveaxis(x.reshape(rows, -1, num_classes), -1, 1).reshape(rows * num_classes, -1)

    losses = lovasz_extension(to_rows(errors), to_rows(truth)).reshape(rows, num_classes)
    present = jnp.sum(truth.reshape(rows, -1, num_classes), axis=1) > 0
    nonempty = jnp.any(counted.reshape(rows, -1), axis=1)
    included = present if classes == "present" else jnp.broadcast_to(nonempty[:, None], present.shape)
    return class_weighted_mean(losses, included, class_weights)


def lovasz_softmax_loss(logits: jax.Array, labels: jax.Array, *, per_image: bool = False, classes: str = "present",
                        class_weights=None, pixel_mask: jax.Array | None = None) -> jax.Array:
    """Lovasz-softmax: logits [B,h,w,C] float, labels [B,H,W] int (void 255) -> scalar in [0, 1].

    The class mean of the Lovasz extension of the Jaccard loss of the errors |[y == c] - p_c| (module
    docstring), per batch (default, the paper's code) or per image; `classes` "present" or "all";
    `class_weights` [C]; `pixel_mask` [B,H,W] bool restricts the counted pixels. Sorting costs O(C N log N).
    """
    num_classes = check_logits_labels(logits, labels)
    check_choice("per_image", per_image, (False, True))
    check_choice("classes", classes, CLASSES)
    check_class_weights("class_weights", class_weights, num_classes)
    check_pixel_mask(pixel_mask, labels)
    return _lovasz_softmax(logits, labels, class_weights, pixel_mask, per_image, classes)
