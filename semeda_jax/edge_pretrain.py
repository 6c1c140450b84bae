"""Stage 1 of SEMEDA (Algorithm 1): pre-train the edge net g_phi on ground-truth masks only.

g_phi learns to map one-hot masks to their semantic edge maps (Eq. 7). The paper gives no optimiser or
schedule for this stage; we use Adam with a cosine decay (a few hundred steps suffice: the task is easy) and
report the edge F-score (pixel-exact, void excluded) on validation masks.
"""
from __future__ import annotations

import functools
import time
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semeda_jax.edges import semantic_edges
from semeda_jax.losses.edge_net import edge_net_forward, edge_pretrain_loss, init_edge_net
from semeda_jax.losses.common import one_hot_labels
from semeda_jax.metrics import confusion_matrix, per_class_f1
from semeda_jax.validation import check_fields, check_positive_ints

CONFIG_FIELDS = ("checkpoint", "steps", "batch_size", "learning_rate")  # of config.edge_net


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.edge_net (stages.check_config): only CONFIG_FIELDS; steps and batch size integers >= 1."""
    check_fields(config.edge_net, CONFIG_FIELDS, "config.edge_net")
    check_positive_ints(config, ["edge_net.steps", "edge_net.batch_size"])


def edge_predictions(params, labels: jax.Array, num_classes: int) -> jax.Array:
    """labels [B,H,W] -> int32 [B,H,W]: g_phi's argmax edge decision on the one-hot masks."""
    masks = one_hot_labels(labels, num_classes, dtype=params["conv1"]["kernel"].dtype)
    return jnp.argmax(edge_net_forward(params, masks)[2], axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=2)
def _edge_confusion(params, labels: jax.Array, num_classes: int) -> jax.Array:
    """labels [B,H,W] -> int32 [2,2] confusion of the true edge map (void excluded) vs g_phi's edge decision."""
    truth = jnp.where(labels == 255, 255, semantic_edges(labels).astype(jnp.int32))
    return confusion_matrix(truth, edge_predictions(params, labels, num_classes), 2)


def edge_f_score(params, label_batches: Iterable[np.ndarray], num_classes: int) -> dict:
    """Edge precision, recall and F-score of g_phi over label batches [B,H,W] (void excluded), counted batch by
    batch on the device so that a whole validation split (1449 VOC masks) never sits in memory at once."""
    cm = sum(np.asarray(_edge_confusion(params, jnp.asarray(labels), num_classes), np.float64)
             for labels in label_batches)
    true_positive = cm[1, 1]
    precision = true_positive / max(cm[:, 1].sum(), 1.0)
    recall = true_positive / max(cm[1, :].sum(), 1.0)
    return {"edge_precision": float(precision), "edge_recall": float(recall),
            "edge_f_score": float(per_class_f1(cm)[1])}


def pretrain_edge_net(label_batches: Iterator[np.ndarray], val_batches: Iterable[np.ndarray], *,
                      num_classes: int, steps: int, learning_rate: float, seed: int, log_every: int = 50,
                      log=print) -> tuple[dict, dict]:
    """Train g_phi for `steps` on label batches [B,H,W] int -> (params, edge scores on the val label batches)."""
    params = init_edge_net(jax.random.PRNGKey(seed), num_classes)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, labels):
        loss, grads = jax.value_and_grad(edge_pretrain_loss)(params, labels, num_classes)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    for step in range(1, steps + 1):
        params, opt_state, loss = update(params, opt_state, jnp.asarray(next(label_batches)))
        if step % log_every == 0 or step == steps:
            elapsed = time.perf_counter() - start
            log(f"[edge_pretrain] step {step}/{steps}  loss {float(loss):.4f}  "
                f"{step / elapsed:.1f} steps/s  ETA {(steps - step) * elapsed / step:.0f}s")
    scores = edge_f_score(params, val_batches, num_classes)
    log(f"[edge_pretrain] val edge F-score {scores['edge_f_score']:.4f} "
        f"(precision {scores['edge_precision']:.4f}, recall {scores['edge_recall']:.4f})")
    return params, scores
