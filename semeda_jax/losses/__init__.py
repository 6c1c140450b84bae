"""Pure jnp losses: logits [B,h,w,C] float, labels [B,H,W] int (void 255) -> scalar.

`from semeda_jax.losses import semeda_loss` needs no model: the edge net g_phi is a pure function here too.
The names configs use for them are registered in semeda_jax/objective.py (TERMS).
"""
from semeda_jax.losses.bal import boundary_aware_loss, boundary_kernel, boundary_weight_map, class_boundary_map
from semeda_jax.losses.ce import cross_entropy
from semeda_jax.losses.common import pixel_cross_entropy, resize_to_labels
from semeda_jax.losses.edge_net import edge_net_embeddings, edge_net_forward, edge_pretrain_loss, init_edge_net
from semeda_jax.losses.multilabel import multilabel_loss, present_classes
from semeda_jax.losses.ohem import ohem_cross_entropy, ohem_kept_mask
from semeda_jax.losses.scl import (downsample_labels_nearest, pair_targets, spatial_correlation_loss,
                                   spatial_correlation_loss_from_labels)
from semeda_jax.losses.semeda import VOC_LAMBDAS, semeda_layer_losses, semeda_loss
from semeda_jax.losses.sobel import sobel_loss, sobel_responses
# The loss zoo: overlap (Dice, generalised Dice, Tversky), focal, Lovasz-softmax, boundary (surface) losses.
from semeda_jax.losses.dice import dice_loss, generalized_dice_loss, tversky_loss
from semeda_jax.losses.focal import focal_loss
from semeda_jax.losses.lovasz import lovasz_extension, lovasz_softmax_loss
from semeda_jax.losses.surface import signed_distance_maps, surface_loss

__all__ = [
    "VOC_LAMBDAS", "boundary_aware_loss", "boundary_kernel", "boundary_weight_map", "class_boundary_map",
    "cross_entropy", "downsample_labels_nearest", "edge_net_embeddings", "edge_net_forward", "edge_pretrain_loss",
    "init_edge_net", "multilabel_loss", "ohem_cross_entropy", "ohem_kept_mask",
    "pair_targets", "pixel_cross_entropy", "present_classes", "resize_to_labels", "semeda_layer_losses",
    "semeda_loss", "sobel_loss", "sobel_responses", "spatial_correlation_loss", "spatial_correlation_loss_from_labels",
]
__all__ += [  # the loss zoo
    "dice_loss", "focal_loss", "generalized_dice_loss", "lovasz_extension", "lovasz_softmax_loss",
    "signed_distance_maps", "surface_loss", "tversky_loss",
]
