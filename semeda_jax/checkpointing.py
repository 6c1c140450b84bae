"""Orbax checkpoints in the workdir: the latest N for resuming, and the best one by a metric.

Layout under a checkpoint root (e.g. `WORKDIR/checkpoints`):
    latest/<step>/   the last `keep` saves; a run resumes from the newest of them
    best/<step>/     the single save with the highest `best_metric` (e.g. val mIoU)
Each save holds the array tree `state` (StandardSave, works with sharded jax.Arrays on any number of hosts) and
a JSON `meta` dict (step, metrics, anything small). Saves are atomic: orbax writes to a temporary folder and
renames it when complete, so a kill mid-save leaves the previous checkpoint as the latest.

Multi-host: every process constructs the managers and calls save/restore with the same step (they are
collective); orbax writes each array shard once (replicated arrays and `meta` from process 0), so the root must
be a folder all processes see (a shared file system, or a bucket mounted there). Restoring into a target's
shardings re-shards, so a checkpoint restores on any number of processes/devices.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Latest-N and best-by-metric orbax checkpoints under `root`."""

    def __init__(self, root: str, *, keep: int = 3, best_metric: str | None = None):
        self.root = os.path.abspath(root)
        self.best_metric = best_metric
        self._latest = ocp.CheckpointManager(
            os.path.join(self.root, "latest"), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self._best = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                os.path.join(self.root, "best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_mode="max",
                    best_fn=lambda metrics: float(metrics[best_metric])))

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.best_step() if self._best is not None else None

    def save(self, step: int, state: Any, meta: dict, *, metrics: dict | None = None) -> None:
        """Save `state` (array tree) and `meta` (JSON) at `step`; with `metrics`, also offer it as the best."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._latest.save(step, args=args, force=True)
        if self._best is not None and metrics is not None and self.best_metric in metrics:
            self._best.save(step, args=args, metrics={k: float(v) for k, v in metrics.items()}, force=True)

    def restore(self, target: Any, step: int | None = None, *, best: bool = False) -> tuple[Any, dict]:
        """Restore (state, meta) at `step` (default newest) into the structure/shardings of `target`."""
        manager = self._best if best else self._latest
        if manager is None:
            raise ValueError(f"{self.root}: no best-checkpoint manager (best_metric was not set)")
        step = manager.best_step() if best and step is None else step
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{manager.directory}: no checkpoint to restore")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self._latest.wait_until_finished()
        if self._best is not None:
            self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        if self._best is not None:
            self._best.close()
