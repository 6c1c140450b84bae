"""Stage 2 of SEMEDA (Algorithm 1): train f_theta with the config's loss mix, g_phi frozen.

One pure `train_step(state, batch, frozen)` (`frozen`: the frozen networks the loss terms need, {"edge_net":
g_phi params} or {}), jitted once with explicit shardings (parallel.py: the
global batch on the `data` mesh axis, the state replicated or sharded) and the state (params, BN statistics,
optimiser state, step) donated; optionally in micro-batches (config.train.grad_accum_steps) and in bfloat16
(config.mixed_precision). Everything a step depends on is a function of (seed, step): the data stream of the
step's phase (phases.py; one phase without config.phases) starts at batch `step - phase start` (data/pipeline.py)
and dropout keys are fold_in(seed key, step), so a run resumed from the checkpoint of step k reproduces the
uninterrupted run bit for bit, inside any phase. Checkpoints: WORKDIR/checkpoints/{latest,best}, each recording
its phase.
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
from flax.training import train_state
from jax.sharding import Mesh

from semeda_jax import evaluate, objective, parallel
from semeda_jax import phases as phases_lib
from semeda_jax.checkpointing import Checkpoints, model_fingerprint
from semeda_jax.models import build_segmentation_model, load_backbone_weights
from semeda_jax.optim import count_params, create_optimizer, learning_rate_schedule
from semeda_jax.preemption import Preempted, StopSignal
from semeda_jax.validation import ConfigError
from semeda_jax.validation import check_fields, check_positive_ints

CONFIG_FIELDS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "grad_accum_steps",
                 "log_logit_grad_norms", "init_checkpoint")  # of config.train


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.train (stages.check_config): only CONFIG_FIELDS; its step counts and cadences integers >= 1."""
    check_fields(config.train, CONFIG_FIELDS, "config.train")
    check_positive_ints(config, [f"train.{name}" for name in ("steps", "log_every", "eval_every", "checkpoint_every",
                                                              "keep_checkpoints", "grad_accum_steps")])


# jax.transfer_guard level of each training step (the batch's placement and the jitted step); the train-loop
# tests set "disallow", so an implicit host <-> device copy in the step fails them.
STEP_TRANSFER_GUARD = "allow"


class TrainState(train_state.TrainState):
    """flax TrainState plus the batch-norm running statistics."""
    batch_stats: Any = None


@flax.struct.dataclass
class ModelState:
    """What inference needs of a trained state: the model's apply, its parameters and BN statistics."""
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    params: Any = None
    batch_stats: Any = None


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
    learning rate of the global step (default: warm-up + poly over config.train.steps)."""
    schedule = learning_rate_schedule(config.optimizer, config.train.steps) if schedule is None else schedule

    def init(key):
        variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *config.data.crop_size, 3)),
                               train=False)
        tx = create_optimizer(config.optimizer, schedule, variables["params"],
                              freeze_batch_norm=config.model.bn_mode == "frozen")
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))

    shardings = parallel.state_shardings(mesh, jax.eval_shape(init, key), config.parallel.param_sharding)
    return jax.jit(init, out_shardings=shardings)(key)


def load_pretrained_backbone(config: ml_collections.ConfigDict, state: TrainState,
                             log: Callable[[str], None]) -> TrainState:
    """The state with its backbone parameters and BN statistics from config.model.pretrained (a torchvision /
    timm state dict, models/pretrained.py), placed with the state's shardings; a warning when none is set.
    Only the loaded subtrees (the backbone; VGG's fc6/fc7 too) move through the host; a file that does not fit
    is a one-line ConfigError."""
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

    def with_loaded(tree, loaded):  # the backbone, and what a VGG file also fills (fc6, fc7, class_branch)
        return {**tree, **{key: jax.tree.map(place, value, tree[key]) for key, value in loaded.items()
                           if value is not tree[key]}}

    return state.replace(params=with_loaded(state.params, variables["params"]),
                         batch_stats=with_loaded(state.batch_stats, variables["batch_stats"]))


def load_init_checkpoint(config: ml_collections.ConfigDict, mesh: Mesh, log: Callable[[str], None]) -> dict:
    """{"params", "batch_stats"} of config.train.init_checkpoint (a WORKDIR/checkpoints folder or a run's
    workdir: its best checkpoint, else its latest); the parameter tree must match (one-line CheckpointError)."""
    path = os.path.expanduser(config.train.init_checkpoint)
    root = path if os.path.isdir(os.path.join(path, "latest")) else os.path.join(path, "checkpoints")
    if not os.path.isdir(os.path.join(root, "latest")):
        raise ConfigError(f"config.train.init_checkpoint: {path} holds no checkpoints (expected "
                          f"{path}/latest/<step> or {path}/checkpoints/latest/<step>)")
    checkpoints = Checkpoints(root, best_metric="miou")
    best = checkpoints.best_step() is not None
    if not best and checkpoints.latest_step() is None:
        raise ConfigError(f"config.train.init_checkpoint: {root} holds no checkpoint")
    loaded, meta = restore_model_state(config, checkpoints, mesh, best=best)
    checkpoints.close()
    log(f"[train] initial weights: the {'best' if best else 'latest'} checkpoint of {root} (step {meta['step']})")
    return {"params": loaded.params, "batch_stats": loaded.batch_stats}


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


class BoundStep:
    """A jitted function with its trailing arguments bound (the train step's dropout key): called and lowered
    like the jitted function without them. The key stays an argument of the compiled program instead of a
    constant folded into it, so runs that differ only in their seed share one compilation (and its cache entry).
    """

    def __init__(self, jitted: Callable, *bound):
        self.jitted, self.bound = jitted, bound

    def __call__(self, *args):
        return self.jitted(*args, *self.bound)

    def lower(self, *args):
        return self.jitted.lower(*args, *self.bound)


def jit_train_step(config: ml_collections.ConfigDict, state: TrainState, mesh: Mesh, dropout_key: jax.Array, *,
                   loss: str | None = None, loss_key: str = "config.loss", schedule: optax.Schedule | None = None):
    """train_step of the mix `loss` (default config.loss) jitted with explicit shardings: state as it is
    (donated), batch on `data`, the frozen nets, the dropout key and the metrics replicated; `schedule` (default
    warm-up + poly over config.train.steps) only gives the logged learning rate. -> BoundStep f(state, global
    batch, frozen) -> (state, metrics); its `lower(...).compile()` takes the dropout key as a 4th argument."""
    schedule = learning_rate_schedule(config.optimizer, config.train.steps) if schedule is None else schedule
    loss_fn = objective.build_loss_fn(config, loss, loss_key)

    def step(state, batch, frozen, key):
        return train_step(state, batch, frozen, loss_fn=loss_fn, dropout_key=key, schedule=schedule,
                          accum_steps=config.train.grad_accum_steps,
                          log_logit_grad_norms=config.train.log_logit_grad_norms)

    state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)
    replicated = parallel.replicated(mesh)
    jitted = jax.jit(step, in_shardings=(state_sharding, parallel.batch_sharding(mesh), replicated, replicated),
                     out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    return BoundStep(jitted, jax.device_put(jax.device_get(dropout_key), replicated))


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
    SIGTERM ends it at the next step boundary with a checkpoint and raises preemption.Preempted.
    Only process 0 logs. Returns the state and the history of logged metrics [(step, {name: window mean})].
    """
    with StopSignal() as stop:  # from the start: a SIGTERM while data loads or the step compiles counts too
        return _train_and_evaluate(config, workdir, readers, frozen, log, stop_after, init_variables, stop)


def phase_reader(readers: dict, name: str):
    """The training reader of phase `name` (its own split / annotation, else the config's training split)."""
    return readers.get(f"phase:{name}", readers["train"])


def _eval_line(name: str, step: int, results: dict) -> str:
    return (f"[eval{'' if name == 'periodic' else ':' + name}] step {step}: mIoU {results['miou']:.4f}  "
            f"mean F1 {results['mean_f1']:.4f}  E-measure {results['emeasure']:.4f}")


def _train_and_evaluate(config, workdir, readers, frozen, log, stop_after, init_variables, stop: StopSignal):
    """train_and_evaluate's body, run with the SIGTERM flag `stop` installed."""
    log = log if jax.process_index() == 0 else (lambda line: None)
    mesh = parallel.make_mesh(config)
    batch_size = config.data.batch_size
    if config.train.grad_accum_steps < 1:
        raise ConfigError(f"config.train.grad_accum_steps: must be >= 1, got {config.train.grad_accum_steps}")
    local_batch = parallel.local_batch_size(batch_size, mesh, multiple_of=config.train.grad_accum_steps)
    plan = phases_lib.plan(config, {name: len(phase_reader(readers, name).ids)
                                    for name in phases_lib.phase_names(config)})
    total_steps, schedule = plan[-1].end, phases_lib.joined_schedule(plan)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                              best_metric="miou", fingerprint=model_fingerprint(config))
    start_step = checkpoints.latest_step() or 0
    phase = phases_lib.phase_at(plan, start_step + 1)

    def phase_batches(phase, step):  # the phase's stream from global step `step` + 1 on
        return train_batches(config, phase_reader(readers, phase.name), local_batch, jax.process_index(),
                             jax.process_count(), step - phase.start, seed=config.seed + phase.index)

    batches = phase_batches(phase, start_step)
    # The first batch is read before anything compiles, so bad data (a label out of range) fails in seconds.
    batches = itertools.chain([next(batches)], batches)
    model = build_segmentation_model(config, config.dataset.num_classes)
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_train_state(config, model, init_key, mesh, schedule)
    if start_step:
        state, meta = checkpoints.restore(state, start_step)
        saved_phase = meta.get("phase", phases_lib.phase_at(plan, start_step).name)
        if saved_phase != phases_lib.phase_at(plan, start_step).name:
            raise ConfigError(f"config.phases: the checkpoint of step {start_step} was saved in phase "
                              f"{saved_phase!r}, the config's plan puts that step in phase "
                              f"{phases_lib.phase_at(plan, start_step).name!r}")
        log(f"[train] resumed from {checkpoints.root}/latest at step {int(state.step)} (phase {phase.name})")
    else:
        backbone = config.model.get("backbone", "resnet")
        depth = str(config.model.depth)
        backbone = backbone if backbone.endswith(depth) else backbone + depth  # "resnet" + 101, "resnet38"
        log(f"[train] {config.model.name} ({backbone}, "
            f"width {config.model.base_width}): {count_params(state.params) / 1e6:.2f}M parameters; "
            f"loss {config.loss}; global batch {batch_size} on {mesh.shape[parallel.DATA_AXIS]} data-parallel "
            f"devices, {jax.process_count()} process(es)")
        state = load_pretrained_backbone(config, state, log)
        if init_variables is None and config.train.init_checkpoint:
            init_variables = load_init_checkpoint(config, mesh, log)
        if init_variables is not None:
            state = with_variables(state, init_variables)
            log("[train] initialised from given variables (params and BN statistics)")
    if len(plan) > 1:
        log("[train] phases: " + ", ".join(f"{p.name} (steps {p.start + 1}-{p.end}, loss {p.loss}, split {p.split})"
                                           for p in plan))
    step_fns = {}  # loss mix -> jitted step (phases with the same mix share one compilation)

    def step_fn_of(phase):
        if phase.loss not in step_fns:
            key = f"config.phases.{phase.name}.loss" if len(plan) > 1 else "config.loss"
            step_fns[phase.loss] = jit_train_step(config, state, mesh, dropout_key, loss=phase.loss, loss_key=key,
                                                  schedule=schedule)
        return step_fns[phase.loss]

    step_fn = step_fn_of(phase)
    frozen = jax.device_put(jax.device_get(frozen), parallel.replicated(mesh))
    from clu import metric_writers  # imports TensorFlow: only here, so the step builds on machines without it

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    window_start, window_metrics, history = time.perf_counter(), [], []
    last_step = total_steps if stop_after is None else min(stop_after, total_steps)
    try:
        for step in range(start_step + 1, last_step + 1):
            if step > phase.end:  # the next phase: its data, loss mix and cadence
                phase = phases_lib.phase_at(plan, step)
                batches, step_fn = phase_batches(phase, step - 1), step_fn_of(phase)
                log(f"[train] phase {phase.name} from step {step}")
            with jax.transfer_guard(STEP_TRANSFER_GUARD):  # the tests set "disallow": no hidden copies
                state, metrics = step_fn(state, parallel.global_batch(next(batches), mesh), frozen)
            window_metrics.append(metrics)
            if step % config.train.log_every == 0 or step == total_steps:
                mean_metrics = {k: float(np.mean([m[k] for m in jax.device_get(window_metrics)]))
                                for k in window_metrics[0]}
                checkpoints.check_finite(step, mean_metrics)  # a diverged run stops here, its last checkpoint kept
                elapsed = time.perf_counter() - window_start
                rate = len(window_metrics) / elapsed
                log(_progress_line(step, total_steps, mean_metrics, rate * batch_size,
                                   (total_steps - step) / rate))
                writer.write_scalars(step, mean_metrics)
                history.append((step, mean_metrics))
                window_start, window_metrics = time.perf_counter(), []
            meta = {"step": step, "phase": phase.name}
            if (step - phase.start) % phase.eval_every == 0 or step == total_steps:
                for name, (spec, every) in evaluate.evaluators(config).items():
                    if every == 0 and step != total_steps:
                        continue
                    results = evaluate.evaluate(state, readers["val"], config, spec=spec)
                    log(_eval_line(name, step, results))
                    prefix = "val" if name == "periodic" else name
                    writer.write_scalars(step, {f"{prefix}_{k}": results[k] for k in ("miou", "mean_f1", "emeasure")})
                    if name == "periodic":
                        checkpoints.save(step, state, {**meta, "miou": results["miou"]},
                                         metrics={"miou": results["miou"]})
                window_start = time.perf_counter()  # keep evaluation out of the images/s figure
            elif step % config.train.checkpoint_every == 0 or step == last_step or step == phase.end:
                checkpoints.save(step, state, meta)
            if stop.should_stop():  # at the last step too: the stages after train must not start
                if checkpoints.latest_step() != step:
                    checkpoints.save(step, state, meta)
                raise Preempted(step)
    finally:
        writer.flush()
        checkpoints.close()
    return state, history
