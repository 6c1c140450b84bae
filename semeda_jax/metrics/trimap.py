"""Trimap evaluation (SEMEDA Sec. 4.3, Fig. 5; SPEC.md 1(b) "Trimap"): scores near vs away from GT edges.

The band of width w is the set of pixels within chessboard distance < w of a ground-truth semantic edge pixel
(`semeda_jax.edges.semantic_edges`: 8-neighbour rule, void counted as a label of its own): w = 1 is the edge
map itself, and w dilates it by a (2w-1) x (2w-1) square. Squares compose (radius r1 then r2 = radius
r1 + r2), so the bands are built incrementally by separable max-pooling (`lax.reduce_window` along H, then
W) and the total pooling work grows with max(widths) only, not with their sum.

Each valid pixel is then counted once: it falls in the band for every width above its distance and in the
interior ("non-boundary") for the others, so one bincount over (number of widths it is outside of, truth,
prediction) followed by a cumulative sum gives every width's band and interior matrices. Void truth pixels
are in neither (they can still be edges, i.e. band centres).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.edges import semantic_edges
from semeda_jax.metrics.confusion import check_label_prediction_pair, grouped_confusion, per_class_iou, _nanmean
from semeda_jax.validation import IGNORE_LABEL, InputError

DEFAULT_TRIMAP_WIDTHS = (1, 2, 3, 5, 10, 20, 40)


def _dilate(mask: jax.Array, radius: int) -> jax.Array:
    """Square (2r+1) x (2r+1) binary dilation of bool [B,H,W] by two 1-D max-pools; outside the image is 0."""
    if radius == 0:
        return mask
    x = mask.astype(jnp.int8)
    for window, padding in (((1, 2 * radius + 1, 1), ((0, 0), (radius, radius), (0, 0))),
                            ((1, 1, 2 * radius + 1), ((0, 0), (0, 0), (radius, radius)))):
        x = jax.lax.reduce_window(x, jnp.int8(0), jax.lax.max, window, (1, 1, 1), padding)
    return x.astype(bool)


def trimap_bands(labels: jax.Array, widths: Sequence[int] = DEFAULT_TRIMAP_WIDTHS) -> jax.Array:
    """labels [B,H,W] int -> bool [len(widths), B, H, W]: pixels within chessboard distance < w of a GT edge.

    `widths` must be strictly increasing positive ints (checked by `trimap_confusion`).
    """
    band = semantic_edges(labels)
    bands, radius = [], 0
    for width in widths:
        band = _dilate(band, width - 1 - radius)
        bands.append(band)
        radius = width - 1
    return jnp.stack(bands)


@functools.partial(jax.jit, static_argnames=("num_classes", "widths", "ignore_label"))
def _trimap_confusion(labels, predictions, num_classes, widths, ignore_label):
    bands = trimap_bands(labels, widths)
    outside = jnp.sum(~bands, axis=0, dtype=jnp.int32)  # in [0, W]; in band of width i iff outside <= i
    counts = grouped_confusion(labels, predictions, outside, len(widths) + 1, num_classes, ignore_label)
    band_cm = jnp.cumsum(counts, axis=0, dtype=jnp.int32)[:-1]
    return band_cm, jnp.sum(counts, axis=0, dtype=jnp.int32) - band_cm


def trimap_confusion(labels, predictions, num_classes: int, widths: Sequence[int] = DEFAULT_TRIMAP_WIDTHS,
                     ignore_label: int = IGNORE_LABEL) -> tuple[jax.Array, jax.Array]:
    """labels, predictions [B,H,W] int -> (band_cm, interior_cm), each int32 [len(widths), C, C].

    band_cm[i] counts the valid pixels within chessboard distance < widths[i] of a GT edge, interior_cm[i]
    the other valid pixels (rows = truth, cols = prediction); band_cm[i] + interior_cm[i] is the plain
    confusion matrix. Widths are in pixels of the label map, strictly increasing.
    """
    widths = tuple(int(w) for w in widths)
    if not widths or widths[0] < 1 or any(b <= a for a, b in zip(widths, widths[1:])):
        raise InputError(f"widths: expected strictly increasing positive band widths, got {widths}")
    check_label_prediction_pair(labels, predictions, num_classes, ignore_label)
    return _trimap_confusion(jnp.asarray(labels), jnp.asarray(predictions), int(num_classes), widths, ignore_label)


def trimap_miou(band_cm, interior_cm) -> tuple[np.ndarray, np.ndarray]:
    """Accumulated [W,C,C] band / interior matrices -> (boundary mIoU [W], non-boundary mIoU [W]) in float64.

    The curves of SEMEDA Fig. 5 (x = width). A class contributes to a width's mean only where its union is
    non-empty in that region.
    """
    return _nanmean(per_class_iou(band_cm)), _nanmean(per_class_iou(interior_cm))
