"""Preemption with two processes on 127.0.0.1 (launch/local.sh --processes=2): a SIGTERM that reaches only one
of them stops both after the same step, each with a checkpoint of that step and exit status 0. (A file of its
own so that the test runner can put it on another worker than tests/test_multiprocess.py.)"""
import os
import re
import signal
import time

import pytest

from configs import demo
from semeda_jax import stages

import processes

pytestmark = pytest.mark.usefixtures("float32_jax")


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    stages.build_readers(config)
    workdir = str(tmp_path / "run")
    overrides = {"loss": "ce", "train.steps": 500, "train.checkpoint_every": 2, "train.eval_every": 1000}
    with processes.killed_on_exit(processes.start_two_processes(config.dataset.root, workdir, overrides)) as launcher:
        checkpoints = os.path.join(workdir, "checkpoints", "latest")
        deadline = time.monotonic() + 180
        while not (os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))):
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        process_1 = processes.child_with_argument(launcher.pid, "--process_id=1")
        os.kill(process_1, signal.SIGTERM)  # process 0 gets no signal
        output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 0, output[-3000:]
    stopped = [int(step) for step in re.findall(r"preempted \(SIGTERM\): checkpoint saved at step (\d+)", output)]
    assert len(stopped) == 2 and stopped[0] == stopped[1] < overrides["train.steps"], output[-3000:]
    assert max(int(name) for name in os.listdir(checkpoints) if name.isdigit()) == stopped[0]
