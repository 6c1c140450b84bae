"""The SEMEDA edge network g_phi (SEMEDA Sec. 3.2-3.4) as pure functions of a parameter tree.

g_phi maps a segmentation mask S [B,H,W,C] in [0,1] (one-hot truth or softmax prediction) to a 2-class edge
map through three convolutions, 16 -> 32 -> 2 channels (the paper), 3x3 kernels with zero `same` padding
(ours; the paper gives no kernel size), ReLU after layers 1-2 and softmax after layer 3. Its embeddings
psi_1 [B,H,W,16] and psi_2 [B,H,W,32] are the post-ReLU activations and psi_3 [B,H,W,2] the softmax edge map.

It lives in `losses/` because it defines the SEMEDA loss; it is plain jnp (no flax) so that the loss math
imports nothing but jax. The parameter tree has flax's `nn.Conv` layout ({'conv1': {'kernel' [k,k,Cin,Cout],
'bias' [Cout]}, ...}), so it checkpoints like any other flax tree.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from semeda_jax.edges import semantic_edges
from semeda_jax.losses.common import masked_mean, one_hot_labels, pixel_cross_entropy, valid_mask, void_out_of_range
from semeda_jax.validation import IGNORE_LABEL, InputError, check_labels, check_rank

EdgeNetParams = Mapping[str, Mapping[str, jax.Array]]
LAYER_NAMES = ("conv1", "conv2", "conv3")
PAPER_WIDTHS = (16, 32, 2)


def init_edge_net(key: jax.Array, num_classes: int, *, widths: Sequence[int] = PAPER_WIDTHS,
                  kernel_size: int = 3, dtype=jnp.float32) -> dict:
    """He-normal kernels and zero biases for g_phi on `num_classes` input channels."""
    if len(widths) != 3 or widths[-1] != 2:
        raise InputError(f"edge net widths: expected three layers ending in 2 channels, got {tuple(widths)}")
    params, in_channels = {}, num_classes
    for name, layer_key, out_channels in zip(LAYER_NAMES, jax.random.split(key, 3), widths):
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        params[name] = {"kernel": jax.nn.initializers.he_normal()(layer_key, shape, dtype),
                        "bias": jnp.zeros((out_channels,), dtype)}
        in_channels = out_channels
    return params


def _conv(x: jax.Array, layer: Mapping[str, jax.Array]) -> jax.Array:
    kernel = layer["kernel"].astype(x.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + layer["bias"].astype(x.dtype)


def _relu_layers(params: EdgeNetParams, masks: jax.Array, depth: int) -> list[jax.Array]:
    """masks [B,H,W,C] -> [psi_1, ..., psi_depth] of the ReLU layers (depth 1 or 2)."""
    embeddings, x = [], masks
    for name in LAYER_NAMES[:depth]:
        x = jax.nn.relu(_conv(x, params[name]))
        embeddings.append(x)
    return embeddings


def edge_net_forward(params: EdgeNetParams, masks: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """masks [B,H,W,C] -> (psi_1 [B,H,W,16], psi_2 [B,H,W,32], edge logits [B,H,W,2] before the softmax)."""
    psi_1, psi_2 = _relu_layers(params, masks, 2)
    return psi_1, psi_2, _conv(psi_2, params["conv3"])


def edge_net_embeddings(params: EdgeNetParams, masks: jax.Array, depth: int = 3) -> tuple[jax.Array, ...]:
    """masks [B,H,W,C] -> (psi_1, psi_2, psi_3): the layer embeddings SEMEDA matches (Eq. 5), or the first
    `depth` of them (a loss whose later lambdas are zero need not run the later layers)."""
    if depth not in (1, 2, 3):
        raise InputError(f"edge net depth: expected 1, 2 or 3 layers, got {depth!r}")
    embeddings = _relu_layers(params, masks, min(depth, 2))
    if depth == 3:
        edge_logits = _conv(embeddings[1], params["conv3"])  # softmax in float32 (or wider) at any map dtype
        edge_logits = edge_logits.astype(jnp.promote_types(edge_logits.dtype, jnp.float32))
        embeddings.append(jax.nn.softmax(edge_logits, axis=-1).astype(masks.dtype))
    return tuple(embeddings)


def check_edge_net_params(params: EdgeNetParams, num_classes: int) -> None:
    """Raise InputError unless `params` is a g_phi tree whose first layer takes `num_classes` channels."""
    missing = [name for name in LAYER_NAMES if name not in params]
    if missing:
        raise InputError(f"edge_net_params: missing layers {missing}; expected keys {list(LAYER_NAMES)}")
    in_channels = params["conv1"]["kernel"].shape[2]
    if in_channels != num_classes:
        raise InputError(f"edge_net_params: conv1 takes {in_channels} input channels but the masks have "
                         f"{num_classes} classes")


def edge_pretrain_loss(params: EdgeNetParams, labels: jax.Array, num_classes: int,
                       ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """Edge-net pre-training loss (SEMEDA Eq. 7): labels [B,H,W] int -> scalar.

    Mean over non-void pixels of the cross-entropy between g_phi(one-hot(labels)) and the ground-truth edge
    map E* of `semeda_jax.edges.semantic_edges` (255 a label of its own). Void pixels enter g_phi as the
    all-zero vector and are excluded from the mean.
    """
    check_rank("labels", labels, 3, "[B,H,W]")
    check_labels("labels", labels, num_classes, ignore_label)
    check_edge_net_params(params, num_classes)
    return _edge_pretrain_loss(params, labels, ignore_label=ignore_label)


@functools.partial(jax.jit, static_argnames=("ignore_label",))
def _edge_pretrain_loss(params, labels, *, ignore_label):
    num_classes = params["conv1"]["kernel"].shape[2]
    labels = void_out_of_range(labels, num_classes, ignore_label)
    masks = one_hot_labels(labels, num_classes, dtype=params["conv1"]["kernel"].dtype)
    _, _, logits = edge_net_forward(params, masks)
    edge_ce = pixel_cross_entropy(logits, semantic_edges(labels).astype(jnp.int32))
    return masked_mean(edge_ce, valid_mask(labels, ignore_label))
