"""Two processes on 127.0.0.1 (launch/local.sh --processes=2: jax.distributed, CPU collectives over gloo) train
3 steps of the smoke model with synchronized BN and evaluate once; the result matches one process running the
same global batches. A SIGTERM that reaches only one of the processes stops both after the same step."""
import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import evaluate, parallel, stages, train
from semeda_jax.checkpointing import Checkpoints

import processes

pytestmark = pytest.mark.usefixtures("float32_jax")

OVERRIDES = {"loss": "ce", "train.steps": 3, "train.log_every": 1, "train.eval_every": 3}


def launcher_args(config, workdir, overrides, stages="train"):
    return ["--processes=2", "configs/demo.py:smoke", workdir, f"--stages={stages}",
            f"--config.dataset.root={config.dataset.root}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def run_launcher(args, timeout):
    """launch/local.sh in its own session (killed with all its processes on timeout) -> (output, exit code)."""
    with processes.killed_on_exit(processes.start(["bash", "launch/local.sh", *args])) as proc:
        return proc.communicate(timeout=timeout)[0], proc.returncode


def test_two_processes_match_one_process(tmp_path):
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    config.update_from_flattened_dict(OVERRIDES)
    readers = stages.build_readers(config)  # generate the data once, before the processes read it
    workdir = str(tmp_path / "run")
    output, code = run_launcher(launcher_args(config, workdir, OVERRIDES, stages="train,eval"), timeout=180)
    assert code == 0, output[-3000:]
    assert "2 process(es)" in output  # only process 0 logs, in every stage:
    assert [output.count(line) for line in ("[train] step 3/3", "checkpoint] step 3", "report written")] == [1, 1, 1]

    # One process, one device, the same global batches: process p's rows are its own shard of the data.
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = train.create_train_state(config, model, init_key, mesh)
    step_fn = train.jit_train_step(config, state, mesh, dropout_key)
    streams = [train.train_batches(config, readers["train"], config.data.batch_size // 2, p, 2) for p in range(2)]
    for _ in range(3):
        rows = [next(stream) for stream in streams]
        batch = {k: np.concatenate([r[k] for r in rows]) for k in ("image", "label")}
        state, _ = step_fn(state, parallel.global_batch(batch, mesh), None)

    target = train.create_train_state(config, model, init_key, mesh)
    restored, meta = Checkpoints(os.path.join(workdir, "checkpoints")).restore(target)
    assert meta["step"] == 3
    leaves = jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))
    for a, b in zip(jax.tree_util.tree_leaves((restored.params, restored.batch_stats, restored.opt_state)), leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    differences = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(state.params))]
    print(f"max |params 2 processes - 1 process| = {max(differences):.2e}")

    # The evaluation of the 2-process run (global eval batches, counts summed over processes) agrees too.
    miou = float(re.search(r"\[eval\] mIoU ([0-9.]+)", output).group(1))
    assert miou == pytest.approx(evaluate.evaluate(state, readers["val"], config)["miou"], abs=2e-4)


def child_with_argument(pid, argument):
    """The pid of the child process of `pid` whose command line holds `argument` (None while there is none)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    for child in children:
        with open(f"/proc/{child}/cmdline") as f:
            if argument in f.read().split("\0"):
                return child
    return None


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    stages.build_readers(config)
    workdir = str(tmp_path / "run")
    overrides = {"loss": "ce", "train.steps": 500, "train.checkpoint_every": 2, "train.eval_every": 1000}
    with processes.killed_on_exit(processes.start(["bash", "launch/local.sh",
                                                   *launcher_args(config, workdir, overrides)])) as launcher:
        checkpoints = os.path.join(workdir, "checkpoints", "latest")
        deadline = time.monotonic() + 180
        while not (os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))):
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        os.kill(child_with_argument(launcher.pid, "--process_id=1"), signal.SIGTERM)  # process 0 gets nothing
        output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 0, output[-3000:]
    stopped = [int(step) for step in re.findall(r"preempted \(SIGTERM\): checkpoint saved at step (\d+)", output)]
    assert len(stopped) == 2 and stopped[0] == stopped[1] < overrides["train.steps"], output[-3000:]
    assert max(int(name) for name in os.listdir(checkpoints) if name.isdigit()) == stopped[0]
