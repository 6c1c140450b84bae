"""Preemption: SIGTERM (what SLURM and Cloud TPU maintenance send) -> stop at the next safe point, exit 0.

main.py calls `install()` first thing, so a SIGTERM at any moment of a run (imports, data generation, g_phi
pre-training, compilation, training, evaluation) only sets a flag. Safe points:
  * every training step boundary: `StopSignal.should_stop()` ORs the flag over all processes
    (parallel.any_process, a tiny all-gather; nothing when there is one process), so every process stops after
    the same step even when only one of them got the signal; the loop saves a checkpoint of that step and
    raises `Preempted`;
  * every batch of an evaluation or of the learned-fusion pass (`check_batch`, evaluate.eval_batches; every
    process reads the same number of batches): the pass stops there, it holds no state worth keeping (inside
    training the loop then checkpoints the step it evaluated);
  * every step of g_phi's pre-training (edge_pretrain.py: a checkpoint of the last step, then `Preempted`);
  * every image of the predict stage (predict.predict_folder, a `StopSignal`): the masks written so far stay;
  * every stage boundary (`check_stage_boundary`, main.py): the stages after the signal do not start.
main.py turns `Preempted` into exit status 0; rerunning the same command resumes from the checkpoint bit for
bit (a stage that had not started, or was stopped in the middle of a pass, simply runs then; predict predicts
the whole folder again). A SIGKILL or crash loses the steps since the last periodic checkpoint.
"""
from __future__ import annotations

import signal

_received = False  # set by the handler; read at the safe points
_installed = False  # install() was called: the flag lives as long as the process


def _handle(signum, frame) -> None:
    global _received
    _received = True


def install(signum: int = signal.SIGTERM) -> None:
    """Route `signum` to the stop flag for the rest of the process (call before anything slow)."""
    global _installed
    signal.signal(signum, _handle)
    _installed = True


def received() -> bool:
    """Whether this process got the signal since `install` (or inside a StopSignal block); no collective, for
    decisions one process takes alone (main.py: whether to re-execute under another allocator)."""
    return _received


class Preempted(Exception):
    """A run stopped on a preemption notice: after checkpointing `step`, before `stage` started, or (`started`)
    in the middle of a pass of `stage` that holds no training state."""

    def __init__(self, step: int | None = None, *, stage: str = "train", started: bool = False):
        if step is not None:
            message = f"preempted (SIGTERM): checkpoint saved at step {step}; rerun the same command to resume"
        elif started:
            message = f"preempted (SIGTERM) during the {stage} stage; rerun the same command to run it again"
        else:
            message = f"preempted (SIGTERM) before the {stage} stage; nothing was lost, rerun the same command"
        super().__init__(message)
        self.step, self.stage = step, stage


def _any_process(flag: bool) -> bool:
    from semeda_jax import parallel  # here, so that main.py can install the handler before JAX loads

    return parallel.any_process(flag)


def check_stage_boundary(stage: str) -> None:
    """Raise Preempted(stage=stage) if any process got the signal (call on every process before each stage)."""
    if _any_process(_received):
        raise Preempted(stage=stage)


def check_batch(stage: str) -> None:
    """Raise Preempted(stage=stage, started=True) if any process got the signal (call on every process before
    each batch of a pass over a split; a collective, like `StopSignal.should_stop`)."""
    if _any_process(_received):
        raise Preempted(stage=stage, started=True)


class StopSignal:
    """Context manager: SIGTERM sets the stop flag while inside (the previous handler comes back on exit); a
    signal that arrived earlier, under `install`, counts too."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum, self._previous = signum, None

    def __enter__(self) -> "StopSignal":
        self._previous = signal.signal(self.signum, _handle)
        return self

    def __exit__(self, *exc) -> None:
        global _received
        # None: the previous handler was not installed from Python; restore the default action then.
        signal.signal(self.signum, signal.SIG_DFL if self._previous is None else self._previous)
        if not _installed:  # library use: a signal counts for this block only
            _received = False

    def should_stop(self) -> bool:
        """Whether any process got the signal (call at every step boundary, on every process)."""
        return _any_process(_received)
