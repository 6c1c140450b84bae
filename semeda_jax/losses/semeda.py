"""SEMEDA loss (SEMEDA Eqs. 4-6): match the prediction and the truth in the embeddings of a frozen edge net.

L_SEMEDA = sum_l lambda_l * L_l,   L_l = || psi_l(S_hat) - psi_l(S*) ||_1,
with S_hat = softmax(logits resized to the label resolution), S* = one-hot(labels) and psi_l the layer-l
embedding of g_phi (`losses.edge_net`). The paper's best lambdas are (2, 4, 0) on VOC and (4, 2, 0) on
Cityscapes (Table 1).

Scale-normalised SEMEDA (`normalize=True`; an extension of this project, not in the paper, off by default):
each layer's L1 is divided by the batch mean |psi_l(S*)| (under the same reduction), i.e.
    L_l = sum |psi_l(S_hat) - psi_l(S*)| / sum |psi_l(S*)|   (sums over the valid pixels and channels of the batch),
a dimensionless ratio independent of the reduction, of the embedding widths and of the scale of g_phi's
activations, so that lambdas carry over between edge nets and datasets. The denominator depends on the labels
and the frozen g_phi only (no gradient flows through it).

Void: at void pixels both branches receive stop_gradient(S_hat), so the two embeddings see identical values
there, void pixels are left out of the reduction, and no gradient reaches the logits of a void pixel (not
even through the 3x3 receptive fields of its valid neighbours). g_phi's parameters are wrapped in
stop_gradient: the gradient flows through the frozen net into the logits only.

`compute_dtype` (objective.py passes bfloat16 under config.mixed_precision): the dtype of the passes at the
labels' resolution, i.e. the two masks and g_phi's convolutions and embeddings. The softmax and the L1 sums stay
float32; in bfloat16 the maps, the term's largest tensors, take half the bytes, at a relative error of ~2e-4
in the value and ~3% (L2) in the logits' gradient (tests/test_semeda.py bounds both against the float64
reference; docs/benchmarks.md, "Bytes per step").
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from semeda_jax.losses.common import check_l1_reduction, masked_l1, void_neutral_masks
from semeda_jax.losses.edge_net import EdgeNetParams, check_edge_net_params, edge_net_embeddings
from semeda_jax.validation import IGNORE_LABEL, InputError, check_logits_labels

VOC_LAMBDAS = (2.0, 4.0, 0.0)
# Floor of the normalising mean |psi_l(S*)| (a batch whose truth embedding is all zero, e.g. no valid pixel).
_MIN_SCALE = 1e-6


def semeda_layer_losses(logits: jax.Array, labels: jax.Array, edge_net_params: EdgeNetParams, *,
                        reduction: str = "mean_pixels_sum_channels", normalize: bool = False,
                        ignore_label: int = IGNORE_LABEL, depth: int = 3, compute_dtype=None) -> jax.Array:
    """logits [B,h,w,C], labels [B,H,W], g_phi params -> [depth] float: L_1 ... L_depth of Eq. 5 (unweighted;
    depth 3, all of them, by default). `compute_dtype`: of the full-resolution maps (module doc; None: the
    logits', at least float32).

    `reduction` is one of `losses.common.L1_REDUCTIONS`; the default, mean over valid pixels and sum over
    channels, keeps the paper's PPCE:SEMEDA ratio. `normalize`: the scale-normalised extension (module doc).
    """
    num_classes = check_logits_labels(logits, labels, ignore_label)
    check_edge_net_params(edge_net_params, num_classes)
    check_l1_reduction(reduction)
    if not isinstance(normalize, bool):
        raise InputError(f"normalize: expected True or False, got {normalize!r}")
    dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)
    return _semeda_layer_losses(logits, labels, edge_net_params, reduction=reduction, normalize=normalize,
                                ignore_label=ignore_label, depth=depth, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("reduction", "normalize", "ignore_label", "depth", "dtype"))
def _semeda_layer_losses(logits, labels, edge_net_params, *, reduction, normalize, ignore_label, depth, dtype):
    num_classes = logits.shape[-1]
    prediction, truth, valid = void_neutral_masks(logits, labels, num_classes, ignore_label, dtype)
    frozen_params = jax.tree_util.tree_map(jax.lax.stop_gradient, edge_net_params)
    # Two passes of g_phi, not one over both stacked: the truth's embeddings need no backward pass (a stacked
    # pass would run the convolutions' input gradients over the truth half too; 1.9x the cost on CPU).
    predicted = edge_net_embeddings(frozen_params, prediction, depth)
    true = edge_net_embeddings(frozen_params, truth, depth)
    layers = jnp.stack([masked_l1(psi, psi_true, valid, reduction) for psi, psi_true in zip(predicted, true)])
    if not normalize:
        return layers
    scales = jnp.stack([masked_l1(psi_true, 0.0, valid, reduction) for psi_true in true])
    return layers / jnp.maximum(scales, _MIN_SCALE)



def semeda_loss(logits: jax.Array, labels: jax.Array, edge_net_params: EdgeNetParams, *,
                lambdas: Sequence[float] = VOC_LAMBDAS, reduction: str = "mean_pixels_sum_channels",
                normalize: bool = False, ignore_label: int = IGNORE_LABEL, compute_dtype=None) -> jax.Array:
    """logits [B,h,w,C], labels [B,H,W], g_phi params -> scalar sum_l lambda_l L_l (Eq. 4); `normalize`: the
    scale-normalised extension, `compute_dtype` the full-resolution maps' dtype (module doc)."""
    if len(lambdas) != 3:
        raise InputError(f"lambdas: expected one weight per edge-net layer (3), got {tuple(lambdas)}")
    depth = _layers_needed(lambdas)
    layer_losses = semeda_layer_losses(logits, labels, edge_net_params, reduction=reduction, normalize=normalize,
                                       ignore_label=ignore_label, depth=depth, compute_dtype=compute_dtype)
    return jnp.dot(jnp.asarray(lambdas[:depth], layer_losses.dtype), layer_losses)


def _layers_needed(lambdas: Sequence[float]) -> int:
    """How many g_phi layers the weighted sum needs: up to the last non-zero lambda (at least 1); all 3 when the
    lambdas are traced values, whose zeros are unknown at trace time."""
    try:
        weights = [float(weight) for weight in lambdas]
    except (TypeError, jax.errors.ConcretizationTypeError):
        return 3
    return max([index + 1 for index, weight in enumerate(weights) if weight != 0.0], default=1)
