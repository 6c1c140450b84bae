"""Preemption-safe training through the CLI: SIGTERM checkpoints the current step and exits 0, SIGKILL loses
only the steps since the last checkpoint, and the resumed runs end bit for bit where an uninterrupted run does."""
import re
import signal
import sys

import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import stages

import processes

pytestmark = pytest.mark.usefixtures("float32_jax")

OVERRIDES = {"loss": "ce", "train.steps": 40, "train.checkpoint_every": 3, "train.eval_every": 1000}
COMPARE_AT = 20  # the in-process runs stop here (before the final evaluation); the CLI runs never get there


def start_training(config, workdir):
    flags = [f"--config.dataset.root={config.dataset.root}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
    return processes.start([sys.executable, "-m", "semeda_jax.main", "--config=configs/demo.py:smoke",
                            f"--workdir={workdir}", "--stages=train", *flags])


def signal_after_checkpoint(proc, workdir, after_step, signum, timeout=120):
    """Send `signum` once a checkpoint newer than `after_step` is on disk -> (output, exit code, step then)."""
    with processes.killed_on_exit(proc):
        step = processes.wait_for_checkpoint(proc, workdir, after_step, timeout)
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(signum)
        output = proc.communicate(timeout=60)[0]
        return output, proc.returncode, step


def test_sigterm_and_sigkill_then_resume_bitwise(tmp_path):
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    config.update_from_flattened_dict(OVERRIDES)
    stages.build_readers(config)  # generate the data before the first process reads it
    workdir = str(tmp_path / "interrupted")

    # SIGTERM: a checkpoint of the step in progress, exit status 0.
    output, code, seen = signal_after_checkpoint(start_training(config, workdir), workdir, 0, signal.SIGTERM)
    assert code == 0, output[-3000:]
    stopped = int(re.search(r"preempted \(SIGTERM\): checkpoint saved at step (\d+)", output).group(1))
    assert seen <= stopped < COMPARE_AT and processes.latest_checkpoint_step(workdir) == stopped

    # SIGKILL of the resumed run: nothing but the steps after its last checkpoint is lost.
    output, code, _ = signal_after_checkpoint(start_training(config, workdir), workdir, stopped,
                                                         signal.SIGKILL)
    assert code == -signal.SIGKILL and "resumed from" in output, output[-3000:]
    assert stopped < processes.latest_checkpoint_step(workdir) < COMPARE_AT

    resumed, _ = stages.run_train(config, workdir, log=lambda line: None, stop_after=COMPARE_AT)
    straight, _ = stages.run_train(config, str(tmp_path / "straight"), log=lambda line: None, stop_after=COMPARE_AT)
    assert int(resumed.step) == int(straight.step) == COMPARE_AT
    for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.batch_stats, straight.opt_state)),
                    jax.tree_util.tree_leaves((resumed.params, resumed.batch_stats, resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
