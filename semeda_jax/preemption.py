"""Preemption: SIGTERM (what SLURM and Cloud TPU maintenance send) -> checkpoint at the next step boundary, exit 0.

The handler only sets a flag. At every step boundary the training loop asks `StopSignal.should_stop()`, which
ORs the flag over all processes (parallel.any_process, a tiny all-gather; nothing when there is one process),
so every process stops after the same step even when only one of them got the signal. The loop then saves a
checkpoint of that step and raises `Preempted`, which main.py turns into exit status 0; the rerun resumes from
that checkpoint bit for bit. A SIGKILL or crash loses the steps since the last periodic checkpoint.
"""
from __future__ import annotations

import signal

from semeda_jax import parallel


class Preempted(Exception):
    """Training stopped on a preemption notice after checkpointing `step`."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM): checkpoint saved at step {step}; rerun the same command to resume")
        self.step = step


class StopSignal:
    """Context manager: SIGTERM sets a flag while inside (the previous handler comes back on exit)."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum, self.received, self._previous = signum, False, None

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __enter__(self) -> "StopSignal":
        self._previous = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        # None: the previous handler was not installed from Python; restore the default action then.
        signal.signal(self.signum, signal.SIG_DFL if self._previous is None else self._previous)

    def should_stop(self) -> bool:
        """Whether any process got the signal (call at every step boundary, on every process)."""
        return parallel.any_process(self.received)
