"""Boundary (surface) loss of Kervadec et al. 2019 (Eq. 5 and the authors' code), multi-class.

    L = (1/N) sum_{counted pixels q} sum_c w_c s_c(q) phi_c(q)

with s = softmax of the logits resized to the labels [B,H,W,C], N the number of counted pixels (non-void and
in `pixel_mask`), w = class_weights (1 by default) and phi_c the signed distance map of class c's region
G_c = {y == c} in each image (Kervadec's one_hot2dist, Euclidean, in pixels):

    phi_c(q) = d(q, G_c)                 q outside G_c  (>= 1)
    phi_c(q) = -(d(q, ~G_c) - 1)         q inside G_c   (<= 0; 0 on the inner boundary, the pixels of G_c
                                                         with a 4-neighbour outside G_c)
    phi_c = 0 everywhere when G_c is empty (the class is absent: one_hot2dist's `if posmask.any()`) or is the
    whole image (no boundary; one_hot2dist is ill-defined there, scipy's EDT having no background pixel).

Void pixels belong to no class (a region's boundary runs along void too) and are left out of the sum. The
authors' code takes the mean over the classes it sums as well (1/C of this sum over classes) and usually
skips the background class (class_weights with a 0 there). The loss is not bounded below by 0 (phi < 0
inside): Kervadec et al. pair it with a regional loss (Dice, CE) and ramp its weight up.

The maps need an exact Euclidean distance transform. `signed_distance_maps` computes it on device, jit-able
and exact: the squared distance is separable, d^2(i,j) = min_k [ f(i,k) + (j-k)^2 ] with f(i,k) the squared
distance to the nearest region pixel in column k (exact, from two cumulative max/min scans down the columns).
The row pass is a brute-force min over the offsets j - k (a loop of shifted minima, no [..,W,W] temporary)
along the shorter side: O(B C H W min(H, W)) integer operations for 2C maps (distances to each class and to
its complement), tolerable for small crops; `max_distance` R bounds the offsets to |j - k| <= R, which gives
exactly min(d, R) (a nearest pixel within R is found; beyond R the result is clipped) at O(B C H W R). For large crops without truncation,
compute the maps in the input pipeline (this function on the host CPU, or Kervadec's one_hot2dist with
scipy.ndimage.distance_transform_edt, which this module reproduces) and pass them as `distance_maps`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from semeda_jax.losses.common import (check_class_weights, check_pixel_mask, counted_pixels, one_hot_labels,
                                      probabilities_at_labels, void_out_of_range)
from semeda_jax.validation import InputError, check_int, check_labels, check_logits_labels, check_rank


def _squared_distances(region: jax.Array, max_distance: int | None = None) -> jax.Array:
    """region bool [K,H,W] -> int32 [K,H,W], the squared Euclidean distance to the nearest True pixel of the
    same map (0 on the region), exact up to `max_distance` and min(d, max_distance)^2 beyond it; at least
    (H + W)^2 where the map has no True pixel (and max_distance is None)."""
    _, height, width = region.shape
    if width > height:  # the brute-force pass runs along the shorter side: O(H W min(H, W))
        return jnp.swapaxes(_squared_distances(jnp.swapaxes(region, 1, 2), max_distance), 1, 2)
    far = height + width
    rows = jnp.arange(height, dtype=jnp.int32)[None, :, None]
    before = lax.cummax(jnp.where(region, rows, -far), axis=1)
    after = lax.cummin(jnp.where(region, rows, 2 * far), axis=1, reverse=True)
    column = jnp.minimum(jnp.minimum(rows - before, after - rows), far) ** 2  # along each column: exact
    reach = width - 1 if max_distance is None else min(max_distance, width - 1)
    padded = jnp.pad(column, ((0, 0), (0, 0), (reach, reach)), constant_values=far ** 2)

    def nearer(offset, best):  # d^2(i,j) = min over |o| <= reach of column(i, j+o) + o^2
        left = lax.dynamic_slice_in_dim(padded, reach - offset, width, axis=2)
        right = lax.dynamic_slice_in_dim(padded, reach + offset, width, axis=2)
        return jnp.minimum(best, jnp.minimum(left, right) + offset ** 2)

    best = lax.fori_loop(1, reach + 1, nearer, column, unroll=8)
    return best if max_distance is None else jnp.minimum(best, max_distance ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_distance"))
def _signed_distance_maps(labels, num_classes, max_distance=None):
    batch, height, width = labels.shape
    labels = void_out_of_range(labels, num_classes)
    inside = jnp.moveaxis(one_hot_labels(labels, num_classes, jnp.bool_), -1, 1)  # [B,C,H,W]
    regions = jnp.concatenate([inside, ~inside], axis=1).reshape(batch * 2 * num_classes, height, width)
    distances = jnp.sqrt(_squared_distances(regions, max_distance).astype(jnp.float32)).reshape(batch, 2, num_classes,
                                                                                   height, width)
    to_region, to_outside = distances[:, 0], distances[:, 1]
    phi = jnp.where(inside, 1.0 - to_outside, to_region)
    has_boundary = jnp.any(inside, axis=(2, 3)) & jnp.any(~inside, axis=(2, 3))
    return jnp.moveaxis(jnp.where(has_boundary[:, :, None, None], phi, 0.0), 1, -1)


def signed_distance_maps(labels: jax.Array, num_classes: int, *, max_distance: int | None = None) -> jax.Array:
    """phi: labels [B,H,W] int (void 255) -> float32 [B,H,W,C], the signed distance maps of the module docstring
    (negative inside class c, 0 on its inner boundary, the distance to it outside; 0 for an absent class or a
    class covering the image). Exact Euclidean distances in pixels, jit-able, no gradient. `max_distance` R
    truncates both distances at R (phi in [1 - R, R], exactly min(d, R)) and cuts the cost to O(B C H W R)."""
    check_rank("labels", labels, 3, "[B,H,W]")
    check_int("num_classes", num_classes, minimum=2)
    check_labels("labels", labels, num_classes)
    _check_max_distance(max_distance)
    return _signed_distance_maps(labels, int(num_classes), max_distance)


def _check_max_distance(max_distance) -> None:
    if max_distance is not None:
        check_int("max_distance", max_distance, minimum=1)


@functools.partial(jax.jit, static_argnames=("max_distance",))
def _surface_loss(logits, labels, distance_maps, class_weights, pixel_mask, max_distance):
    num_classes = logits.shape[-1]
    labels = void_out_of_range(labels, num_classes)
    probs = probabilities_at_labels(logits, labels)
    if distance_maps is None:
        distance_maps = _signed_distance_maps(labels, num_classes, max_distance)
    terms = probs * lax.stop_gradient(distance_maps).astype(probs.dtype)
    if class_weights is not None:
        terms = terms * jnp.asarray(class_weights, probs.dtype)
    counted = counted_pixels(labels, pixel_mask)
    total = jnp.sum(jnp.where(counted, jnp.sum(terms, axis=-1), 0.0))
    return total / jnp.maximum(jnp.sum(counted), 1).astype(total.dtype)


def surface_loss(logits: jax.Array, labels: jax.Array, distance_maps: jax.Array | None = None, *,
                 max_distance: int | None = None, class_weights=None,
                 pixel_mask: jax.Array | None = None) -> jax.Array:
    """Boundary loss: logits [B,h,w,C] float, labels [B,H,W] int (void 255) -> scalar (module docstring).

    `distance_maps` [B,H,W,C] are phi (`signed_distance_maps(labels, C)`, e.g. from the input pipeline); None
    computes them here, on device, with `max_distance` as in signed_distance_maps (ignored when maps are given).
    `class_weights` [C] scale each class's term; `pixel_mask` [B,H,W] bool restricts the counted pixels. 0 with
    zero gradient when no pixel counts. The maps carry no gradient.
    """
    num_classes = check_logits_labels(logits, labels)
    if distance_maps is not None and tuple(distance_maps.shape) != tuple(labels.shape) + (num_classes,):
        raise InputError(f"distance_maps: expected shape {tuple(labels.shape) + (num_classes,)} [B,H,W,C], got "
                         f"{tuple(distance_maps.shape)}")
    check_class_weights("class_weights", class_weights, num_classes)
    check_pixel_mask(pixel_mask, labels)
    _check_max_distance(max_distance)
    return _surface_loss(logits, labels, distance_maps, class_weights, pixel_mask, max_distance)
