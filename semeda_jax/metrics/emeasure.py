"""Enhanced-alignment measure E (Fan et al., IJCAI 2018; SPEC.md 1(c) "E-measure"), per image and class.

For class c of one image, FM = (prediction == c) and GT = (label == c) over the image's N valid (non-void)
pixels, and (MATLAB `Emeasure.m`, eps = 2^-52):
    GT all 0: Phi = 1 - FM;   GT all 1: Phi = FM;   otherwise, with a = GT - mean(GT), b = FM - mean(FM),
    xi = 2ab / (a^2 + b^2 + eps),  Phi = (1 + xi)^2 / 4;     E = sum(Phi) / (N - 1 + eps).
Phi at a pixel depends only on its (FM, GT) pair, so E is an exact function of the per-image TP/FP/FN/TN
counts: we compute those with one bincount and evaluate E for all [B, C] pairs at once.

Decisions (SPEC 1(b)): void pixels are left out of every mean and sum; the dataset score of a class is the
mean of its per-image E over the images whose valid truth contains it; the mean E-measure is the mean over
classes that occur in at least one image. Note that the MATLAB denominator N - 1 lets E reach N / (N - 1) > 1.
Degenerate sizes: for N <= 1 the denominator N - 1 + eps would be ~eps (E ~ 1e16), so we divide by 1 instead:
one valid pixel scores its Phi (0 or 1), an image with no valid pixel scores 0 for every class and has no
class present. Results are float64 under `jax_enable_x64`, float32 otherwise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.metrics.confusion import _nanmean, _ratio, per_image_confusion_matrix
from semeda_jax.validation import IGNORE_LABEL, InputError, check_rank, check_same_shape

MATLAB_EPS = 2.220446049250313e-16


def emeasure_from_counts(tp, fp, fn, tn) -> jax.Array:
    """E-measure of binary maps given their counts (any equal shapes, int or float) -> float, same shape.

    tp: FM=1,GT=1; fp: FM=1,GT=0; fn: FM=0,GT=1; tn: FM=0,GT=0, counted over valid pixels.
    """
    dtype = jnp.result_type(float)
    tp, fp, fn, tn = (jnp.asarray(x).astype(dtype) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    mean_gt = (tp + fn) / jnp.maximum(n, 1.0)
    mean_fm = (tp + fp) / jnp.maximum(n, 1.0)

    def enhanced(fm: float, gt: float) -> jax.Array:
        a, b = gt - mean_gt, fm - mean_fm
        xi = 2.0 * a * b / (a * a + b * b + MATLAB_EPS)
        return (1.0 + xi) ** 2 / 4.0

    aligned = (tp * enhanced(1.0, 1.0) + fp * enhanced(1.0, 0.0)
               + fn * enhanced(0.0, 1.0) + tn * enhanced(0.0, 0.0))
    total = jnp.where(tp + fn == 0, tn, jnp.where(fp + tn == 0, tp, aligned))
    return total / jnp.where(n > 1, n - 1.0 + MATLAB_EPS, 1.0)


@jax.jit
def _emeasure_from_confusion(cm: jax.Array) -> tuple[jax.Array, jax.Array]:
    tp = jnp.diagonal(cm, axis1=-2, axis2=-1)
    fp = jnp.sum(cm, axis=-2) - tp
    fn = jnp.sum(cm, axis=-1) - tp
    tn = jnp.sum(cm, axis=(-2, -1))[:, None] - tp - fp - fn
    return emeasure_from_counts(tp, fp, fn, tn), tp + fn > 0


def emeasure_per_image(labels, predictions, num_classes: int,
                       ignore_label: int = IGNORE_LABEL) -> tuple[jax.Array, jax.Array]:
    """labels, predictions [B,H,W] int -> (scores float [B,C], present bool [B,C]).

    scores[b, c] is the binary E-measure of class c on image b over its valid pixels (a class absent from the
    truth gets the degenerate "GT all 0" score sum(1 - FM) / (N - 1) = (N - |FM|) / (N - 1), as Emeasure.m);
    present[b, c] says class c occurs in the valid truth of image b.
    """
    return _emeasure_from_confusion(per_image_confusion_matrix(labels, predictions, num_classes, ignore_label))


def emeasure_totals(scores, present) -> tuple[jax.Array, jax.Array]:
    """(scores [B,C], present bool [B,C]) -> (sum of scores over present images [C], image count int32 [C]).

    Add these over batches, then call `emeasure_dataset`. Pass `present = ones` to average every class over
    every image instead (the other aggregation SPEC 1(b) leaves open).
    """
    check_rank("scores", scores, 2, "[B,C]")
    check_same_shape(("scores", "present"), scores, present)
    present = jnp.asarray(present, dtype=bool)
    return jnp.sum(jnp.where(present, scores, 0.0), axis=0), jnp.sum(present, axis=0, dtype=jnp.int32)


def emeasure_dataset(sums, counts) -> tuple[np.ndarray, float]:
    """Accumulated (sums [C], counts [C]) -> (per-class E float64 [C], NaN if never present; mean over classes)."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if sums.ndim != 1 or sums.shape != counts.shape:
        raise InputError(f"sums and counts: expected two [C] vectors, got shapes {sums.shape} and {counts.shape}")
    per_class = _ratio(sums, counts)
    return per_class, _nanmean(per_class)
