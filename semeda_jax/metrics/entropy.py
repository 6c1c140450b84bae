"""Per-pixel predictive entropy, for uncertainty maps (DESIGN.md "Evaluation outputs": entropy maps)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.validation import InputError, check_rank


def prediction_entropy(logits, normalize: bool = False) -> jax.Array:
    """logits [B,H,W,C] -> entropy [B,H,W] of softmax(logits), in nats (in [0, log C]).

    Computed as -sum p log p with log p = log_softmax(logits), so it stays finite for large logits and for
    -inf logits (a class with p = 0 adds 0). With `normalize`, divided by log C to lie in [0, 1].
    """
    check_rank("logits", logits, 4, "[B,H,W,C]")
    num_classes = int(np.shape(logits)[-1])
    if num_classes < 2:
        raise InputError(f"logits: expected at least 2 classes in the last axis, got {num_classes}")
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, dtype=jnp.result_type(logits, float)), axis=-1)
    probs = jnp.exp(log_probs)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
    return entropy / np.log(num_classes) if normalize else entropy
