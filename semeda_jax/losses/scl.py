"""Spatial correlation loss (SCL) of RelationNet (Zhuang et al.), Eqs. 4-6.

For every pixel m and offset (dy, dx) in {-1, 0, 1}^2 (the pixel compared with itself included), the
similarity subnet predicts P = sigmoid(z) that m and m + (dy, dx) carry the same label; T is the truth.

    alpha = n_same / (n_same + n_diff)   weights the DIFFERENT-label term log(1 - P)        (Eq. 5)
    beta  = n_diff / (n_same + n_diff)   weights the SAME-label term log P
    L_scl = -(1/N) sum_{pairs} [ beta T log P + alpha (1 - T) log(1 - P) ]                 (Eqs. 4, 6)

Eqs. 4 and 6 are printed without the minus sign. The cross-assignment balances the two terms: each gets the
total weight n_same n_diff / N. Choices the paper leaves open: a pair is valid iff both pixels lie in the
image and are non-void; n_same, n_diff and N count the valid pairs of the whole batch. With nothing void
and the border pairs counted this is the paper's N = 9WH per image; we exclude the pairs reaching past the
border (the paper compares with zero-padded features there, which have no label).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.losses.common import masked_mean, valid_mask
from semeda_jax.validation import IGNORE_LABEL, InputError, check_int, check_integer_map, check_rank


def neighbour_offsets() -> tuple[tuple[int, int], ...]:
    """The 9 (dy, dx) offsets of the 3x3 neighbourhood, row-major, (0, 0) included (index 4)."""
    return tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _check_labels(labels) -> None:
    check_rank("labels", labels, 3, "[B,H,W]")
    check_integer_map("labels", labels)


def _pair_targets(labels):
    height, width = labels.shape[1:]
    padded = jnp.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=IGNORE_LABEL)
    neighbours = jnp.stack([padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                            for dy, dx in neighbour_offsets()], axis=-1)
    valid = valid_mask(labels)[..., None] & valid_mask(neighbours)
    return valid & (labels[..., None] == neighbours), valid


def pair_targets(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """labels [B,H,W] int -> (same, valid), both bool [B,H,W,9], the last axis ordered as `neighbour_offsets()`.

    valid[b,y,x,k]: pixel (y, x) and its neighbour (y + dy_k, x + dx_k) both lie in the image and are non-void.
    same[b,y,x,k]: the pair is valid and the two labels are equal (the target T).
    """
    _check_labels(labels)
    return _pair_targets(labels)


@jax.jit
def _spatial_correlation_loss(pair_logits, labels):
    same, valid = _pair_targets(labels)
    n_valid = jnp.maximum(jnp.sum(valid), 1).astype(pair_logits.dtype)
    alpha = jnp.sum(same) / n_valid
    beta = jnp.sum(valid & ~same) / n_valid
    per_pair = jnp.where(same, beta * jax.nn.log_sigmoid(pair_logits), alpha * jax.nn.log_sigmoid(-pair_logits))
    return -masked_mean(per_pair, valid)


def spatial_correlation_loss(pair_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """L_scl (RelationNet Eq. 6): pair_logits [B,H,W,9] float, labels [B,H,W] int -> scalar of pair_logits' dtype.

    pair_logits[b,y,x,k] is the similarity subnet's logit (before the sigmoid) that pixel (y, x) and its
    neighbour at offset `neighbour_offsets()[k]` share a label; labels are at the same (feature) resolution,
    e.g. from `downsample_labels_nearest`. Mean over the batch's valid pairs (see `pair_targets`); 0 if none.
    """
    check_rank("pair_logits", pair_logits, 4, "[B,H,W,9]")
    _check_labels(labels)
    if pair_logits.shape != (*labels.shape, 9):
        raise InputError(f"pair_logits: expected shape {(*labels.shape, 9)} ([B,H,W] of labels, 9 offsets), "
                         f"got {tuple(pair_logits.shape)}")
    return _spatial_correlation_loss(pair_logits, labels)


def downsample_labels_nearest(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """labels [B,H,W] -> [B,h,w] (same dtype) by nearest neighbour with half-pixel centres.

    Output pixel (i, j) takes input pixel (floor((i + 1/2) H / h), floor((j + 1/2) W / w)), computed in exact
    integer arithmetic; for H = 8h that is row 8i + 4, just past the centre of each 8-row block. This is the
    convention of `jax.image.resize(..., 'nearest')` and of the bilinear resize of the logits. Void stays void.
    """
    _check_labels(labels)
    if len(size) != 2:
        raise InputError(f"size: expected (h, w), got {size!r}")
    for axis, n in zip(("h", "w"), size):
        check_int(f"size {axis}", n)
    (height, width), (out_h, out_w) = labels.shape[1:], size
    rows = (2 * np.arange(out_h) + 1) * height // (2 * out_h)
    cols = (2 * np.arange(out_w) + 1) * width // (2 * out_w)
    return jnp.asarray(labels)[:, rows[:, None], cols[None, :]]


def spatial_correlation_loss_from_labels(pair_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The "scl" loss term: labels [B,H,W] at any resolution (the crop's) are first brought to pair_logits'
    [h,w] by `downsample_labels_nearest` (nearest, half-pixel centres, void stays void), then
    `spatial_correlation_loss(pair_logits [B,h,w,9], labels [B,h,w])`. Equal sizes pass the labels unchanged."""
    check_rank("pair_logits", pair_logits, 4, "[B,h,w,9]")
    _check_labels(labels)
    return spatial_correlation_loss(pair_logits, downsample_labels_nearest(labels, pair_logits.shape[1:3]))
