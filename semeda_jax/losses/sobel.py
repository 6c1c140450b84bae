"""Sobel-loss baseline (SEMEDA Sec. 4.1): the edge net replaced by fixed per-class Sobel filters.

L_Sobel = lambda_1 * sum_c || Sobel(S_hat^c) - Sobel(S*^c) ||_1 over the x and y responses, each class filtered
independently (depthwise), with the same void handling and reductions as the SEMEDA loss. The paper's best
coefficient is lambda_1 = 4. The map is edge-replicated before filtering, so the image border gives no
response (as the ground-truth edge rule, where the border is not an edge).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from semeda_jax.losses.common import check_l1_reduction, masked_l1, void_neutral_masks
from semeda_jax.validation import IGNORE_LABEL, check_logits_labels

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_responses(masks: jax.Array) -> jax.Array:
    """masks [B,H,W,C] -> [B,H,W,2C]: channel 2c is the Sobel x response of class c, 2c+1 its y response.

    Correlation (not flipped convolution) with SOBEL_X and its transpose; the sign convention does not matter
    for an L1 match.
    """
    num_channels = masks.shape[-1]
    sobel_x = jnp.asarray(SOBEL_X, masks.dtype)
    kernels = jnp.stack([sobel_x, sobel_x.T], axis=-1)  # [3,3,2]
    # Depthwise HWIO kernel [3,3,1,2C]: group c (input channel c) owns outputs 2c (x) and 2c+1 (y).
    kernel = jnp.tile(kernels[:, :, None, :], (1, 1, 1, num_channels))
    padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return jax.lax.conv_general_dilated(padded, kernel, window_strides=(1, 1), padding="VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=num_channels)


def sobel_loss(logits: jax.Array, labels: jax.Array, *, coefficient: float = 4.0,
               reduction: str = "mean_pixels_sum_channels", ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """logits [B,h,w,C], labels [B,H,W] -> scalar coefficient * L1(Sobel(S_hat), Sobel(S*))."""
    check_logits_labels(logits, labels, ignore_label)
    check_l1_reduction(reduction)
    return coefficient * _sobel_l1(logits, labels, reduction=reduction, ignore_label=ignore_label)


@functools.partial(jax.jit, static_argnames=("reduction", "ignore_label"))
def _sobel_l1(logits, labels, *, reduction, ignore_label):
    prediction, truth, valid = void_neutral_masks(logits, labels, logits.shape[-1], ignore_label)
    responses = sobel_responses(jnp.concatenate([prediction, truth], axis=0))
    batch = labels.shape[0]
    return masked_l1(responses[:batch], responses[batch:], valid, reduction)
