"""Orbax checkpoints in the workdir: the latest N for resuming, and the best one by a metric.

Layout under a checkpoint root (e.g. `WORKDIR/checkpoints`):
    latest/<step>/   the last `keep` saves; a run resumes from the newest of them
    best/<step>/     the single save with the highest `best_metric` (e.g. val mIoU)
Each save holds the array tree `state` (StandardSave, works with sharded jax.Arrays on any number of hosts) and
a JSON `meta` dict (step, metrics, the model fingerprint, anything small). Saves are atomic: orbax writes to a
temporary folder and renames it when complete, so a kill mid-save leaves the previous checkpoint as the latest.

Guarantees on top of orbax:
  * a state with a non-finite floating-point value is never saved (NonFiniteError), so a diverged run cannot
    rotate its last finite checkpoint out of `latest` or become `best`; `check_finite` stops a run whose
    logged loss or gradient norm is non-finite, naming the step, the terms and the checkpoint that survives;
  * saves are synchronous (`save` returns once the checkpoint is on disk); a failed write (e.g. a full disk) raises CheckpointError
    naming the folder and the bytes free, after removing that step's partial folder;
  * with `fingerprint` (model_fingerprint(config)), every save records it and `restore` refuses a checkpoint
    whose fingerprint differs, naming the differing config fields (CheckpointError), before touching arrays.

Multi-host: every process constructs the managers and calls save/restore with the same step (they are
collective); orbax writes each array shard once (replicated arrays and `meta` from process 0), so the root must
be a folder all processes see (a shared file system, or a bucket mounted there). Restoring into a target's
shardings re-shards, so a checkpoint restores on any number of processes/devices.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import logging
import math
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from semeda_jax.workdir import free_bytes


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or does not belong to this config. The message names the folder."""


class NonFiniteError(CheckpointError):
    """Training produced a non-finite loss, gradient norm or state (a diverged run)."""


def model_fingerprint(config) -> dict:
    """The config fields that fix the model's parameter tree: every `model.*` field but the initial weights
    file and the parameter-free CRF layer switch, and `dataset.num_classes` -> {"model.depth": 18, ...} (JSON
    values)."""
    fields = {f"model.{k}": v for k, v in config.model.to_dict().items() if k not in ("pretrained", "crf_layer")}
    fields["dataset.num_classes"] = config.dataset.num_classes
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(fields.items())}


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


class Checkpoints:
    """Latest-N and best-by-metric orbax checkpoints under `root`."""

    def __init__(self, root: str, *, keep: int = 3, best_metric: str | None = None,
                 fingerprint: Mapping | None = None):
        self.root = os.path.abspath(root)
        self.best_metric = best_metric
        self.fingerprint = dict(fingerprint) if fingerprint else None
        self._failed = False
        self._latest = ocp.CheckpointManager(os.path.join(self.root, "latest"), options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))
        self._best = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                os.path.join(self.root, "best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_mode="max", enable_async_checkpointing=False,
                    best_fn=lambda metrics: float(metrics[best_metric])))

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.best_step() if self._best is not None else None

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
        if self.fingerprint:
            meta = {**meta, "fingerprint": self.fingerprint}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            with _quiet_orbax_threads():
                self._latest.save(step, args=args, force=True)
                if self._best is not None and metrics is not None and self.best_metric in metrics:
                    self._best.save(step, args=args, metrics={k: float(v) for k, v in metrics.items()},
                                    force=True)
        except Exception as error:  # noqa: BLE001 -- any failed write ends the run with the line below
            self._failed = True
            raise self._write_error(step, error) from None

    def _write_error(self, step: int, error: BaseException) -> CheckpointError:
        for partial in glob.glob(os.path.join(self.root, "*", f"{step}.orbax-checkpoint-tmp*")):
            shutil.rmtree(partial, ignore_errors=True)  # our own half-written folder: give the space back
        reason = "no space left on device" if _no_space(error) else str(error).strip().splitlines()[0][:300]
        kept = sorted(int(n) for n in os.listdir(os.path.join(self.root, "latest")) if n.isdigit() and n != str(step))
        return CheckpointError(f"{self.root}: writing the checkpoint of step {step} failed ({reason}); "
                               f"{free_bytes(self.root)} bytes free there; the earlier checkpoints are kept "
                               f"(latest: steps {kept})")

    def restore(self, target: Any, step: int | None = None, *, best: bool = False,
                partial: bool = False) -> tuple[Any, dict]:
        """Restore (state, meta) at `step` (default newest) into the structure/shardings of `target`; with
        `partial`, `target` is a dict of some of the saved subtrees and only those are read (inference reads
        params and batch_stats, no optimiser state). CheckpointError (one line) when the checkpoint's
        fingerprint or tree does not match."""
        manager = self._best if best else self._latest
        if manager is None:
            raise ValueError(f"{self.root}: no best-checkpoint manager (best_metric was not set)")
        step = manager.best_step() if best and step is None else step
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{manager.directory}: no checkpoint to restore")
        path = os.path.join(str(manager.directory), str(step))
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        saved = meta.get("fingerprint")
        if self.fingerprint and saved is not None and saved != self.fingerprint:
            raise CheckpointError(f"{path}: the checkpoint is of another model, refusing to load it "
                                  f"({'; '.join(fingerprint_differences(saved, self.fingerprint))}); use another "
                                  f"workdir, or the config it was trained with")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        try:
            if partial:  # only the subtrees of a dict `target` (e.g. params, batch_stats) are read from disk
                state = ocp.PyTreeCheckpointer().restore(os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
                    item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=True))
                return state, meta
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: the checkpoint does not fit this config's model and optimiser "
                                  f"({str(error).strip().splitlines()[0][:300]})") from None
        return restored.state, restored.meta

    def close(self) -> None:
        """Release the managers (after a failed save, without raising again)."""
        for manager in (self._latest, self._best):
            if manager is None:
                continue
            try:
                manager.close()
            except Exception:  # noqa: BLE001
                if not self._failed:
                    raise
