"""Pieces every loss shares: void masks, one-hot targets, resizing logits to labels, masked means.

Conventions for the whole `losses` package: batch-first NHWC, logits [B,h,w,C] float, labels [B,H,W] int
with void = 255. Logits at a lower resolution than the labels (output stride 4/8/16) are resized bilinearly
(half-pixel centres) to the label resolution before any loss is taken, as SEMEDA Eq. 1 defines S_hat at image
resolution. The resize is point-sampled bilinear in both directions (no antialiasing when the logits are
larger than the labels, unlike jax.image.resize's default): every loss scores the logits interpolated at each
label pixel's centre, the map evaluation and prediction argmax (models.upsample_logits), as torch's and TF's
default resize do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.validation import IGNORE_LABEL, InputError


def valid_mask(labels: jax.Array, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """labels [...] int -> bool [...], True where the pixel carries a class (not void)."""
    return labels != ignore_label


def void_out_of_range(labels: jax.Array, num_classes: int, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """labels [...] int -> the same with every value outside [0, C) set to `ignore_label`.

    Every loss core calls this first, so a label the eager checks would reject (skipped under jit) counts as
    void in every loss alike, instead of wrapping round (-1 read as class C-1) or reading past the classes (NaN).
    """
    return jnp.where((labels >= 0) & (labels < num_classes), labels, ignore_label)


def one_hot_labels(labels: jax.Array, num_classes: int, dtype=jnp.float32) -> jax.Array:
    """labels [...] int -> one-hot [..., C]; any value outside [0, C) (void 255) gets the all-zero vector."""
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def resize_to_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits [B,h,w,C] -> [B,H,W,C] at the label resolution (bilinear, half-pixel centres, no antialiasing
    when shrinking: torch's F.interpolate(align_corners=False)); no-op if equal."""
    batch, height, width = labels.shape
    if logits.shape[1:3] == (height, width):
        return logits
    return jax.image.resize(logits, (batch, height, width, logits.shape[-1]), method="bilinear", antialias=False)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over pixels where `mask` holds; 0.0 (with zero gradient) when the mask is empty."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """Per-pixel CE -log softmax(logits)[label]: logits [B,H,W,C], labels [B,H,W] -> [B,H,W], 0 at void."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    safe_labels = jnp.where(valid_mask(labels, ignore_label), labels, 0)
    picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    return jnp.where(valid_mask(labels, ignore_label), -picked, 0.0)


def true_class_probability(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """softmax(logits)[label]: logits [B,H,W,C], labels [B,H,W] -> [B,H,W] in [0,1], 1.0 at void."""
    return jnp.exp(-pixel_cross_entropy(logits, labels, ignore_label))


def void_neutral_masks(logits: jax.Array, labels: jax.Array, num_classes: int, ignore_label: int = IGNORE_LABEL,
                       dtype=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The pair (S_hat, S*) that mask-matching losses (SEMEDA, Sobel) compare, plus the valid mask.

    logits [B,h,w,C], labels [B,H,W] -> (prediction [B,H,W,C] softmax at label resolution, truth [B,H,W,C]
    one-hot, valid bool [B,H,W]; labels outside [0, C) count as void). At void pixels both masks hold
    stop_gradient(S_hat): a filter that straddles void sees the same values in both branches, and no gradient
    reaches a void pixel's logits. The softmax is computed in float32 (or wider); `dtype` (default: that) is the
    dtype of the two maps it returns, e.g. bfloat16 to halve the bytes of the full-resolution passes after it.
    """
    compute_dtype = jnp.promote_types(logits.dtype, jnp.float32)
    dtype = compute_dtype if dtype is None else dtype
    labels = void_out_of_range(labels, num_classes, ignore_label)
    probs = jax.nn.softmax(resize_to_labels(logits, labels).astype(compute_dtype), axis=-1).astype(dtype)
    valid = valid_mask(labels, ignore_label)
    frozen = jax.lax.stop_gradient(probs)
    prediction = jnp.where(valid[..., None], probs, frozen)
    truth = jnp.where(valid[..., None], one_hot_labels(labels, num_classes, dtype), frozen)
    return prediction, truth, valid


# How an L1 distance between two maps [B,H,W,K] is reduced to a scalar. Eq. 5 of SEMEDA is a literal sum;
# per-pixel means keep the loss independent of the crop size. "mean_pixels_sum_channels" keeps the paper's
# CE:SEMEDA ratio when CE is a per-pixel mean (CE is a sum over classes too); "mean" also divides by K
# (shrinking SEMEDA's lambda_1 by 16 and lambda_2 by 32); "sum" is the literal norm per image, averaged over
# the batch (Algorithm 1's 1/K).
L1_REDUCTIONS = ("mean_pixels_sum_channels", "mean", "sum")


def check_l1_reduction(reduction: str) -> None:
    if reduction not in L1_REDUCTIONS:
        raise InputError(f"reduction: expected one of {L1_REDUCTIONS}, got {reduction!r}")


def masked_l1(a: jax.Array, b: jax.Array, valid: jax.Array, reduction: str) -> jax.Array:
    """a [B,H,W,K], b broadcastable to a, valid bool [B,H,W] -> scalar L1 distance over valid pixels, computed
    and summed in float32 (or wider) whatever the maps' dtype."""
    dtype = jnp.promote_types(a.dtype, jnp.float32)
    weights = valid.astype(dtype)
    total = jnp.sum(jnp.sum(jnp.abs(a.astype(dtype) - jnp.asarray(b).astype(dtype)), axis=-1) * weights)
    num_valid = jnp.maximum(jnp.sum(weights), 1.0)
    if reduction == "mean_pixels_sum_channels":
        return total / num_valid
    if reduction == "mean":
        return total / (num_valid * a.shape[-1])
    return total / a.shape[0]


# ---- Shared by the loss zoo (dice.py, focal.py, lovasz.py, surface.py) and cross_entropy: which pixels count
# (`pixel_mask`, e.g. an OHEM sampler's hard pixels), per-class weights, and the eager hyperparameter checks.

def check_class_weights(name: str, class_weights, num_classes: int) -> None:
    """Raise InputError unless `class_weights` is None or C finite numbers >= 0 (checked when concrete)."""
    if class_weights is None:
        return
    if np.shape(class_weights) != (num_classes,):
        raise InputError(f"{name}: expected shape ({num_classes},), got {np.shape(class_weights)}")
    if not isinstance(class_weights, jax.core.Tracer):
        values = np.asarray(class_weights, np.float64)
        if not (np.all(np.isfinite(values)) and np.all(values >= 0)):
            raise InputError(f"{name}: expected finite weights >= 0, got {values.tolist()}")


def check_pixel_mask(pixel_mask, labels) -> None:
    """Raise InputError unless `pixel_mask` is None or a bool array shaped like the labels [B,H,W]."""
    if pixel_mask is None:
        return
    dtype = pixel_mask.dtype if hasattr(pixel_mask, "dtype") else np.asarray(pixel_mask).dtype
    if np.shape(pixel_mask) != np.shape(labels) or dtype != np.bool_:
        raise InputError(f"pixel_mask: expected a bool array of the labels' shape {tuple(np.shape(labels))}, got "
                         f"{dtype} {tuple(np.shape(pixel_mask))}")


def check_number(name: str, value, *, minimum: float = 0.0, strict: bool = False) -> None:
    """Raise InputError unless `value` is a real number >= `minimum` (> if `strict`)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < minimum or (strict and value == minimum):
        raise InputError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value!r}")


def check_choice(name: str, value, choices: tuple) -> None:
    """Raise InputError unless `value` is one of `choices` (bools must be real bools)."""
    if not any(value is c if isinstance(c, bool) else (type(value) is type(c) and value == c) for c in choices):
        raise InputError(f"{name}: expected one of {choices}, got {value!r}")


def counted_pixels(labels: jax.Array, pixel_mask: jax.Array | None,
                   ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """bool [B,H,W]: non-void pixels, ANDed with `pixel_mask` (None: all of them)."""
    valid = valid_mask(labels, ignore_label)
    return valid if pixel_mask is None else valid & pixel_mask


def weighted_pixel_mean(values: jax.Array, labels: jax.Array, counted: jax.Array, class_weights) -> jax.Array:
    """sum_i w[y_i] v_i / sum_i w[y_i] over counted pixels i (w = 1 without class weights: a plain masked mean);
    values [B,H,W] float, labels [B,H,W] int, counted bool [B,H,W] -> scalar, 0 with zero gradient when no
    counted pixel (or all their weights are 0). The convention of torch's CrossEntropyLoss(weight=w)."""
    if class_weights is None:
        weights = counted.astype(values.dtype)
    else:
        class_weights = jnp.asarray(class_weights, values.dtype)
        weights = jnp.where(counted, class_weights[jnp.where(counted, labels, 0)], 0.0)
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0)


def class_weighted_mean(losses: jax.Array, included: jax.Array, class_weights) -> jax.Array:
    """losses, included [K,C] -> scalar: the mean over rows k of sum_c w_c L_kc / sum_c w_c (included c only).

    A row is an image (per-image losses) or the batch (K = 1); w = 1 without class weights. Rows with no
    included class (or zero total weight) leave the mean; 0 with zero gradient when none is left."""
    weights = included.astype(losses.dtype)
    if class_weights is not None:
        weights = weights * jnp.asarray(class_weights, losses.dtype)
    totals = jnp.sum(weights, axis=-1)
    rows = jnp.sum(weights * jnp.where(included, losses, 0.0), axis=-1) / jnp.where(totals > 0, totals, 1.0)
    return masked_mean(rows, totals > 0)


def probabilities_at_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """softmax over classes of the logits resized to the labels: [B,h,w,C] -> [B,H,W,C] in at least float32."""
    compute_dtype = jnp.promote_types(logits.dtype, jnp.float32)
    return jax.nn.softmax(resize_to_labels(logits, labels).astype(compute_dtype), axis=-1)
