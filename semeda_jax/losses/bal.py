"""Boundary-aware loss (BAL) of Yu, "Semantic Image Segmentation with Pyramid Atrous Convolution and
Boundary-aware Loss" (PAC paper), Eqs. 1-6.

    l_i   = [label == i]                                   (void -> 0 for every class)
    E_i   = [|l_i (*) f_E| > 0],  f_E = [[1, -0.5], [-0.5, 0]]                                  (Eqs. 1-2)
          = [l_i(x,y) != l_i(x+1,y)  or  l_i(x,y) != l_i(x,y+1)]   (replicate pad right/bottom)
    E_G   = sum_i Up(Down(E_i) (*) f) + beta                                                    (Eq. 3)
    BAL   = (1/n) sum_{x,y} E_G(x,y) CE(x,y)                                                    (Eq. 4)
    f_G   = exp(-((x-c)^2 + (y-c)^2) / (n sigma)),  f_L = (n - (|x-c| + |y-c|)) / n             (Eqs. 5-6)

Choices the paper leaves open (SPEC 2(b)-(c)): the kernels are scaled to peak 1, not unit sum (unit sum makes
BAL a no-op); Down is an exact area (box) mean over `down` x `down` blocks after zero-padding H, W up to a
multiple of `down` (a point-sampled resize drops the 1-px edges); the convolution is 'same' with zero padding;
Up is bilinear with half-pixel centres back to the padded size, then cropped to H x W. Since Down, the
convolution and Up are linear, the classes are summed first and one channel is filtered. Void pixels are
excluded from the loss and n counts the valid pixels; E_G is a constant (no gradient).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from semeda_jax.losses.common import (check_pixel_mask, counted_pixels, masked_mean, one_hot_labels,
                                      pixel_cross_entropy, resize_to_labels, valid_mask, void_out_of_range)
from semeda_jax.validation import InputError, check_int, check_labels, check_logits_labels, check_rank

KERNELS = ("gaussian", "linear")


def _check_kernel(kind: str, size: int, sigma: float) -> None:
    if kind not in KERNELS:
        raise InputError(f"kernel: expected one of {KERNELS}, got {kind!r}")
    check_int("size", size, odd=True)
    if not sigma > 0:
        raise InputError(f"sigma: expected a positive number, got {sigma!r}")


def _check_label_map(labels, num_classes: int) -> None:
    check_rank("labels", labels, 3, "[B,H,W]")
    check_int("num_classes", num_classes)
    check_labels("labels", labels, num_classes)


def _check_filter(kind: str, size: int, sigma: float, down: int) -> None:
    _check_kernel(kind, size, sigma)
    check_int("down", down)


def _class_boundary_map(labels: jax.Array, num_classes: int) -> jax.Array:
    masks = one_hot_labels(jnp.where(valid_mask(labels), labels, -1), num_classes, dtype=jnp.int8)
    right = jnp.concatenate([masks[:, :, 1:], masks[:, :, -1:]], axis=2)
    below = jnp.concatenate([masks[:, 1:], masks[:, -1:]], axis=1)
    return jnp.sum((masks != right) | (masks != below), axis=-1, dtype=jnp.int32)


def class_boundary_map(labels: jax.Array, num_classes: int) -> jax.Array:
    """sum_i E_i (PAC Eqs. 1-2): labels [B,H,W] int -> int32 [B,H,W], the number of classes with an edge.

    E_i(x,y) = 1 iff l_i(x,y) differs from l_i at its right or its lower neighbour (x is the column), with the
    last column/row replicated (the image border is no edge). l_i is 0 on void for every class, so a class
    has edges against void; a void pixel has an edge in every class present at its right or below.
    """
    _check_label_map(labels, num_classes)
    return _class_boundary_map(labels, num_classes)


def boundary_kernel(kind: str = "gaussian", size: int = 35, sigma: float = 3.0, dtype=jnp.float32) -> jax.Array:
    """The BAL blur kernel [size, size], peak 1 at the centre c = (size-1)/2 (NOT unit sum).

    gaussian (Eq. 5): exp(-d^2 / (size * sigma)), d the Euclidean distance to the centre;
    linear (Eq. 6): (size - (|dx| + |dy|)) / size, so 1/size in the corners; sigma is unused.
    """
    _check_kernel(kind, size, sigma)
    offsets = jnp.abs(jnp.arange(size, dtype=dtype) - (size - 1) / 2)
    dy, dx = offsets[:, None], offsets[None, :]
    if kind == "gaussian":
        return jnp.exp(-(dy ** 2 + dx ** 2) / (size * sigma))
    return (size - (dy + dx)) / size


@functools.partial(jax.jit, static_argnames=("num_classes", "kernel", "size", "sigma", "beta", "down", "dtype"))
def _weight_map(labels, num_classes, kernel, size, sigma, beta, down, dtype):
    edges = _class_boundary_map(labels, num_classes).astype(dtype)
    batch, height, width = edges.shape
    pad_h, pad_w = -height % down, -width % down
    edges = jnp.pad(edges, ((0, 0), (0, pad_h), (0, pad_w)))
    low = edges.reshape(batch, (height + pad_h) // down, down, (width + pad_w) // down, down).mean(axis=(2, 4))
    blurred = lax.conv_general_dilated(
        low[..., None], boundary_kernel(kernel, size, sigma, dtype)[:, :, None, None], window_strides=(1, 1),
        padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)[..., 0]
    up = jax.image.resize(blurred, (batch, height + pad_h, width + pad_w), method="bilinear")
    return lax.stop_gradient(up[:, :height, :width] + beta)


def boundary_weight_map(labels: jax.Array, num_classes: int, *, kernel: str = "gaussian", size: int = 35,
                        sigma: float = 3.0, beta: float = 0.5, down: int = 4, dtype=jnp.float32) -> jax.Array:
    """E_G of PAC Eq. 3: labels [B,H,W] int -> `dtype` [B,H,W], >= beta, carrying no gradient.

    E_G = crop(Up(Down(sum_i E_i) (*) f)) + beta with Down an area mean over `down` x `down` blocks (H, W
    zero-padded to multiples of `down`), f = boundary_kernel(kernel, size, sigma) ('same', zero padding) and
    Up bilinear (half-pixel centres) back to the padded size. Defaults are the paper's best (+0.96 mIoU).
    """
    _check_label_map(labels, num_classes)
    _check_filter(kernel, size, sigma, down)
    return _weight_map(labels, num_classes, kernel, size, float(sigma), float(beta), down, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("kernel", "size", "sigma", "beta", "down"))
def _boundary_aware_loss(logits, labels, pixel_mask, kernel, size, sigma, beta, down):
    labels = void_out_of_range(labels, logits.shape[-1])
    ce = pixel_cross_entropy(resize_to_labels(logits, labels), labels)
    weights = _weight_map(labels, logits.shape[-1], kernel, size, sigma, beta, down, ce.dtype)
    return masked_mean(weights * ce, counted_pixels(labels, pixel_mask))


def boundary_aware_loss(logits: jax.Array, labels: jax.Array, *, kernel: str = "gaussian", size: int = 35,
                        sigma: float = 3.0, beta: float = 0.5, down: int = 4,
                        pixel_mask: jax.Array | None = None) -> jax.Array:
    """BAL (PAC Eq. 4): logits [B,h,w,C] float, labels [B,H,W] int -> scalar of the logits' dtype.

    (1/n) sum over valid pixels of E_G * CE, CE = -log softmax(logits)[label] with the logits resized
    bilinearly to H x W, n the number of valid (non-void) pixels in the batch; 0 for an all-void batch. E_G is
    `boundary_weight_map(labels, C, kernel=..., size=..., sigma=..., beta=..., down=...)`. `pixel_mask` [B,H,W]
    bool (e.g. `ohem_kept_mask`) restricts the sum and n to the pixels it marks (E_G still sees all labels).
    """
    check_logits_labels(logits, labels)
    _check_filter(kernel, size, sigma, down)
    check_pixel_mask(pixel_mask, labels)
    return _boundary_aware_loss(logits, labels, pixel_mask, kernel, size, float(sigma), float(beta), down)
