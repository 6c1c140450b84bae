"""Stage 2 of SEMEDA (Algorithm 1): train f_theta with the config's loss mix, g_phi frozen.

One pure, jitted `train_step(state, batch, edge_net_params)`; the state (params, BN statistics, optimiser
state, step) is donated. Everything a step depends on is a function of (seed, step): the data stream starts at
batch `step` (data/pipeline.py) and dropout keys are fold_in(seed key, step), so a run resumed from the checkpoint
of step k reproduces the uninterrupted run bit for bit. Checkpoints: WORKDIR/checkpoints/{latest,best}.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers
from flax.training import train_state

from semeda_jax import evaluate, objective
from semeda_jax.checkpointing import Checkpoints
from semeda_jax.data import pipeline
from semeda_jax.models import build_model
from semeda_jax.optim import count_params, create_optimizer, learning_rate_schedule
from semeda_jax.validation import ConfigError


class TrainState(train_state.TrainState):
    """flax TrainState plus the batch-norm running statistics."""
    batch_stats: Any = None


def build_segmentation_model(config: ml_collections.ConfigDict, num_classes: int):
    """The flax module named by config.model (every other field of config.model is a constructor argument)."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    try:
        return build_model(config.model.name, num_classes=num_classes, **kwargs)
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None


def create_train_state(config: ml_collections.ConfigDict, model, key: jax.Array, image_shape) -> TrainState:
    """Initialise the model on zeros of `image_shape` [B,H,W,3] and attach the optimiser."""
    variables = jax.jit(functools.partial(model.init, train=False))(
        {"params": key, "dropout": key}, jnp.zeros(image_shape, jnp.float32))
    tx = create_optimizer(config.optimizer, config.train.steps, variables["params"],
                          freeze_batch_norm=config.model.bn_mode == "frozen")
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))


def train_step(state: TrainState, batch: dict, edge_net_params, *, loss_fn: Callable, dropout_key: jax.Array,
               schedule: optax.Schedule) -> tuple[TrainState, dict]:
    """One SGD step on batch {"image" f32 [B,H,W,3], "label" i32 [B,H,W]} -> (new state, scalar metrics)."""
    step_key = jax.random.fold_in(dropout_key, state.step)

    def compute_loss(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                         train=True, mutable=["batch_stats"], rngs={"dropout": step_key})
        total, terms = loss_fn(logits, batch["label"], edge_net_params)
        return total, (terms, updates["batch_stats"])

    (total, (terms, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
               **{f"loss_{name}": value for name, value in terms.items()}}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def _progress_line(step: int, total: int, metrics: dict, images_per_second: float, eta_seconds: float) -> str:
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    return (f"[train] step {step}/{total}  loss {metrics['loss']:.4f} ({terms})  lr {metrics['learning_rate']:.2e}"
            f"  {images_per_second:.1f} img/s  ETA {eta_seconds / 60:.1f} min")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, readers: dict, edge_net_params,
                       log: Callable[[str], None] = print, stop_after: int | None = None) -> tuple[TrainState, list]:
    """Train for config.train.steps (resuming from WORKDIR/checkpoints/latest), evaluating periodically.

    `stop_after=k` ends this run after step k with a checkpoint (an interruption the next run resumes from).
    Returns the state and the history of logged metrics [(step, {name: mean over the log window})].
    """
    num_classes = config.dataset.num_classes
    model = build_segmentation_model(config, num_classes)
    key = jax.random.PRNGKey(config.seed)
    init_key, dropout_key = jax.random.split(key)
    batch_size, (crop_h, crop_w) = config.data.batch_size, config.data.crop_size
    state = create_train_state(config, model, init_key, (batch_size, crop_h, crop_w, 3))
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                              best_metric="miou")
    if checkpoints.latest_step() is not None:
        state, _ = checkpoints.restore(state)
        log(f"[train] resumed from {checkpoints.root}/latest at step {int(state.step)}")
    else:
        log(f"[train] {config.model.name} (ResNet-{config.model.depth}, width {config.model.base_width}): "
            f"{count_params(state.params) / 1e6:.2f}M parameters; loss {config.loss}")
    start_step = int(state.step)
    batches = pipeline.train_dataset(
        readers["train"], crop_size=config.data.crop_size, batch_size=batch_size,
        scale_range=config.data.scale_range, mean=config.data.mean, std=config.data.std, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=start_step).as_numpy_iterator()
    schedule = learning_rate_schedule(config.optimizer, config.train.steps)
    step_fn = jax.jit(functools.partial(train_step, loss_fn=objective.build_loss_fn(config),
                                        dropout_key=dropout_key, schedule=schedule), donate_argnums=(0,))
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    window_start, window_metrics, history = time.perf_counter(), [], []
    last_step = config.train.steps if stop_after is None else min(stop_after, config.train.steps)
    for step in range(start_step + 1, last_step + 1):
        state, metrics = step_fn(state, next(batches), edge_net_params)
        window_metrics.append(metrics)
        if step % config.train.log_every == 0 or step == config.train.steps:
            mean_metrics = {k: float(np.mean([m[k] for m in jax.device_get(window_metrics)]))
                            for k in window_metrics[0]}
            elapsed = time.perf_counter() - window_start
            rate = len(window_metrics) / elapsed
            log(_progress_line(step, config.train.steps, mean_metrics, rate * batch_size,
                               (config.train.steps - step) / rate))
            writer.write_scalars(step, mean_metrics)
            history.append((step, mean_metrics))
            window_start, window_metrics = time.perf_counter(), []
        if step % config.train.eval_every == 0 or step == config.train.steps:
            results = evaluate.evaluate(state, readers["val"], config)
            log(f"[eval] step {step}: mIoU {results['miou']:.4f}  mean F1 {results['mean_f1']:.4f}  "
                f"E-measure {results['emeasure']:.4f}")
            writer.write_scalars(step, {f"val_{k}": results[k] for k in ("miou", "mean_f1", "emeasure")})
            checkpoints.save(step, state, {"step": step, "miou": results["miou"]},
                             metrics={"miou": results["miou"]})
            window_start = time.perf_counter()  # keep evaluation out of the images/s figure
        elif step % config.train.checkpoint_every == 0 or step == last_step:
            checkpoints.save(step, state, {"step": step})
    writer.flush()
    checkpoints.close()
    return state, history
