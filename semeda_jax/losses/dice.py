"""Overlap losses on softmax probabilities: soft Dice (Milletari et al. 2016, as segmentation_models_pytorch's
DiceLoss), generalised Dice (Sudre et al. 2017) and Tversky (Salehi et al. 2017).

With p = softmax of the logits resized to the labels [B,H,W,C], g the one-hot labels and the sums over the
counted pixels (non-void, and in `pixel_mask`) of one image (`per_image=True`) or of the whole batch (default,
as smp), per class c:

    I_c = sum p_c g_c,  P_c = sum p_c  (sum p_c^2 with `squared`, V-Net's form),  G_c = sum g_c
    FP_c = sum p_c (1 - g_c) = P_c - I_c,   FN_c = sum (1 - p_c) g_c = G_c - I_c
    Dice_c    = 1 - (2 I_c + smooth) / max(P_c + G_c + smooth, eps)
    Tversky_c = 1 - (I_c + smooth) / max(I_c + alpha FP_c + beta FN_c + smooth, eps)
                (alpha = beta = 1/2 is Dice_c with 2 smooth in place of smooth)
    GDL       = 1 - (2 sum_c w_c I_c + smooth) / max(sum_c w_c (P_c + G_c) + smooth, eps),  w_c = 1 / G_c^2

Dice and Tversky average the per-class losses over the classes (weighted by `class_weights` w_c: sum w_c L_c /
sum w_c), then over the images with `per_image`. `absent` says what a class with no truth pixel (G_c = 0) in
the image (batch) does: "zero" (smp): its loss is 0 but it still counts in the mean (it gets no gradient, so
predicting it is never penalised); "exclude": it leaves the mean; "include": its loss is computed as for any
class, 1 - smooth / max(P_c + smooth, eps), which penalises predicting it when smooth > 0 (and is the constant
1 when smooth = 0). GDL is one ratio per image (batch), averaged over the images; an absent class gets the
largest w_c of the present classes (Sudre's NiftyNet code), and class weights multiply w_c. With `per_image`,
an image without counted pixels leaves the mean over images; no counted pixel at all gives 0, zero gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from semeda_jax.losses.common import (check_choice, check_class_weights, check_number, check_pixel_mask,
                                      class_weighted_mean, counted_pixels, one_hot_labels, probabilities_at_labels,
                                      void_out_of_range)
from semeda_jax.validation import check_logits_labels

ABSENT = ("zero", "exclude", "include")


def _check(logits, labels, class_weights, pixel_mask, smooth, eps, per_image, absent="zero", **numbers):
    num_classes = check_logits_labels(logits, labels)
    check_class_weights("class_weights", class_weights, num_classes)
    check_pixel_mask(pixel_mask, labels)
    check_number("smooth", smooth)
    check_number("eps", eps, strict=True)
    check_choice("per_image", per_image, (False, True))
    check_choice("absent", absent, ABSENT)
    for name, value in numbers.items():
        check_number(name, value)


def _overlaps(logits, labels, pixel_mask, per_image, squared=False):
    """(I, P, G) [K,C] and nonempty bool [K]; K = B with per_image, else 1."""
    num_classes = logits.shape[-1]
    labels = void_out_of_range(labels, num_classes)
    probs = probabilities_at_labels(logits, labels)
    counted = counted_pixels(labels, pixel_mask)[..., None].astype(probs.dtype)
    truth = one_hot_labels(labels, num_classes, probs.dtype) * counted
    axes = (1, 2) if per_image else (0, 1, 2)
    rows = lambda x: jnp.sum(x, axis=axes).reshape(-1, x.shape[-1])  # noqa: E731
    inter, pred, true = rows(probs * truth), rows((probs ** 2 if squared else probs) * counted), rows(truth)
    nonempty = rows(counted)[:, 0] > 0
    return inter, pred, true, nonempty


def _class_mean(losses, true, nonempty, absent, class_weights):
    present = true > 0
    if absent == "zero":
        losses, included = jnp.where(present, losses, 0.0), jnp.broadcast_to(nonempty[:, None], losses.shape)
    elif absent == "exclude":
        included = present
    else:
        included = jnp.broadcast_to(nonempty[:, None], losses.shape)
    return class_weighted_mean(losses, included, class_weights)


@functools.partial(jax.jit, static_argnames=("per_image", "absent", "squared"))
def _dice(logits, labels, class_weights, pixel_mask, smooth, eps, per_image, absent, squared):
    inter, pred, true, nonempty = _overlaps(logits, labels, pixel_mask, per_image, squared)
    losses = 1.0 - (2.0 * inter + smooth) / jnp.maximum(pred + true + smooth, eps)
    return _class_mean(losses, true, nonempty, absent, class_weights)


@functools.partial(jax.jit, static_argnames=("per_image", "absent"))
def _tversky(logits, labels, class_weights, pixel_mask, alpha, beta, smooth, eps, per_image, absent):
    inter, pred, true, nonempty = _overlaps(logits, labels, pixel_mask, per_image)
    denominator = inter + alpha * (pred - inter) + beta * (true - inter) + smooth
    losses = 1.0 - (inter + smooth) / jnp.maximum(denominator, eps)
    return _class_mean(losses, true, nonempty, absent, class_weights)


@functools.partial(jax.jit, static_argnames=("per_image",))
def _generalized_dice(logits, labels, class_weights, pixel_mask, smooth, eps, per_image):
    inter, pred, true, nonempty = _overlaps(logits, labels, pixel_mask, per_image)
    present = true > 0
    weights = jnp.where(present, 1.0 / jnp.where(present, true, 1.0) ** 2, 0.0)
    weights = jnp.where(present, weights, jnp.max(weights, axis=-1, keepdims=True))
    if class_weights is not None:
        weights = weights * jnp.asarray(class_weights, weights.dtype)
    numerator = 2.0 * jnp.sum(weights * inter, axis=-1) + smooth
    losses = 1.0 - numerator / jnp.maximum(jnp.sum(weights * (pred + true), axis=-1) + smooth, eps)
    return class_weighted_mean(losses[:, None], nonempty[:, None], None)


def dice_loss(logits: jax.Array, labels: jax.Array, *, smooth: float = 0.0, eps: float = 1e-7,
              per_image: bool = False, absent: str = "zero", squared: bool = False, class_weights=None,
              pixel_mask: jax.Array | None = None) -> jax.Array:
    """Soft Dice loss: logits [B,h,w,C] float, labels [B,H,W] int (void 255) -> scalar in [0, 1].

    mean over (image or batch, class) of 1 - (2 I_c + smooth) / max(P_c + G_c + smooth, eps) (module docstring;
    defaults = smp's DiceLoss(mode="multiclass", ignore_index=255)); `squared` uses sum p^2 in P_c (V-Net).
    `class_weights` [C] weights the class mean; `pixel_mask` [B,H,W] bool restricts the counted pixels.
    """
    _check(logits, labels, class_weights, pixel_mask, smooth, eps, per_image, absent)
    check_choice("squared", squared, (False, True))
    return _dice(logits, labels, class_weights, pixel_mask, float(smooth), float(eps), per_image, absent, squared)


def tversky_loss(logits: jax.Array, labels: jax.Array, *, alpha: float = 0.3, beta: float = 0.7,
                 smooth: float = 0.0, eps: float = 1e-7, per_image: bool = False, absent: str = "zero",
                 class_weights=None, pixel_mask: jax.Array | None = None) -> jax.Array:
    """Tversky loss: logits [B,h,w,C] float, labels [B,H,W] int (void 255) -> scalar in [0, 1].

    mean over (image or batch, class) of 1 - (I_c + smooth) / max(I_c + alpha FP_c + beta FN_c + smooth, eps);
    alpha weighs false positives, beta false negatives (defaults: Salehi et al.'s best, 0.3 / 0.7; 0.5 / 0.5 is
    Dice with the smoothing doubled). Class weights, absent classes and `pixel_mask` as in `dice_loss`.
    """
    _check(logits, labels, class_weights, pixel_mask, smooth, eps, per_image, absent, alpha=alpha, beta=beta)
    return _tversky(logits, labels, class_weights, pixel_mask, float(alpha), float(beta), float(smooth), float(eps),
                    per_image, absent)


def generalized_dice_loss(logits: jax.Array, labels: jax.Array, *, smooth: float = 0.0, eps: float = 1e-7,
                          per_image: bool = False, class_weights=None,
                          pixel_mask: jax.Array | None = None) -> jax.Array:
    """Generalised Dice loss (Sudre et al. Eq. 2): logits [B,h,w,C] float, labels [B,H,W] int -> scalar in [0, 1].

    1 - (2 sum_c w_c I_c + smooth) / max(sum_c w_c (P_c + G_c) + smooth, eps), w_c = class_weights[c] / G_c^2
    (an absent class takes the largest 1 / G^2 of the present ones), per batch or averaged over the images.
    """
    _check(logits, labels, class_weights, pixel_mask, smooth, eps, per_image)
    return _generalized_dice(logits, labels, class_weights, pixel_mask, float(smooth), float(eps), per_image)
