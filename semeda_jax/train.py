"""Stage 2 of SEMEDA (Algorithm 1): train f_theta with the config's loss mix, g_phi frozen.

One pure `train_step(state, batch, frozen, dropout_key)` (`frozen`: the frozen networks the loss terms need,
{"edge_net": g_phi params} or {}), jitted once with explicit shardings (parallel.py: the global batch's rows on the
`data` mesh axis and its height on `spatial`, the state replicated or sharded) and the state (params, BN statistics,
optimiser state, step) donated; optionally in micro-batches (config.train.grad_accum_steps) and in bfloat16
(config.mixed_precision). Everything a step depends on is a function of (seed, step): the data stream of the step's
phase (phases.py; one phase without config.phases) starts at batch `step - phase start` (data/pipeline.py) and
dropout keys are fold_in(seed key, step), so a run resumed from the checkpoint of step k reproduces the
uninterrupted run bit for bit, inside any phase. The loop (TrainingRun) reads as its steps: restore_or_init,
run_phase (each step under jax.transfer_guard("disallow")), log_window, eval_and_save. On GPU and TPU the step is
compiled ahead of time and checked against the device memory before the first step (compiled_within). Checkpoints:
WORKDIR/checkpoints/{latest,best}, each recording its phase.
"""
from __future__ import annotations

import functools
import itertools
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh

from semeda_jax import evaluate, objective, parallel
from semeda_jax import phases as phases_lib
from semeda_jax.checkpointing import (MODEL_FIELDS_NOT_IN_TREE, Checkpoints, model_fingerprint, resume_changes,
                                      training_fingerprint)
from semeda_jax.models import build_segmentation_model, load_backbone_weights
from semeda_jax.optim import count_params, create_optimizer, learning_rate_schedule
from semeda_jax.preemption import Preempted, StopSignal
from semeda_jax.validation import ConfigError
from semeda_jax.validation import check_fields, check_positive_ints

CONFIG_FIELDS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "grad_accum_steps",
                 "log_logit_grad_norms", "init_checkpoint", "init_partial", "resume_changes")  # of config.train


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.train (stages.check_config): only CONFIG_FIELDS; its step counts and cadences integers >= 1."""
    check_fields(config.train, CONFIG_FIELDS, "config.train")
    check_positive_ints(config, [f"train.{name}" for name in ("steps", "log_every", "eval_every", "checkpoint_every",
                                                              "keep_checkpoints", "grad_accum_steps")])


class TrainState(train_state.TrainState):
    """flax TrainState plus the batch-norm running statistics."""
    batch_stats: Any = None


@flax.struct.dataclass
class ModelState:
    """What inference needs of a trained state: the model's apply, its parameters and BN statistics."""
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    params: Any = None
    batch_stats: Any = None


INIT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# RelationNet §IV-C-1: the module converges properly only when trained jointly with a pre-trained backbone
RELATION_FROM_SCRATCH = ("; the relation module trained with a random backbone cost 13.6 mIoU against the same "
                         "model without it, 2.5 with a pre-trained backbone (docs/results.md, relation study)")


def restore_model_state(config: ml_collections.ConfigDict, checkpoints: Checkpoints, mesh: Mesh, *,
                        step: int | None = None, best: bool = False) -> tuple[ModelState, dict]:
    """(ModelState, meta) of a checkpoint: params and batch_stats only, replicated on `mesh` (the optimiser
    state is not read)."""
    model = build_segmentation_model(config, config.dataset.num_classes)
    abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                              jax.ShapeDtypeStruct((1, *config.data.crop_size, 3), jnp.float32))
    replicated = parallel.replicated(mesh)
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                                    {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})})
    variables, meta = checkpoints.restore(target, step, best=best, partial=True)
    return ModelState(model.apply, variables["params"], variables["batch_stats"]), meta


def create_train_state(config: ml_collections.ConfigDict, model, key: jax.Array, mesh: Mesh,
                       schedule: optax.Schedule | None = None) -> TrainState:
    """Model variables (initialised on one crop of zeros) and optimiser state, created directly with their
    shardings on `mesh` (parallel.state_shardings; float32 whatever the compute dtype). `schedule`: the
    learning rate of the global step (default: warm-up + poly over config.train.steps).

    On CPU the init program is compiled without LLVM's optimisations (INIT_CPU_COMPILER_OPTIONS): it runs once,
    and compiling it optimised took longer than anything else at start-up (the demo's: 5.9 s -> 1.8 s)."""
    init = train_state_init(config, model, schedule)
    shardings = parallel.state_shardings(mesh, jax.eval_shape(init, key), config.parallel.param_sharding)
    options = INIT_CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else None
    return jax.jit(init, out_shardings=shardings).lower(key).compile(compiler_options=options)(key)


def train_state_init(config: ml_collections.ConfigDict, model,
                     schedule: optax.Schedule | None = None) -> Callable[[jax.Array], TrainState]:
    """key -> the initial TrainState (create_train_state's, unplaced; jax.eval_shape of it is the abstract
    state)."""
    schedule = learning_rate_schedule(config.optimizer, config.train.steps) if schedule is None else schedule

    def init(key):
        variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *config.data.crop_size, 3)),
                               train=False)
        tx = create_optimizer(config.optimizer, schedule, variables["params"],
                              freeze_batch_norm=config.model.bn_mode == "frozen")
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))

    return init


def load_pretrained_backbone(config: ml_collections.ConfigDict, state: TrainState,
                             log: Callable[[str], None]) -> TrainState:
    """The state with its backbone parameters and BN statistics from config.model.pretrained (a torchvision /
    timm state dict, models/pretrained.py), placed with the state's shardings; a warning when none is set and
    no config.train.init_checkpoint will replace the weights (with RelationNet's relation module: what that
    costs). Only the loaded subtrees (the backbone; VGG's fc6/fc7 too) move through the host; a file that does
    not fit is a one-line ConfigError."""
    path = config.model.get("pretrained")
    if not path:
        if not config.train.get("init_checkpoint"):
            log("[train] warning: config.model.pretrained is empty: the backbone starts from random weights"
                + (RELATION_FROM_SCRATCH if config.model.get("relation") else ""))
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

    def with_loaded(tree, loaded):  # the backbone, and what a VGG file also fills (fc6, fc7, class_branch)
        return {**tree, **{key: jax.tree.map(place, value, tree[key]) for key, value in loaded.items()
                           if value is not tree[key]}}

    return state.replace(params=with_loaded(state.params, variables["params"]),
                         batch_stats=with_loaded(state.batch_stats, variables["batch_stats"]))


def load_init_checkpoint(config: ml_collections.ConfigDict, mesh: Mesh, log: Callable[[str], None],
                         like: dict | None = None) -> dict:
    """{"params", "batch_stats"} of config.train.init_checkpoint (a WORKDIR/checkpoints folder or a run's
    workdir: its best checkpoint, else its latest); the parameter tree must match (one-line CheckpointError),
    unless config.train.init_partial: then the checkpoint's own model (rebuilt from the model fields its
    fingerprint records) is read, and `like` (this model's fresh {"params", "batch_stats"}) is returned with
    every array whose path and shape match one of the checkpoint's replaced (shared_variables)."""
    path = os.path.expanduser(config.train.init_checkpoint)
    root = path if os.path.isdir(os.path.join(path, "latest")) else os.path.join(path, "checkpoints")
    if not os.path.isdir(os.path.join(root, "latest")):
        raise ConfigError(f"config.train.init_checkpoint: {path} holds no checkpoints (expected "
                          f"{path}/latest/<step> or {path}/checkpoints/latest/<step>)")
    checkpoints = Checkpoints(root, best_metric="miou")
    best = checkpoints.best_step() is not None
    if not best and checkpoints.latest_step() is None:
        raise ConfigError(f"config.train.init_checkpoint: {root} holds no checkpoint")
    partial = bool(config.train.get("init_partial", False))
    source = checkpoint_model_config(config, checkpoints.read_meta(), root) if partial else config
    loaded, meta = restore_model_state(source, checkpoints, mesh, best=best)
    checkpoints.close()
    log(f"[train] initial weights: the {'best' if best else 'latest'} checkpoint of {root} (step {meta['step']})")
    variables = {"params": loaded.params, "batch_stats": loaded.batch_stats}
    return shared_variables(like, variables, root, log) if partial else variables


def checkpoint_model_config(config: ml_collections.ConfigDict, meta: dict, root: str) -> ml_collections.ConfigDict:
    """`config` with the model fields and class count of the checkpoint whose meta is `meta` (its fingerprint)."""
    fingerprint = meta.get("fingerprint")
    if not fingerprint:
        raise ConfigError(f"config.train.init_partial: {root} records no model fields (written by an older "
                          f"version); load it with init_partial=False and this model's config")
    source = ml_collections.ConfigDict(config.to_dict())
    model = {key: config.model[key] for key in MODEL_FIELDS_NOT_IN_TREE if key in config.model}
    model.update({key[len("model."):]: tuple(value) if isinstance(value, list) else value
                  for key, value in fingerprint.items() if key.startswith("model.")})
    source.model = ml_collections.ConfigDict(model)
    source.dataset.num_classes = fingerprint.get("dataset.num_classes", config.dataset.num_classes)
    return source


def shared_variables(like: dict, loaded: dict, root: str, log: Callable[[str], None]) -> dict:
    """`like` with each array whose path and shape match one of `loaded`'s replaced by it (both {"params",
    "batch_stats"} trees); logs how many were loaded and the top-level modules that keep fresh arrays."""
    fresh, checkpoint = traverse_util.flatten_dict(like), traverse_util.flatten_dict(loaded)
    shared = {key for key, value in fresh.items() if key in checkpoint and checkpoint[key].shape == value.shape}
    if not shared:
        raise ConfigError(f"config.train.init_partial: no array of {root} matches this model's paths and shapes")
    kept = sorted({"/".join(key[:2]) for key in fresh if key not in shared})
    log(f"[train] init_partial: {len(shared)} of {len(fresh)} arrays from the checkpoint; fresh: "
        f"{', '.join(kept) or 'none'}")
    return traverse_util.unflatten_dict({key: checkpoint[key] if key in shared else value
                                         for key, value in fresh.items()})


def with_variables(state: TrainState, variables: dict) -> TrainState:
    """The state with `variables` {"params", "batch_stats"} (host or device trees of the state's structure),
    placed with the state's shardings; step and optimiser state unchanged."""
    def placed(tree, like):
        return jax.device_put(tree, jax.tree_util.tree_map(lambda x: x.sharding, like))

    return state.replace(params=placed(variables["params"], state.params),
                         batch_stats=placed(variables["batch_stats"], state.batch_stats))


def micro_batches(x: jax.Array, k: int) -> jax.Array:
    """[B,...] -> [k, B/k, ...]; micro-batch i holds samples i, i+k, i+2k, ... so that each one is spread over
    all devices of the data-sharded batch (contiguous slices would sit on 1/k of the devices)."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def logit_grad_norms(loss_fn: objective.Objective, outputs: dict, labels: jax.Array, frozen) -> dict:
    """{"logit_grad_norm_<term>": L2 norm of d(weighted term) / d(outputs["logits"])} for the terms that read
    the logits (gradients w.r.t. the model's logits only, no backward pass through the network)."""
    outputs = jax.lax.stop_gradient(outputs)

    def term_of(name):
        return lambda logits: loss_fn.term(name, {**outputs, "logits": logits}, labels, frozen)

    return {f"logit_grad_norm_{name}": optax.tree.norm(jax.grad(term_of(name))(outputs["logits"]))
            for name in loss_fn.names if "logits" in loss_fn.reads(name)}


def compute_gradients(state: TrainState, batch: dict, frozen, *, loss_fn: objective.Objective, key: jax.Array,
                      accum_steps: int = 1, log_logit_grad_norms: bool = False) -> tuple[jax.Array, dict, Any, Any]:
    """Loss and gradients of `batch` in `accum_steps` micro-batches -> (loss, named metrics, batch_stats, grads)
    with named metrics {"loss_<term>": weighted term} (+ {"logit_grad_norm_<term>"} with log_logit_grad_norms).

    A scan over the micro-batches sums the gradients (one micro-batch's activations live at a time); loss,
    terms and gradients are means over micro-batches, i.e. those of the whole batch when every micro-batch has
    the same number of valid pixels. Trained BN normalises each micro-batch with its own statistics and updates
    the running averages once per micro-batch (with bn_group_size, groups are formed inside each micro-batch).
    The model's outputs are cast to float32 before the loss (mixed precision).
    Micro-batch i draws dropout from fold_in(key, i). Per-term logit gradient norms are means over micro-batches.
    """
    def loss_of(params, batch_stats, micro, index):
        outputs, updates = state.apply_fn({"params": params, "batch_stats": batch_stats}, micro["image"],
                                          train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.fold_in(key, index)})
        outputs = {name: value.astype(jnp.float32) for name, value in outputs.items()}
        total, terms = loss_fn(outputs, micro["label"], frozen)
        named = {f"loss_{name}": value for name, value in terms.items()}
        if log_logit_grad_norms:
            named.update(logit_grad_norms(loss_fn, outputs, micro["label"], frozen))
        return total, (named, updates["batch_stats"])

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


def train_step(state: TrainState, batch: dict, frozen, *, loss_fn: objective.Objective, dropout_key: jax.Array,
               schedule: optax.Schedule, accum_steps: int = 1,
               log_logit_grad_norms: bool = False) -> tuple[TrainState, dict]:
    """One SGD step on the global batch {"image" f32 [B,H,W,3], "label" i32 [B,H,W]} -> (new state, metrics)."""
    total, named, batch_stats, grads = compute_gradients(
        state, batch, frozen, loss_fn=loss_fn, key=jax.random.fold_in(dropout_key, state.step),
        accum_steps=accum_steps, log_logit_grad_norms=log_logit_grad_norms)
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step), **named}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def jit_train_step(config: ml_collections.ConfigDict, state: TrainState, mesh: Mesh, *, loss: str | None = None,
                   loss_key: str = "config.loss", schedule: optax.Schedule | None = None) -> Callable:
    """train_step of the mix `loss` (default config.loss) jitted with explicit shardings -> step(state, global
    batch, frozen, dropout_key) -> (state, metrics): state as it is (donated), the batch's image and label rows
    on `data` and height on `spatial` (parallel.batch_sharding), the frozen nets, the seed's dropout key and the
    metrics replicated. The key is an argument of the compiled program, not a
    constant folded into it, so runs that differ only in their seed share one compilation (and its cache entry).
    `schedule` (default warm-up + poly over config.train.steps) only gives the logged learning rate."""
    schedule = learning_rate_schedule(config.optimizer, config.train.steps) if schedule is None else schedule
    loss_fn = objective.Objective(config, loss, loss_key)

    def step(state, batch, frozen, dropout_key):
        return train_step(state, batch, frozen, loss_fn=loss_fn, dropout_key=dropout_key, schedule=schedule,
                          accum_steps=config.train.grad_accum_steps,
                          log_logit_grad_norms=config.train.log_logit_grad_norms)

    state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)
    replicated = parallel.replicated(mesh)
    batch_sharding = {"image": parallel.batch_sharding(mesh, 4), "label": parallel.batch_sharding(mesh, 3)}
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding, replicated, replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))


def device_memory_limit(mesh: Mesh) -> int | None:
    """The bytes a step may hold on each of `mesh`'s devices on GPU and TPU (the smallest
    memory_stats()["bytes_limit"] of this process's devices); None on CPU (no fixed memory) or where the backend
    reports no limit: then the fit check is skipped."""
    if jax.default_backend() not in ("gpu", "tpu"):
        return None
    limits = [(device.memory_stats() or {}).get("bytes_limit") for device in mesh.local_devices]
    return min(limits) if all(limits) else None


def compiled_within(step: Callable, args: tuple, limit: int, name: str) -> jax.stages.Compiled:
    """The jitted `step` compiled ahead of time for `args` (used for the steps, so nothing compiles twice); a
    ConfigError naming `name`, its memory per device (compile_report.memory_sizes' total, or XLA's out-of-memory
    figure) and `limit` when it needs more than `limit` bytes."""
    from semeda_jax import compile_report  # it imports this module

    try:
        compiled = compile_report.compile_lowered(lambda: step.lower(*args))
    except compile_report.DoesNotFit as error:  # XLA:TPU refuses what exceeds its HBM while compiling
        need = error.text
    else:
        total = compile_report.memory_sizes(compiled)["total"]
        if total <= limit:
            return compiled
        need = f"{total / compile_report.GIB:.4g} GiB per device"
    raise ConfigError(f"{name} does not fit: it needs {need}, the device has {limit / compile_report.GIB:.4g} "
                      f"GiB; lower the batch or crop size, or set config.train.grad_accum_steps or "
                      f"config.mixed_precision")


def train_batches(config: ml_collections.ConfigDict, reader, local_batch: int, process_index: int,
                  process_count: int, start_step: int = 0, seed: int | None = None):
    """Process `process_index`'s rows of the global training batches from `start_step` on (NumPy dicts), drawn
    with `seed` (default config.seed)."""
    from semeda_jax.data import pipeline  # TensorFlow: imported where data is read, not with the step

    return pipeline.train_dataset(
        reader, crop_size=config.data.crop_size, batch_size=local_batch, scale_range=config.data.scale_range,
        mean=config.data.mean, std=config.data.std, seed=config.seed if seed is None else seed,
        process_index=process_index,
        process_count=process_count, start_step=start_step, input_scale=config.data.input_scale).as_numpy_iterator()


def _progress_line(step: int, total: int, metrics: dict, images_per_second: float, eta_seconds: float) -> str:
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    return (f"[train] step {step}/{total}  loss {metrics['loss']:.4f} ({terms})  lr {metrics['learning_rate']:.2e}"
            f"  {images_per_second:.1f} img/s  ETA {eta_seconds / 60:.1f} min")


def phase_reader(readers: dict, name: str):
    """The training reader of phase `name` (its own split / annotation, else the config's training split)."""
    return readers.get(f"phase:{name}", readers["train"])


def _eval_line(name: str, step: int, results: dict) -> str:
    return (f"[eval{'' if name == 'periodic' else ':' + name}] step {step}: mIoU {results['miou']:.4f}  "
            f"mean F1 {results['mean_f1']:.4f}  E-measure {results['emeasure']:.4f}  "
            f"boundary IoU {results['boundary_iou']:.4f}  boundary F {results['boundary_fscore']:.4f}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, readers: dict, frozen,
                       log: Callable[[str], None] = print, stop_after: int | None = None,
                       init_variables: dict | None = None) -> tuple[TrainState, list]:
    """Train through the phases of `config` (phases.py; without phases: config.train.steps of config.loss),
    resuming from WORKDIR/checkpoints/latest, with the periodic evaluator every eval_every steps of a phase and
    the full one (config.eval.inference, when it differs) at the end.

    `readers`: {"train", "val"} plus {"phase:<name>"} for phases with their own data (stages.build_readers);
    `frozen`: the frozen networks of the loss terms ({"edge_net": g_phi} or {}).
    `init_variables` {"params", "batch_stats"} (else config.train.init_checkpoint's) replace the initial weights
    of a fresh run (step 0, fresh optimiser; a resumed run keeps its own).
    `stop_after=k` ends this run after step k with a checkpoint (an interruption the next run resumes from).
    SIGTERM ends it at the next step boundary (or the next batch of an evaluation) with a checkpoint of the step
    and raises preemption.Preempted.
    Only process 0 logs. Returns the state and the history of logged metrics [(step, {name: window mean})].
    """
    with StopSignal() as stop:  # from the start: a SIGTERM while data loads or the step compiles counts too
        run = TrainingRun(config, workdir, readers, log if jax.process_index() == 0 else (lambda line: None), stop)
        try:
            return run.train(frozen, stop_after, init_variables)
        finally:
            run.close()


class TrainingRun:
    """One call of train_and_evaluate: what its steps share (config, readers, mesh, phase plan, checkpoints,
    metric writer, the SIGTERM flag, the metrics window and history) and the steps themselves: restore_or_init,
    run_phase, log_window, eval_and_save."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, readers: dict,
                 log: Callable[[str], None], stop: StopSignal):
        self.config, self.workdir, self.readers, self.log, self.stop = config, workdir, readers, log, stop
        self.mesh = parallel.make_mesh(config)
        self.local_batch = parallel.local_batch_size(config.data.batch_size, self.mesh,
                                                     multiple_of=config.train.grad_accum_steps)
        self.plan = phases_lib.plan(config, {name: len(phase_reader(readers, name).ids)
                                             for name in phases_lib.phase_names(config)})
        self.total_steps, self.schedule = self.plan[-1].end, phases_lib.joined_schedule(self.plan)
        self.checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                                       best_metric="miou", fingerprint=model_fingerprint(config),
                                       training=training_fingerprint(config), accept=resume_changes(config),
                                       writer=True, log=log)
        self.writer = None
        self.step_fns = {}  # loss mix -> jitted step (phases with the same mix share one compilation)
        self.window, self.window_start, self.history = [], time.perf_counter(), []

    def train(self, frozen, stop_after: int | None, init_variables: dict | None) -> tuple[TrainState, list]:
        """The run: its first phase's data, restore_or_init, then run_phase for each phase up to `stop_after`."""
        start = self.checkpoints.latest_step() or 0
        last = self.total_steps if stop_after is None else min(stop_after, self.total_steps)
        phase = phases_lib.phase_at(self.plan, start + 1)
        batches = self.phase_batches(phase, start)
        # The first batch is read before anything compiles, so bad data (a label out of range) fails in seconds.
        batches = itertools.chain([next(batches)], batches)
        init_key, dropout_key = jax.random.split(jax.random.PRNGKey(self.config.seed))
        state, restored = self.restore_or_init(start, init_key, init_variables)
        if restored != start:  # latest/<start> was unreadable: resume from the checkpoint that was restored
            start, phase = restored, phases_lib.phase_at(self.plan, restored + 1)
            batches = self.phase_batches(phase, start)
        # Device to device: the frozen nets and the key are placed once, replicated, as the step takes them.
        frozen, dropout_key = jax.device_put((frozen, dropout_key), parallel.replicated(self.mesh))
        from clu import metric_writers  # imports TensorFlow: only here, so the step builds on machines without it

        self.writer = metric_writers.create_default_writer(self.workdir, just_logging=jax.process_index() > 0)
        self.window_start = time.perf_counter()
        step = start
        while step < last:
            if step > start:  # the next phase: its data, loss mix and cadence
                phase = phases_lib.phase_at(self.plan, step + 1)
                batches = self.phase_batches(phase, step)
                self.log(f"[train] phase {phase.name} from step {step + 1}")
            end = min(phase.end, last)
            state = self.run_phase(state, phase, batches, step, end, frozen, dropout_key)
            step = end
        return state, self.history

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        self.checkpoints.close()

    def phase_batches(self, phase: phases_lib.Phase, step: int):
        """This process's rows of `phase`'s global batches from global step `step` + 1 on."""
        return train_batches(self.config, phase_reader(self.readers, phase.name), self.local_batch,
                             jax.process_index(), jax.process_count(), step - phase.start,
                             seed=self.config.seed + phase.index)

    def restore_or_init(self, start: int, init_key: jax.Array,
                        init_variables: dict | None) -> tuple[TrainState, int]:
        """(state, its step): the state created with its shardings, then the checkpoint of step `start` (or,
        when that one is damaged, the newest good one Checkpoints.restore falls back to; its phase must be the
        plan's) or, on a fresh run (`start` 0), the pretrained backbone and the initial weights
        (`init_variables`, else config.train.init_checkpoint's)."""
        config, plan, log = self.config, self.plan, self.log
        model = build_segmentation_model(config, config.dataset.num_classes)
        state = create_train_state(config, model, init_key, self.mesh, self.schedule)
        if start:
            state, meta = self.checkpoints.restore(state, start)
            start = meta["step"]
            planned = phases_lib.phase_at(plan, start).name
            saved_phase = meta.get("phase", planned)
            if saved_phase != planned:
                raise ConfigError(f"config.phases: the checkpoint of step {start} was saved in phase "
                                  f"{saved_phase!r}, the config's plan puts that step in phase {planned!r}")
            log(f"[train] resumed from {self.checkpoints.root}/latest at step {int(state.step)} "
                f"(phase {phases_lib.phase_at(plan, start + 1).name})")
        else:
            backbone = config.model.get("backbone", "resnet")
            depth = str(config.model.depth)
            backbone = backbone if backbone.endswith(depth) else backbone + depth  # "resnet" + 101, "resnet38"
            log(f"[train] {config.model.name} ({backbone}, "
                f"width {config.model.base_width}): {count_params(state.params) / 1e6:.2f}M parameters; "
                f"loss {config.loss}; global batch {config.data.batch_size} on {self.mesh.shape[parallel.DATA_AXIS]} "
                f"data-parallel x {self.mesh.shape[parallel.SPATIAL_AXIS]} spatial devices, "
                f"{jax.process_count()} process(es)")
            state = load_pretrained_backbone(config, state, log)
            if init_variables is None and config.train.init_checkpoint:
                init_variables = load_init_checkpoint(config, self.mesh, log,
                                                      {"params": state.params, "batch_stats": state.batch_stats})
            if init_variables is not None:
                state = with_variables(state, init_variables)
                log("[train] initialised from given variables (params and BN statistics)")
        if len(plan) > 1:
            log("[train] phases: " + ", ".join(f"{p.name} (steps {p.start + 1}-{p.end}, loss {p.loss}, "
                                               f"split {p.split})" for p in plan))
        return state, start

    def step_fn(self, phase: phases_lib.Phase, state: TrainState, *args) -> Callable:
        """The step of `phase`'s loss mix, compiled once per mix: on GPU and TPU ahead of time for the first
        step's arguments (state, *args = batch, frozen, dropout_key) and checked against the device memory
        (compiled_within), so a step that does not fit fails before the first step; elsewhere jitted."""
        if phase.loss not in self.step_fns:
            key = f"config.phases.{phase.name}.loss" if len(self.plan) > 1 else "config.loss"
            step = jit_train_step(self.config, state, self.mesh, loss=phase.loss, loss_key=key,
                                  schedule=self.schedule)
            limit = device_memory_limit(self.mesh)
            if limit is not None:
                step = compiled_within(step, (state, *args), limit, f"the train step ({key} {phase.loss!r}, "
                                       f"config.data.batch_size {self.config.data.batch_size}, config.data.crop_size "
                                       f"{tuple(self.config.data.crop_size)})")
            self.step_fns[phase.loss] = step
        return self.step_fns[phase.loss]

    def run_phase(self, state: TrainState, phase: phases_lib.Phase, batches, first: int, last: int, frozen,
                  dropout_key: jax.Array) -> TrainState:
        """Global steps first+1 .. last of `phase` (`batches`: its stream from step first + 1), each batch placed,
        then stepped under jax.transfer_guard("disallow") (an implicit host <-> device copy fails); log_window
        every log_every steps, eval_and_save every eval_every steps of the phase and at the end of training, else a
        checkpoint every checkpoint_every steps and at `last`. SIGTERM: a checkpoint of the step, Preempted."""
        train_config = self.config.train
        for step in range(first + 1, last + 1):
            # The batch's placement is the step's one host -> device copy, made before the guard (jax counts the
            # multi-process placement as implicit); the jitted step must copy nothing else.
            batch = parallel.global_batch(next(batches), self.mesh)
            if step == first + 1:
                step_fn = self.step_fn(phase, state, batch, frozen, dropout_key)
            with jax.transfer_guard("disallow"):
                state, metrics = step_fn(state, batch, frozen, dropout_key)
            self.window.append(metrics)
            if step % train_config.log_every == 0 or step == self.total_steps:
                self.log_window(step)
            meta = {"step": step, "phase": phase.name}
            if (step - phase.start) % phase.eval_every == 0 or step == self.total_steps:
                self.eval_and_save(state, meta)
            elif step % train_config.checkpoint_every == 0 or step == last:
                self.checkpoints.save(step, state, meta)
            if self.stop.should_stop():  # at the last step too: the stages after train must not start
                self.checkpoint_and_stop(state, meta)
        return state

    def log_window(self, step: int) -> None:
        """The progress line and scalars of the steps since the last one: window means of the metrics (pulled
        once), images/s and ETA; a non-finite mean stops the run (its last checkpoint kept)."""
        means = {k: float(np.mean([m[k] for m in jax.device_get(self.window)])) for k in self.window[0]}
        self.checkpoints.check_finite(step, means)
        rate = len(self.window) / (time.perf_counter() - self.window_start)
        self.log(_progress_line(step, self.total_steps, means, rate * self.config.data.batch_size,
                                (self.total_steps - step) / rate))
        self.writer.write_scalars(step, means)
        self.history.append((step, means))
        self.window, self.window_start = [], time.perf_counter()

    def eval_and_save(self, state: TrainState, meta: dict) -> None:
        """The evaluators due at step meta["step"] on the val split (the periodic one; at the last step also the
        full one): log line and scalars, and the step's checkpoint with the periodic mIoU (offered as the best).
        A SIGTERM during them: the step's checkpoint (no mIoU), Preempted."""
        step = meta["step"]
        try:
            for name, (spec, every) in evaluate.evaluators(self.config).items():
                if every == 0 and step != self.total_steps:
                    continue
                results = evaluate.evaluate(state, self.readers["val"], self.config, spec=spec, stage="train")
                self.log(_eval_line(name, step, results))
                prefix = "val" if name == "periodic" else name
                self.writer.write_scalars(step, {f"{prefix}_{k}": results[k] for k in (
                    "miou", "mean_f1", "emeasure", "boundary_iou", "boundary_fscore")})
                if name == "periodic":
                    self.checkpoints.save(step, state, {**meta, "miou": results["miou"]},
                                          metrics={"miou": results["miou"]})
        except Preempted:
            self.checkpoint_and_stop(state, meta)
        self.window_start = time.perf_counter()  # keep evaluation out of the images/s figure

    def checkpoint_and_stop(self, state: TrainState, meta: dict) -> None:
        """The preemption stop: the checkpoint of step meta["step"] unless saved already, then Preempted."""
        if self.checkpoints.latest_step() != meta["step"]:
            self.checkpoints.save(meta["step"], state, meta)
        raise Preempted(meta["step"]) from None
