"""Stage 2 of SEMEDA (Algorithm 1): train f_theta with the config's loss mix, g_phi frozen.

One pure `train_step(state, batch, edge_net_params)`, jitted once with explicit shardings (parallel.py: the
global batch on the `data` mesh axis, the state replicated or sharded) and the state (params, BN statistics,
optimiser state, step) donated; optionally in micro-batches (config.train.grad_accum_steps) and in bfloat16
(config.mixed_precision). Everything a step depends on is a function of (seed, step): the data stream starts at
batch `step` (data/pipeline.py) and dropout keys are fold_in(seed key, step), so a run resumed from the checkpoint
of step k reproduces the uninterrupted run bit for bit. Checkpoints: WORKDIR/checkpoints/{latest,best}.
"""
from __future__ import annotations

import functools
import itertools
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
from jax.sharding import Mesh

from semeda_jax import evaluate, objective, parallel
from semeda_jax.checkpointing import Checkpoints
from semeda_jax.data import pipeline
from semeda_jax.models import build_model, load_backbone_weights
from semeda_jax.optim import count_params, create_optimizer, learning_rate_schedule
from semeda_jax.preemption import Preempted, StopSignal
from semeda_jax.validation import ConfigError


class TrainState(train_state.TrainState):
    """flax TrainState plus the batch-norm running statistics."""
    batch_stats: Any = None


def build_segmentation_model(config: ml_collections.ConfigDict, num_classes: int):
    """The flax module named by config.model (every other field but `pretrained` is a constructor argument);
    config.mixed_precision switches the compute dtype to bfloat16 (parameters stay float32)."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "pretrained")}
    if config.mixed_precision:
        kwargs["dtype"] = jnp.bfloat16
    try:
        return build_model(config.model.name, num_classes=num_classes, **kwargs)
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None


def create_train_state(config: ml_collections.ConfigDict, model, key: jax.Array, mesh: Mesh) -> TrainState:
    """Model variables (initialised on one crop of zeros) and optimiser state, created directly with their
    shardings on `mesh` (parallel.state_shardings; float32 whatever the compute dtype)."""
    def init(key):
        variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *config.data.crop_size, 3)),
                               train=False)
        tx = create_optimizer(config.optimizer, config.train.steps, variables["params"],
                              freeze_batch_norm=config.model.bn_mode == "frozen")
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))

    shardings = parallel.state_shardings(mesh, jax.eval_shape(init, key), config.parallel.param_sharding)
    return jax.jit(init, out_shardings=shardings)(key)


def load_pretrained_backbone(config: ml_collections.ConfigDict, state: TrainState,
                             log: Callable[[str], None]) -> TrainState:
    """The state with its backbone parameters and BN statistics from config.model.pretrained (a torchvision /
    timm state dict, models/pretrained.py), placed with the state's shardings; a warning when none is set.
    Only the backbone subtrees move through the host; a file that does not fit is a one-line ConfigError."""
    path = config.model.get("pretrained")
    if not path:
        log("[train] warning: config.model.pretrained is empty: the backbone starts from random weights")
        return state
    try:
        variables = load_backbone_weights({"params": state.params, "batch_stats": state.batch_stats},
                                          os.path.expanduser(path), backbone=config.model.get("backbone", "resnet"),
                                          log=log)
    except (OSError, ValueError) as error:
        raise ConfigError(f"config.model.pretrained: {error}") from None

    def place(value, like):
        value = np.asarray(value, like.dtype)
        return jax.make_array_from_callback(like.shape, like.sharding, lambda index: value[index])

    def with_backbone(tree, loaded):
        return {**tree, "backbone": jax.tree.map(place, loaded["backbone"], tree["backbone"])}

    return state.replace(params=with_backbone(state.params, variables["params"]),
                         batch_stats=with_backbone(state.batch_stats, variables["batch_stats"]))


def micro_batches(x: jax.Array, k: int) -> jax.Array:
    """[B,...] -> [k, B/k, ...]; micro-batch i holds samples i, i+k, i+2k, ... so that each one is spread over
    all devices of the data-sharded batch (contiguous slices would sit on 1/k of the devices)."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def compute_gradients(state: TrainState, batch: dict, edge_net_params, *, loss_fn: Callable, key: jax.Array,
                      accum_steps: int = 1) -> tuple[jax.Array, dict, Any, Any]:
    """Loss and gradients of `batch` in `accum_steps` micro-batches -> (loss, {term: value}, batch_stats, grads).

    A scan over the micro-batches sums the gradients (one micro-batch's activations live at a time); loss,
    terms and gradients are means over micro-batches, i.e. those of the whole batch when every micro-batch has
    the same number of valid pixels. Trained BN normalises each micro-batch with its own statistics and updates
    the running averages once per micro-batch (with bn_group_size, groups are formed inside each micro-batch).
    Logits are cast to float32 before the loss (mixed precision).
    Micro-batch i draws dropout from fold_in(key, i).
    """
    def loss_of(params, batch_stats, micro, index):
        logits, updates = state.apply_fn({"params": params, "batch_stats": batch_stats}, micro["image"],
                                         train=True, mutable=["batch_stats"],
                                         rngs={"dropout": jax.random.fold_in(key, index)})
        total, terms = loss_fn(logits.astype(jnp.float32), micro["label"], edge_net_params)
        return total, (terms, updates["batch_stats"])

    def accumulate(carry, inputs):
        grad_sum, batch_stats = carry
        (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, batch_stats, *inputs)
        return (jax.tree_util.tree_map(jnp.add, grad_sum, grads), batch_stats), (total, terms)

    if accum_steps == 1:  # no scan: XLA:CPU runs a loop body's convolutions several times slower
        (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, state.batch_stats, batch, 0)
        return total, terms, batch_stats, grads
    inputs = ({k: micro_batches(v, accum_steps) for k, v in batch.items()}, jnp.arange(accum_steps))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    (grad_sum, batch_stats), (totals, terms) = jax.lax.scan(accumulate, (zeros, state.batch_stats), inputs)
    grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grad_sum)
    return totals.mean(), {name: value.mean() for name, value in terms.items()}, batch_stats, grads


def train_step(state: TrainState, batch: dict, edge_net_params, *, loss_fn: Callable, dropout_key: jax.Array,
               schedule: optax.Schedule, accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One SGD step on the global batch {"image" f32 [B,H,W,3], "label" i32 [B,H,W]} -> (new state, metrics)."""
    total, terms, batch_stats, grads = compute_gradients(
        state, batch, edge_net_params, loss_fn=loss_fn, key=jax.random.fold_in(dropout_key, state.step),
        accum_steps=accum_steps)
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
               **{f"loss_{name}": value for name, value in terms.items()}}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def jit_train_step(config: ml_collections.ConfigDict, state: TrainState, mesh: Mesh, dropout_key: jax.Array):
    """train_step jitted with explicit shardings: state as it is (donated), batch on `data`, g_phi and the
    metrics replicated. -> f(state, global batch, edge_net_params) -> (state, metrics)."""
    step = functools.partial(train_step, loss_fn=objective.build_loss_fn(config), dropout_key=dropout_key,
                             schedule=learning_rate_schedule(config.optimizer, config.train.steps),
                             accum_steps=config.train.grad_accum_steps)
    state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)
    return jax.jit(step, in_shardings=(state_sharding, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
                   out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=(0,))


def train_batches(config: ml_collections.ConfigDict, reader, local_batch: int, process_index: int,
                  process_count: int, start_step: int = 0):
    """Process `process_index`'s rows of the global training batches from `start_step` on (NumPy dicts)."""
    return pipeline.train_dataset(
        reader, crop_size=config.data.crop_size, batch_size=local_batch, scale_range=config.data.scale_range,
        mean=config.data.mean, std=config.data.std, seed=config.seed, process_index=process_index,
        process_count=process_count, start_step=start_step, input_scale=config.data.input_scale).as_numpy_iterator()


def _progress_line(step: int, total: int, metrics: dict, images_per_second: float, eta_seconds: float) -> str:
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    return (f"[train] step {step}/{total}  loss {metrics['loss']:.4f} ({terms})  lr {metrics['learning_rate']:.2e}"
            f"  {images_per_second:.1f} img/s  ETA {eta_seconds / 60:.1f} min")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, readers: dict, edge_net_params,
                       log: Callable[[str], None] = print, stop_after: int | None = None) -> tuple[TrainState, list]:
    """Train for config.train.steps (resuming from WORKDIR/checkpoints/latest), evaluating periodically.

    `stop_after=k` ends this run after step k with a checkpoint (an interruption the next run resumes from).
    SIGTERM ends it at the next step boundary with a checkpoint and raises preemption.Preempted.
    Only process 0 logs. Returns the state and the history of logged metrics [(step, {name: window mean})].
    """
    with StopSignal() as stop:  # from the start: a SIGTERM while data loads or the step compiles counts too
        return _train_and_evaluate(config, workdir, readers, edge_net_params, log, stop_after, stop)


def _train_and_evaluate(config, workdir, readers, edge_net_params, log, stop_after, stop: StopSignal):
    """train_and_evaluate's body, run with the SIGTERM flag `stop` installed."""
    log = log if jax.process_index() == 0 else (lambda line: None)
    mesh = parallel.make_mesh(config)
    batch_size = config.data.batch_size
    if config.train.grad_accum_steps < 1:
        raise ConfigError(f"config.train.grad_accum_steps: must be >= 1, got {config.train.grad_accum_steps}")
    local_batch = parallel.local_batch_size(batch_size, mesh, multiple_of=config.train.grad_accum_steps)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                              best_metric="miou")
    start_step = checkpoints.latest_step() or 0
    batches = train_batches(config, readers["train"], local_batch, jax.process_index(), jax.process_count(),
                            start_step)
    # The first batch is read before anything compiles, so bad data (a label out of range) fails in seconds.
    batches = itertools.chain([next(batches)], batches)
    model = build_segmentation_model(config, config.dataset.num_classes)
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_train_state(config, model, init_key, mesh)
    if start_step:
        state, _ = checkpoints.restore(state, start_step)
        log(f"[train] resumed from {checkpoints.root}/latest at step {int(state.step)}")
    else:
        backbone = config.model.get("backbone", "resnet")
        log(f"[train] {config.model.name} ({backbone}{config.model.depth}, "
            f"width {config.model.base_width}): {count_params(state.params) / 1e6:.2f}M parameters; "
            f"loss {config.loss}; global batch {batch_size} on {mesh.shape[parallel.DATA_AXIS]} data-parallel "
            f"devices, {jax.process_count()} process(es)")
        state = load_pretrained_backbone(config, state, log)
    step_fn = jit_train_step(config, state, mesh, dropout_key)
    edge_net_params = jax.device_put(jax.device_get(edge_net_params), parallel.replicated(mesh))
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    window_start, window_metrics, history = time.perf_counter(), [], []
    last_step = config.train.steps if stop_after is None else min(stop_after, config.train.steps)
    try:
        for step in range(start_step + 1, last_step + 1):
            state, metrics = step_fn(state, parallel.global_batch(next(batches), mesh), edge_net_params)
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
            if stop.should_stop():  # at the last step too: the stages after train must not start
                if checkpoints.latest_step() != step:
                    checkpoints.save(step, state, {"step": step})
                raise Preempted(step)
    finally:
        writer.flush()
        checkpoints.close()
    return state, history
