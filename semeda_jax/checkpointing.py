"""Orbax checkpoints in the workdir: the latest N for resuming, and the best one by a metric.

Layout under a checkpoint root (e.g. `WORKDIR/checkpoints`):
    latest/<step>/   the last `keep` saves; a run resumes from the newest of them
    best/<step>/     a copy of the latest/<step> with the highest `best_metric` (e.g. val mIoU)
    best.json        {"step", "metric", "value"} of best/<step>, replaced atomically once the copy is complete
Each save holds the array tree `state` (StandardSave, works with sharded jax.Arrays on any number of hosts) and
a JSON `meta` dict (step, metrics, the fingerprints, anything small). Saves are atomic: orbax writes to a
temporary folder and renames it when complete, and best/ is copied to a temporary folder then renamed, so a
kill mid-save leaves the previous checkpoint as the latest and the previous best recorded.

Guarantees on top of orbax:
  * a state with a non-finite floating-point value is never saved (NonFiniteError), so a diverged run cannot
    rotate its last finite checkpoint out of `latest` or become `best`; `check_finite` stops a run whose
    logged loss or gradient norm is non-finite, naming the step, the terms and the checkpoint that survives;
  * saves are synchronous (`save` returns once the checkpoint is on disk); a failed write (e.g. a full disk) raises CheckpointError
    naming the folder and the bytes free, after removing that step's partial folder;
  * with `fingerprint` (model_fingerprint(config)), every save records it and `restore` refuses a checkpoint
    whose fingerprint differs, naming the differing config fields (CheckpointError), before touching arrays;
    with `training` (training_fingerprint(config): what a resumed run must share), likewise, except the fields
    listed in `accept` (config.train.resume_changes), which are logged; a checkpoint that records no training
    fingerprint (written by an older version) resumes with one warning;
  * a damaged (unreadable array file) or incomplete (missing part) checkpoint is skipped with one warning line
    and the newest readable one (latest or best) is restored instead (a writer moves the skipped folder to
    ROOT/unreadable/<kind>-<step>, as it saves that step again); none readable: CheckpointError;
  * a writer (`writer=True`: the training run) removes the temporary folders a killed save left and, if the
    kill came between a save and its copy to best/, completes the copy (latest/<step> metas record the metric).

Multi-host: every process constructs the managers and calls save/restore with the same step (they are
collective); orbax writes each array shard once (replicated arrays and `meta` from process 0), so the root must
be a folder all processes see (a shared file system, or a bucket mounted there). Restoring into a target's
shardings re-shards, so a checkpoint restores on any number of processes/devices.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import shutil
import sys
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from semeda_jax import objective
from semeda_jax.validation import ConfigError
from semeda_jax.workdir import free_bytes

TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a folder still being written (orbax's, and our best copy)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or does not belong to this config. The message names the folder."""


class NonFiniteError(CheckpointError):
    """Training produced a non-finite loss, gradient norm or state (a diverged run)."""


# model.* fields that leave the parameter tree as it is: the initial weights file, the parameter-free CRF layer
# switch and rematerialisation (same parameters, values and gradients; a resume may switch it to fit memory)
MODEL_FIELDS_NOT_IN_TREE = ("pretrained", "crf_layer", "remat")


def model_fingerprint(config) -> dict:
    """The config fields that fix the model's parameter tree: every `model.*` field but MODEL_FIELDS_NOT_IN_TREE,
    and `dataset.num_classes` -> {"model.depth": 18, ...} (JSON values)."""
    fields = {f"model.{k}": v for k, v in config.model.to_dict().items() if k not in MODEL_FIELDS_NOT_IN_TREE}
    fields["dataset.num_classes"] = config.dataset.num_classes
    return _json_values(fields)


def _json_values(fields: Mapping) -> dict:
    """JSON-ready fields, unset ones (None: the code's default) left out, so a field added later with an unset
    default leaves older checkpoints' fingerprints equal."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(fields.items()) if v is not None}


def _flat(prefix: str, section) -> dict:
    """config section -> {"prefix.key": value}, nested sections flattened ("phases.fine.epochs")."""
    flat = {}
    for key, value in section.items():
        if hasattr(value, "items"):
            flat.update(_flat(f"{prefix}.{key}", value))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


# Fields that change no training step: where the data lies, and what only evaluation reads.
_NOT_TRAINING = ("dataset.root", "dataset.sbd_root", "dataset.cache_dir", "dataset.val_split",
                 "data.eval_pad_size", "data.eval_batch_size")


def _data_fields(config) -> dict:
    """The dataset and data fields a training stream depends on."""
    fields = {**_flat("dataset", config.dataset), **_flat("data", config.data)}
    return {k: v for k, v in fields.items() if k not in _NOT_TRAINING}


def training_fingerprint(config) -> dict:
    """The config fields besides the model's (model_fingerprint) that change what training does: seed, dataset
    and data (not its location nor the eval-only fields), optimizer, loss and the sections of the terms in use,
    phases, train.steps and grad_accum_steps, mixed_precision, model.crf_layer, the pixel sampler when one is set,
    and edge_net when a term needs g_phi. Cadence (log/eval/checkpoint every, keep_checkpoints) and eval.* are
    not in it."""
    terms = {name for key, mix in objective.all_mixes(config).items() for name in objective.parse_mix(mix, key)}
    fields = {"seed": config.seed, "loss": config.loss, "mixed_precision": config.mixed_precision,
              "model.crf_layer": config.model.get("crf_layer", False), "train.steps": config.train.steps,
              "train.grad_accum_steps": config.train.grad_accum_steps, **_data_fields(config),
              **_flat("optimizer", config.optimizer), **_flat("phases", config.get("phases") or {})}
    for term in sorted(terms):
        fields.update(_flat(f"losses.{term}", config.losses.get(term) or {}))
    if objective.needs_edge_net(config):
        fields.update(_flat("edge_net", config.edge_net))
    sampler = (config.get("sampler") or {}).get("name")
    if sampler:
        fields.update({"sampler.name": sampler, **_flat(f"sampler.{sampler}", config.sampler[sampler])})
    model = model_fingerprint(config)
    return _json_values({k: v for k, v in fields.items() if k not in model})


def edge_net_fingerprint(config) -> dict:
    """The config fields that fix g_phi's parameter tree: {"dataset.num_classes": C}."""
    return {"dataset.num_classes": config.dataset.num_classes}


def edge_net_training_fingerprint(config) -> dict:
    """The config fields g_phi's pre-training depends on: seed, its data stream, edge_net.{steps, batch_size,
    learning_rate}."""
    fields = {"seed": config.seed, **_data_fields(config),
              **{f"edge_net.{k}": config.edge_net[k] for k in ("steps", "batch_size", "learning_rate")}}
    return _json_values({k: v for k, v in fields.items() if k != "dataset.num_classes"})


def resume_changes(config) -> tuple[str, ...]:
    """The field names of config.train.resume_changes ("data.batch_size,optimizer.learning_rate"): training
    fields a resume accepts to differ from the checkpoint's (Checkpoints checks that they are such fields)."""
    return tuple(n.strip() for n in str(config.train.get("resume_changes") or "").split(",") if n.strip())


def fingerprint_differences(saved: Mapping, current: Mapping) -> list[str]:
    """["model.depth: checkpoint 18, config 34", ...] for every field whose value differs (or is missing)."""
    return [f"{k}: checkpoint {saved.get(k, '(absent)')!r}, config {current.get(k, '(absent)')!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k, "(absent)") != current.get(k, "(absent)")]


@jax.jit
def _non_finite_leaves(leaves: list) -> jax.Array:
    """[float arrays] -> int32 number of arrays holding a NaN or an infinity."""
    return sum((~jnp.all(jnp.isfinite(x))).astype(jnp.int32) for x in leaves)


def count_non_finite(tree: Any) -> tuple[int, int]:
    """(arrays of `tree` holding a non-finite value, floating-point arrays of `tree`)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return (int(_non_finite_leaves(leaves)) if leaves else 0), len(leaves)


def _no_space(error: BaseException) -> bool:
    """Whether `error` or an error it was raised from is ENOSPC (orbax wraps the OSError of a failed write)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def _quiet_orbax_threads():
    """Silence the absl logger while a save runs: orbax's writer threads log each failure with its traceback
    before the save raises it, and `save` reports that failure in one line itself."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Unreadable(Exception):
    """A checkpoint folder that cannot be read: its message says how (incomplete, damaged)."""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _key_name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _leaf_shapes(tree) -> dict[str, tuple]:
    """{"params/conv1/kernel": shape} of the array leaves of a state or of orbax's metadata tree of one."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}


def _is_closed_loop(exc_type, exc) -> bool:
    return exc_type is RuntimeError and str(exc) == "Event loop is closed"


@contextlib.contextmanager
def _settled_on_failure():
    """On an exception inside, from then on drop the "Event loop is closed" errors of orbax's other reads: a
    failed read closes its event loop while tensorstore still completes the other reads of that checkpoint, and
    each completion, whenever it comes (seconds later on a loaded machine), reports that error from its own
    thread. Every other error still reaches the hooks in place."""
    try:
        yield
    except Exception:
        except_hook, unraisable_hook = sys.excepthook, sys.unraisablehook
        if not getattr(except_hook, "drops_closed_loop", False):
            def excepthook(exc_type, exc, tb):
                if not _is_closed_loop(exc_type, exc):
                    except_hook(exc_type, exc, tb)

            def unraisablehook(unraisable):
                if not _is_closed_loop(unraisable.exc_type, unraisable.exc_value):
                    unraisable_hook(unraisable)

            excepthook.drops_closed_loop = True
            sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
        raise


def _sync(name: str) -> None:
    """Wait until every process gets here (process 0 wrote files the others read next)."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name)


class Checkpoints:
    """Latest-N and best-by-metric orbax checkpoints under `root` (see the module docstring); `log` takes the
    warnings (a damaged checkpoint skipped, unchecked or accepted training changes)."""

    def __init__(self, root: str, *, keep: int = 3, best_metric: str | None = None,
                 fingerprint: Mapping | None = None, training: Mapping | None = None, accept: Iterable[str] = (),
                 writer: bool = False, log: Callable[[str], None] = print):
        self.root = os.path.abspath(root)
        self.best_metric = best_metric
        self.fingerprint = dict(fingerprint) if fingerprint else None
        self.training, self.accept = (dict(training) if training else None), tuple(accept)
        unknown = [name for name in self.accept if name not in (self.training or {})]
        if unknown:
            raise ConfigError(f"config.train.resume_changes: {unknown} are not fields a resume checks; valid: "
                              f"{sorted(self.training or {})}")
        self.log, self.writer = log, writer
        self.restored: str | None = None  # the folder the last restore read
        self._failed = False
        self._unchecked_warned = False
        self._latest = ocp.CheckpointManager(os.path.join(self.root, "latest"), options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))
        if writer:
            if jax.process_index() == 0:
                self._recover()
            _sync("checkpoints_recovered")

    # -- where things are

    def _folder(self, kind: str, step: int) -> str:
        return os.path.join(self.root, kind, str(step))

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def _best_record(self) -> dict | None:
        """{"step", "metric", "value"} of best/: best.json's, else (an older version's best/, or best.json
        lost) the best/ folder whose meta has the highest metric."""
        if not self.best_metric:
            return None
        try:
            with open(os.path.join(self.root, "best.json")) as f:
                record = json.load(f)
            if os.path.isdir(self._folder("best", record["step"])):
                return record
        except (OSError, ValueError, KeyError):
            pass
        found = [{"step": step, "metric": self.best_metric,
                  "value": self._read_meta(self._folder("best", step)).get(self.best_metric, -math.inf)}
                 for step in self._steps_in("best")]
        return max(found, key=lambda record: (record["value"], record["step"]), default=None)

    def best_step(self) -> int | None:
        record = self._best_record()
        return None if record is None else record["step"]

    def _steps_in(self, kind: str) -> list[int]:
        folder = os.path.join(self.root, kind)
        return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []

    def read_meta(self, step: int | None = None) -> dict:
        """The meta of latest/<step> (default newest); {} when there is none or it cannot be read."""
        step = self.latest_step() if step is None else step
        return {} if step is None else self._read_meta(self._folder("latest", step))

    @staticmethod
    def _read_meta(path: str) -> dict:
        try:
            with open(os.path.join(path, "meta", "metadata")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # -- writing

    def _recover(self) -> None:
        """A writer's start-up: remove folders a killed save left half-written, and make best/ hold the best of
        the latest/ steps whose meta records the metric (a kill can fall between a save and its copy)."""
        for partial in glob.glob(os.path.join(self.root, "*", f"*{TMP_MARK}*")):
            shutil.rmtree(partial, ignore_errors=True)
            self.log(f"[checkpoint] removed {partial}, left unfinished by a stopped run")
        if not self.best_metric:
            return
        for step in self._latest.all_steps():
            value = self._read_meta(self._folder("latest", step)).get(self.best_metric)
            if value is not None:
                self._offer_best(step, float(value))
        record = self._best_record()
        for step in self._steps_in("best"):  # a kill after best.json was written, before the old copy went
            if record is None or step != record["step"]:
                shutil.rmtree(self._folder("best", step), ignore_errors=True)

    def _offer_best(self, step: int, value: float) -> None:
        """Copy latest/<step> to best/<step> and record it in best.json if `value` beats the recorded best
        (process 0; the others wait in `save`)."""
        record = self._best_record()
        if record is not None and (record["step"] == step or value <= record["value"]):
            return
        target = self._folder("best", step)
        if not os.path.isdir(target):
            partial = target + TMP_MARK
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(self._folder("latest", step), partial)
            os.replace(partial, target)
        written = os.path.join(self.root, f"best.json{TMP_MARK}")
        with open(written, "w") as f:
            json.dump({"step": step, "metric": self.best_metric, "value": value}, f)
        os.replace(written, os.path.join(self.root, "best.json"))
        for old in self._steps_in("best"):
            if old != step:
                shutil.rmtree(self._folder("best", old), ignore_errors=True)

    def _survivor(self) -> str:
        step = self.latest_step()
        return (f"no checkpoint was saved yet in {self.root}" if step is None else
                f"the last finite checkpoint, step {step}, stays in {self.root}/latest")

    def check_finite(self, step: int, metrics: Mapping[str, float]) -> None:
        """NonFiniteError (one line: the step, every non-finite metric, the checkpoint that survives) unless
        every value of `metrics` (logged loss, loss terms, gradient norm, ...) is finite."""
        bad = [f"{k} {v}" for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteError(
                f"training diverged by step {step}: non-finite {', '.join(bad)}; {self._survivor()} "
                f"(lower optimizer.learning_rate, or check the data)")

    def save(self, step: int, state: Any, meta: dict, *, metrics: dict | None = None) -> None:
        """Save `state` (array tree) and `meta` (JSON) at `step` and wait until it is on disk; with `metrics`,
        also offer it as the best. NonFiniteError if the state is not finite, CheckpointError if a write fails."""
        bad, total = count_non_finite(state)
        if bad:
            raise NonFiniteError(f"training diverged by step {step}: {bad} of {total} arrays of the state are "
                                 f"non-finite, not saved; "
                                 f"{self._survivor()} (lower optimizer.learning_rate, or check the data)")
        meta = {**meta, **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
                **({"training": self.training} if self.training else {})}
        if self.best_metric and metrics is not None and self.best_metric in metrics:
            meta[self.best_metric] = float(metrics[self.best_metric])
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            with _quiet_orbax_threads():
                self._latest.save(step, args=args, force=True)
            if self.best_metric in meta:
                if jax.process_index() == 0:
                    self._offer_best(step, meta[self.best_metric])
                _sync("best_checkpoint_copied")
        except Exception as error:  # noqa: BLE001 -- any failed write ends the run with the line below
            self._failed = True
            raise self._write_error(step, error) from None

    def _write_error(self, step: int, error: BaseException) -> CheckpointError:
        for partial in glob.glob(os.path.join(self.root, "*", f"{step}{TMP_MARK}*")):
            shutil.rmtree(partial, ignore_errors=True)  # our own half-written folder: give the space back
        reason = "no space left on device" if _no_space(error) else _first_line(error)
        kept = [s for s in self._steps_in("latest") if s != step]
        return CheckpointError(f"{self.root}: writing the checkpoint of step {step} failed ({reason}); "
                               f"{free_bytes(self.root)} bytes free there; the earlier checkpoints are kept "
                               f"(latest: steps {kept})")

    # -- reading

    def _candidates(self, step: int | None, best: bool) -> list[str]:
        """The folders to try: the one asked for (latest/<step>, best/, else the newest latest/), then every
        other checkpoint, newest first (latest/ before best/ at the same step)."""
        record = self._best_record()
        found = [(s, 1, self._folder("latest", s)) for s in self._latest.all_steps()]
        if record is not None:
            found.append((record["step"], 0, self._folder("best", record["step"])))
        ordered = [path for _, _, path in sorted(found, reverse=True)]
        first = (self._folder("latest", step) if step is not None else
                 self._folder("best", record["step"]) if best and record is not None else None)
        if first is not None and first in ordered:
            ordered.remove(first)
            ordered.insert(0, first)
        return ordered

    def _check_fingerprints(self, path: str, meta: dict) -> None:
        """CheckpointError when the checkpoint is of another model, or (resuming) of other training settings
        than the config's, but for the accepted ones."""
        saved = meta.get("fingerprint")
        if self.fingerprint and saved is not None and saved != self.fingerprint:
            raise CheckpointError(f"{path}: the checkpoint is of another model, refusing to load it "
                                  f"({'; '.join(fingerprint_differences(saved, self.fingerprint))}); use another "
                                  f"workdir, or the config it was trained with")
        if not self.training:
            return
        saved = meta.get("training")
        if saved is None:
            if not self._unchecked_warned:
                self.log(f"[checkpoint] warning: {path} records no training settings (written by an older "
                         f"version): resuming without checking that data, optimizer, loss and schedule are unchanged")
                self._unchecked_warned = True
            return
        changed = fingerprint_differences(saved, self.training)
        refused = [line for line in changed if line.split(":")[0] not in self.accept]
        if refused:
            raise CheckpointError(f"{path}: the run was trained with other settings, refusing to resume it "
                                  f"({'; '.join(refused)}); use the config it was trained with, or accept the "
                                  f"changes with --config.train.resume_changes="
                                  f"{','.join(line.split(':')[0] for line in refused)}")
        if changed:
            self.log(f"[checkpoint] resuming with changes accepted by config.train.resume_changes: "
                     f"{'; '.join(changed)}")

    def _read(self, path: str, target: Any, partial: bool) -> tuple[Any, dict]:
        """(state, meta) of the folder `path`; _Unreadable when incomplete or damaged, CheckpointError when it
        holds another model or training."""
        if not os.path.isfile(os.path.join(path, "meta", "metadata")):
            raise _Unreadable("incomplete (no meta/metadata)")
        meta = self._read_meta(path)
        if not meta:
            raise _Unreadable("damaged (meta/metadata does not read as JSON)")
        self._check_fingerprints(path, meta)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        state_dir = os.path.join(path, "state")
        for part in ("state", "state/_METADATA"):
            if not os.path.exists(os.path.join(path, part)):
                raise _Unreadable(f"incomplete (no {part})")
        handler = ocp.PyTreeCheckpointHandler()
        try:
            with _settled_on_failure():
                saved = handler.metadata(epath.Path(state_dir))
        except Exception as error:  # noqa: BLE001 -- orbax raises many kinds; all mean the same here
            raise _Unreadable(f"damaged (its array index does not read: {_first_line(error)})") from None
        finally:
            handler.close()
        saved = _leaf_shapes(getattr(saved, "tree", saved))
        wanted = _leaf_shapes(abstract)
        differ = [f"{k}: checkpoint {saved.get(k, '(absent)')}, config {wanted.get(k, '(absent)')}"
                  for k in sorted(set(wanted) | (set() if partial else set(saved))) if saved.get(k) != wanted.get(k)]
        if differ:
            raise CheckpointError(f"{path}: the checkpoint's arrays do not fit this config's model and optimiser "
                                  f"({len(differ)} differ, e.g. {differ[0]}); use another workdir, or the config "
                                  f"it was trained with")
        try:
            with _settled_on_failure():
                state = self._read_arrays(state_dir, abstract, partial)
        except Exception as error:  # noqa: BLE001 -- the tree fits: any failure to read it is damage on disk
            raise _Unreadable(f"damaged ({_first_line(error)})") from None
        return state, meta

    @staticmethod
    def _read_arrays(state_dir: str, abstract: Any, partial: bool) -> Any:
        if partial:  # only the subtrees of a dict `target` (e.g. params, batch_stats) are read from disk
            with ocp.PyTreeCheckpointer() as checkpointer:
                return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
                    item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=True))
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            return checkpointer.restore(state_dir, args=ocp.args.StandardRestore(abstract))

    def restore(self, target: Any, step: int | None = None, *, best: bool = False,
                partial: bool = False) -> tuple[Any, dict]:
        """Restore (state, meta) into the structure/shardings of `target`: latest/<step>, else the best
        (`best`), else the newest; a damaged or incomplete one is skipped with a warning for the newest
        readable one (latest or best; `self.restored` says which folder). With `partial`, `target` is a dict
        of some saved subtrees and only those are read (inference: params and batch_stats). CheckpointError
        (one line) when none is readable, or one is of another model or training."""
        candidates = self._candidates(step, best)
        if not candidates:
            raise FileNotFoundError(f"{self.root}: no checkpoint to restore")
        problems = []
        for path in candidates:
            try:
                state, meta = self._read(path, target, partial)
            except _Unreadable as problem:
                problems.append((path, str(problem)))
                continue
            for bad, problem in problems:
                self.log(f"[checkpoint] warning: {bad} is {problem}; restored {path} instead"
                         + (f", moved it to {self._set_aside(bad)}" if self.writer else ""))
            self.restored = path
            return state, meta
        raise CheckpointError(f"{self.root}: no checkpoint can be read ("
                              f"{'; '.join(f'{path} is {problem}' for path, problem in problems)}); move the "
                              f"folder away to start over")

    def _set_aside(self, path: str) -> str:
        """Move an unreadable checkpoint folder to ROOT/unreadable/ (the writer saves that step anew) -> where."""
        target = os.path.join(self.root, "unreadable", "-".join(path.split(os.sep)[-2:]))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
        _sync("unreadable_checkpoint_moved")
        self._latest.reload()
        return target

    def close(self) -> None:
        """Release the manager (after a failed save, without raising again)."""
        try:
            self._latest.close()
        except Exception:  # noqa: BLE001
            if not self._failed:
                raise
