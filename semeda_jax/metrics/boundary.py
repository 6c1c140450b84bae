"""Boundary IoU (Cheng et al., CVPR 2021) and boundary F-score (DAVIS, Perazzi et al., CVPR 2016) per class.

Masks. For class c of one image, G_c = {truth == c} and P_c = {prediction == c and truth != void}: a pixel whose
truth is void is in no mask of either map (as DAVIS multiplies both masks by "not void"), so a prediction that
is right on every valid pixel scores 1, whatever it says under void. Pixels outside the image (beyond
`sizes`, e.g. eval padding, or beyond the array) are in no mask either.

Boundary IoU, band width d >= 1 pixels. The inner band of a mask M is M minus its erosion by a 3x3 square
applied d times: the pixels of M within chessboard distance <= d of a pixel not in M, where the pixels just
outside the image count as "not in M". This is Cheng et al.'s `mask_to_boundary`, which pads the mask with one
ring of zeros before eroding "so mask truncated by the image border is also considered as boundary"; the
band is inside M by construction, so it is already "G_d intersected with G". Per class,
    BIoU_c = |band(G_c) & band(P_c)| / |band(G_c) | band(P_c)|.
Default d = max(1, round(0.02 * diagonal)) of the unpadded image, Cheng et al.'s dilation_ratio and rounding
(`boundary_band_width`, computed on the host in float64 so that it equals their Python expression).

Boundary F-score, tolerance t >= 0 pixels. The contour of M is the set of pixels of M with an 8-neighbour in
the image that is not in M (mask minus its 3x3 erosion, i.e. the d = 1 band, except that the image frame is
not a contour, as DAVIS's `seg2bmap`). We take contours inside the mask, not seg2bmap's half-pixel-shifted
ones, so that each contour pixel has exactly one class (its own label). A predicted contour pixel of class c
is matched if a truth contour pixel of class c lies within Euclidean distance <= t (DAVIS dilates with
`disk(t)`, the same set), and a truth contour pixel is matched by the symmetric rule. Default
t = ceil(0.008 * diagonal) of the unpadded image, DAVIS's bound_th and rounding (`boundary_tolerance`).

Accumulation. `boundary_counts` returns exact int32 counts per class for a batch; add them over the split
(on the host in int64, like the confusion matrix). Per class, BIoU = sum of intersections / sum of unions,
precision = matched predicted / predicted contour pixels, recall = matched truth / truth contour pixels, and
F = 2PR / (P + R), i.e. dataset-level ratios, not means of per-image scores. A class enters the mean if its
union (BIoU) or its contour count in either map (F) is non-zero over the split; F is 0 when one side has no
contour pixel of the class (DAVIS's convention) and NaN when neither has.

Calling it (eval). Images padded bottom/right with void labels give the counts of the unpadded images when
`sizes` holds each image's (height, width); all-void fillers with size (0, 0) count nothing. The default d and
t follow each image's diagonal: compute them on the host per batch (`boundary_band_width(sizes)`,
`boundary_tolerance(sizes)`, int32 [B]) and pass them with `sizes` into the jitted step; or pass ints for
fixed widths in pixels. Both loop counts are the batch maxima of d and t (traced), so per-image values do not
recompile.

Cost. Bands and contours are computed on the label maps themselves, without one-hot masks: a pixel of class c
is within chessboard distance r of a pixel not in M_c iff the (2r+1)^2 window around it holds another key or
leaves the image. The window's min and max (of keys and -keys, one int32 [4B,H,W] array) are taken along rows
then columns with strides 1, 2, 4, ...: O(log d) passes, whatever C. Contours are matched for all classes at
once: a contour pixel of class c sets bit c % 32 of word c // 32, and each map's ceil(C/32) uint32 words per
pixel are dilated by each image's disk (a stack of t + 1 row pairs, widened one pixel at a time): O(t) passes
over [2, ceil(C/32), B, H, W]. Temporary memory is 130-150 bytes per pixel of the batch for C <= 32 and about
230 for C = 150 (XLA CPU). Measured on 2 shared CPU cores (timings vary with the load): about 0.2 s per
512 x 512 image with a few of 21 classes (d = 14, t = 6) and 1.4-2.5 s per 1024 x 2048 image with 13 of 19
classes (d = 46, t = 19), 5-9 times the trimap matrices; not yet timed on an accelerator.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.metrics.confusion import _nanmean, _ratio, check_label_prediction_pair
from semeda_jax.validation import IGNORE_LABEL, InputError, check_int, check_rank

BOUNDARY_BAND_RATIO = 0.02  # Cheng et al.'s dilation_ratio
BOUNDARY_TOLERANCE_RATIO = 0.008  # DAVIS's bound_th
BOUNDARY_COUNT_KEYS = ("iou_intersection", "iou_union", "pred_matched", "pred_contour", "truth_matched",
                       "truth_contour")


def _diagonals(sizes) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise InputError(f"sizes: expected [B,2] (height, width) pairs, got shape {sizes.shape}")
    return np.hypot(sizes[:, 0], sizes[:, 1])


def boundary_band_width(sizes, ratio: float = BOUNDARY_BAND_RATIO) -> np.ndarray:
    """sizes [B,2] (height, width) -> int32 [B]: max(1, round(ratio * diagonal)), Cheng et al.'s d (host, float64)."""
    return np.maximum(1, np.round(ratio * _diagonals(sizes))).astype(np.int32)


def boundary_tolerance(sizes, ratio: float = BOUNDARY_TOLERANCE_RATIO) -> np.ndarray:
    """sizes [B,2] (height, width) -> int32 [B]: ceil(ratio * diagonal), DAVIS's tolerance (host, float64)."""
    return np.ceil(ratio * _diagonals(sizes)).astype(np.int32)


def _moved(x: jax.Array, offset: int, axis: int, fill) -> jax.Array:
    """x moved `offset` positions along `axis` (out[i] = x[i - offset]), `fill` entering."""
    size = x.shape[axis]
    if abs(offset) >= size:
        return jnp.full_like(x, fill)
    kept = jax.lax.slice_in_dim(x, *((0, size - offset) if offset > 0 else (-offset, size)), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (offset, 0) if offset > 0 else (0, -offset)
    return jnp.pad(kept, pad, constant_values=fill)


def _moved_by(x: jax.Array, offset: jax.Array, axis: int, fill) -> jax.Array:
    """`_moved` by a traced offset in [-size, size] (a window of the array padded with `size` fills per side)."""
    size = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (size, size)
    start = [jnp.int32(0)] * x.ndim
    start[axis] = (size - offset).astype(jnp.int32)
    return jax.lax.dynamic_slice(jnp.pad(x, pad, constant_values=fill), start, x.shape)


def _line_min(x: jax.Array, radius: jax.Array, axis: int, fill: int) -> jax.Array:
    """Min of int32 x [N,H,W] over positions i - radius[n] .. i + radius[n] along `axis`, positions beyond the
    array holding `fill`; radius int32 [N] >= 0 (beyond the size, the window holds the whole axis and fills).

    O(log radius) passes: strides 1, 2, 4, ... double the reach to 2^m - 1 <= radius, then the minima at
    -rest and +rest (rest = radius - reach <= reach, moved bit by bit) cover the whole window.
    """
    radius = jnp.minimum(radius, x.shape[axis])  # a wider window only adds fills
    grows = lambda reach: 2 * reach + 1 <= radius[:, None, None]

    def widen(level, carry):
        x, reach = carry
        stride = jnp.left_shift(1, level)  # reach + 1 for the images that grow
        wider = jnp.minimum(jnp.minimum(_moved_by(x, stride, axis, fill), x), _moved_by(x, -stride, axis, fill))
        return jnp.where(grows(reach), wider, x), jnp.where(grows(reach), 2 * reach + 1, reach)

    reach = jnp.zeros((x.shape[0], 1, 1), jnp.int32)
    powers = jnp.left_shift(1, jnp.arange(x.shape[axis].bit_length(), dtype=jnp.int32))  # 1, 2, 4, ...
    levels = jnp.sum(2 * powers - 1 <= jnp.max(radius), dtype=jnp.int32)
    x, reach = jax.lax.fori_loop(0, levels, widen, (x, reach))
    rest = radius[:, None, None] - reach

    def move(level, pair):
        take = jnp.right_shift(rest, level) & 1 == 1
        stride = jnp.left_shift(1, level)
        return tuple(jnp.where(take, _moved_by(y, sign * stride, axis, fill), y) for y, sign in zip(pair, (1, -1)))

    bits = jnp.sum(powers <= jnp.max(rest), dtype=jnp.int32)
    ahead, behind = jax.lax.fori_loop(0, bits, move, (x, x))
    return jnp.minimum(ahead, behind)


def _uniform(keys: jax.Array, inside: jax.Array, radius: jax.Array, frame_is_boundary: bool,
             above: int) -> jax.Array:
    """keys int32 [N,H,W] in [0, above), inside bool [N,H,W], radius int32 [N] -> bool [N,H,W]: every pixel
    within chessboard distance radius[n] carries the pixel's key.

    With `frame_is_boundary` a pixel outside the image (not `inside`, or beyond the array) differs from every
    key; without it, it is ignored. The window's min of keys and of -keys (its max) are taken in one array,
    along rows then columns; the fill -above is below both, +above above both.
    """
    fill = -above if frame_is_boundary else above
    extreme = jnp.where(jnp.tile(inside, (2, 1, 1)), jnp.concatenate([keys, -keys]), fill)
    radius = jnp.tile(radius, 2)
    extreme = _line_min(_line_min(extreme, radius, 1, fill), radius, 2, fill)
    low, high = jnp.split(extreme, 2)
    return (low == keys) & (-high == keys)


def _isqrt(n: jax.Array) -> jax.Array:
    """floor(sqrt(n)) of int32 n >= 0, exact (float estimate, then one integer correction)."""
    root = jnp.floor(jnp.sqrt(n.astype(jnp.float32))).astype(jnp.int32)
    return root + ((root + 1) * (root + 1) <= n) - (root * root > n)


def _disk_dilation(bits: jax.Array, radius: jax.Array, max_radius) -> jax.Array:
    """bits uint32 [..., B, H, W], radius int32 [B] -> uint32 [..., B, H, W]: the OR of the bits of every pixel
    within Euclidean distance <= radius[b] (skimage's disk(r) = {dy^2 + dx^2 <= r^2}), out-of-array pixels 0.

    The disk is a stack of rows: at |dy| = j, the half-width floor(sqrt(r^2 - j^2)) only grows as j goes from
    max_radius down to 0, so one horizontal dilation is widened one pixel at a time (per image, as needed) and
    ORed into two accumulators that move one row per step, one up and one down.
    """
    def row(i, carry):
        horizontal, half, up, down = carry
        offset = max_radius - i  # |dy|
        need = jnp.where(offset <= radius, _isqrt(jnp.maximum(radius * radius - offset * offset, 0)), -1)

        def widen(state):
            horizontal, half = state
            grow = (half < need)[:, None, None]
            wider = horizontal | _moved(horizontal, 1, -1, 0) | _moved(horizontal, -1, -1, 0)
            return jnp.where(grow, wider, horizontal), half + grow[:, 0, 0]

        horizontal, half = jax.lax.while_loop(lambda state: jnp.any(state[1] < need), widen, (horizontal, half))
        this_row = jnp.where((need >= 0)[:, None, None], horizontal, jnp.uint32(0))
        return horizontal, half, _moved(up, -1, -2, 0) | this_row, _moved(down, 1, -2, 0) | this_row

    zeros = jnp.zeros_like(bits)
    start = (bits, jnp.zeros(radius.shape, jnp.int32), zeros, zeros)
    _, _, up, down = jax.lax.fori_loop(0, max_radius + 1, row, start)
    return up | down


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label"))
def _boundary_counts(labels, predictions, band_width, tolerance, sizes, num_classes, ignore_label):
    batch, height, width = labels.shape
    inside = ((jnp.arange(height)[:, None] < sizes[:, 0, None, None])
              & (jnp.arange(width) < sizes[:, 1, None, None]))
    valid = inside & (labels != ignore_label)
    # Void and outside pixels get key `num_classes` (no class): in no mask, and different from every class.
    keys = jnp.stack([jnp.where(valid, labels.astype(jnp.int32), num_classes),
                      jnp.where(valid, predictions.astype(jnp.int32), num_classes)])  # int32 [2,B,H,W]
    classes = keys.reshape(2 * batch, height, width)
    above, masked = num_classes + 1, (keys < num_classes)
    count = lambda x, where: jnp.bincount(jnp.where(where, x, 0).reshape(-1), where.reshape(-1).astype(jnp.int32),
                                          length=num_classes)

    tolerance = jnp.minimum(tolerance, height + width)  # every pixel pair is closer: a larger one changes nothing
    inside2 = jnp.tile(inside, (2, 1, 1))
    band = masked & ~_uniform(classes, inside2, jnp.tile(band_width, 2), True, above).reshape(keys.shape)
    truth_band, pred_band = count(keys[0], band[0]), count(keys[1], band[1])
    both = count(keys[0], band[0] & band[1] & (keys[0] == keys[1]))

    ones = jnp.ones(2 * batch, jnp.int32)
    contour = masked & ~_uniform(classes, inside2, ones, False, above).reshape(keys.shape)
    truth_contour, pred_contour = count(keys[0], contour[0]), count(keys[1], contour[1])

    # Contour pixels as bit c % 32 of word c // 32; a disk dilation of each map's bits tells every pixel which
    # classes have a contour pixel of that map within its image's tolerance.
    words = (num_classes + 31) // 32
    key = jnp.where(contour, keys, 0).astype(jnp.uint32)
    bit = jnp.where(contour, jnp.left_shift(jnp.uint32(1), key % 32), jnp.uint32(0))
    bits = jnp.stack([jnp.where(key // 32 == w, bit, jnp.uint32(0)) for w in range(words)], axis=1)  # [2,W,B,H,W]
    near = _disk_dilation(bits, tolerance, jnp.max(tolerance))
    near = jnp.take_along_axis(near[::-1], (key // 32)[:, None].astype(jnp.int32), axis=1)[:, 0]
    matched = contour & ((jnp.right_shift(near, key % 32) & 1) == 1)  # near the other map's contour
    return {"iou_intersection": both, "iou_union": truth_band + pred_band - both,
            "pred_matched": count(keys[1], matched[1]), "pred_contour": pred_contour,
            "truth_matched": count(keys[0], matched[0]), "truth_contour": truth_contour}


def _check_integers(name: str, value) -> None:
    dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
    if not np.issubdtype(dtype, np.integer):
        raise InputError(f"{name}: expected integer pixel counts, got dtype {dtype}")


def _per_image(name: str, value, batch: int, minimum: int):
    """An int (same for every image) or an int [B] array -> int32 [B]."""
    if np.ndim(value) == 0 and not isinstance(value, jax.Array):
        check_int(name, value, minimum=minimum)
        return jnp.full((batch,), value, jnp.int32)
    check_rank(name, value, 1, "[B]")
    _check_integers(name, value)
    if np.shape(value)[0] != batch:
        raise InputError(f"{name}: expected one value per image ({batch}), got shape {tuple(np.shape(value))}")
    if not isinstance(value, jax.core.Tracer) and np.any(np.asarray(value) < minimum):
        raise InputError(f"{name}: expected values >= {minimum}, got {np.asarray(value).tolist()}")
    return jnp.asarray(value, jnp.int32)


def boundary_counts(labels, predictions, num_classes: int, *, band_width=None, tolerance=None, sizes=None,
                    ignore_label: int = IGNORE_LABEL) -> dict[str, jax.Array]:
    """labels, predictions [B,H,W] int -> {key: int32 [C]} for BOUNDARY_COUNT_KEYS (see the module docstring).

    sizes: int [B,2], each image's (height, width), the valid top-left region (None: the whole array).
    band_width (>= 1) and tolerance (>= 0) in pixels: an int for every image or an int [B] array; None takes
    the defaults from the image sizes on the host (`boundary_band_width`, `boundary_tolerance`), which needs
    concrete sizes (under jit, pass the arrays). Exact while the batch has fewer than 2^31 pixels.
    """
    check_label_prediction_pair(labels, predictions, num_classes, ignore_label)
    batch, height, width = np.shape(labels)
    if sizes is None:
        sizes = np.tile(np.array([[height, width]], np.int32), (batch, 1))
    check_rank("sizes", sizes, 2, "[B,2]")
    _check_integers("sizes", sizes)
    if np.shape(sizes) != (batch, 2):
        raise InputError(f"sizes: expected shape ({batch}, 2) (height, width per image), got {np.shape(sizes)}")
    concrete = not isinstance(sizes, jax.core.Tracer)
    if concrete and np.any((np.asarray(sizes) < 0) | (np.asarray(sizes) > [height, width])):
        raise InputError(f"sizes: expected 0 <= (height, width) <= ({height}, {width}), "
                         f"got {np.asarray(sizes).tolist()}")
    for name, value, default in (("band_width", band_width, boundary_band_width),
                                 ("tolerance", tolerance, boundary_tolerance)):
        if value is None and not concrete:
            raise InputError(f"{name}: pass it explicitly under jit (e.g. {default.__name__}(sizes) on the host)")
    band_width = _per_image("band_width", boundary_band_width(sizes) if band_width is None else band_width, batch, 1)
    tolerance = _per_image("tolerance", boundary_tolerance(sizes) if tolerance is None else tolerance, batch, 0)
    return _boundary_counts(jnp.asarray(labels), jnp.asarray(predictions), band_width, tolerance,
                            jnp.asarray(sizes, jnp.int32), int(num_classes), int(ignore_label))


def _as_counts(counts: Mapping, keys) -> list[np.ndarray]:
    missing = [key for key in keys if key not in counts]
    if missing:
        raise InputError(f"counts: missing keys {missing} (expected the output of boundary_counts)")
    arrays = [np.asarray(counts[key], dtype=np.float64) for key in keys]
    if arrays[0].ndim != 1 or any(a.shape != arrays[0].shape for a in arrays):
        raise InputError(f"counts: expected [C] vectors, got shapes {[a.shape for a in arrays]}")
    return arrays


def boundary_iou(counts: Mapping) -> tuple[np.ndarray, float]:
    """Accumulated counts -> (Boundary IoU float64 [C], NaN where the union is empty; mean over the others)."""
    intersection, union = _as_counts(counts, BOUNDARY_COUNT_KEYS[:2])
    per_class = _ratio(intersection, union)
    return per_class, _nanmean(per_class)


def boundary_fscore(counts: Mapping) -> tuple[np.ndarray, float]:
    """Accumulated counts -> (boundary F float64 [C], NaN where neither map has a contour of the class; mean).

    F = 2PR / (P + R), precision P = pred_matched / pred_contour, recall R = truth_matched / truth_contour;
    0 when either side has no contour pixel of the class.
    """
    pred_matched, pred_contour, truth_matched, truth_contour = _as_counts(counts, BOUNDARY_COUNT_KEYS[2:])
    precision = np.nan_to_num(_ratio(pred_matched, pred_contour))
    recall = np.nan_to_num(_ratio(truth_matched, truth_contour))
    per_class = np.nan_to_num(_ratio(2 * precision * recall, precision + recall))
    per_class[(pred_contour + truth_contour) == 0] = np.nan
    return per_class, _nanmean(per_class)
