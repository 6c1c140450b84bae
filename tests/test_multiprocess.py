"""Two processes on 127.0.0.1 (launch/local.sh --processes=2: jax.distributed, CPU collectives over gloo) train
the smoke model with synchronized BN until a SIGTERM that reaches only process 1 stops both after the same step;
the checkpoint of that step matches one process running the same global batches, and a second launch evaluates
it to the single-process mIoU. Only process 0 prints, in every stage."""
import os
import re
import signal

import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import evaluate, parallel, stages, train
from semeda_jax.checkpointing import Checkpoints

import processes

pytestmark = pytest.mark.usefixtures("float32_jax")

OVERRIDES = {"loss": "ce", "train.steps": 500, "train.log_every": 1, "train.checkpoint_every": 3,
             "train.eval_every": 1000}
STEPS_AT_LEAST = 3  # the signal goes out once the checkpoint of this step is on disk


def train_until_sigterm_to_process_1(config, workdir, timeout=180):
    """Launch 2-process training, SIGTERM process 1 alone after checkpoint STEPS_AT_LEAST -> (output, code)."""
    with processes.killed_on_exit(processes.start_two_processes(config.dataset.root, workdir, OVERRIDES)) as launcher:
        processes.wait_for_checkpoint(launcher, workdir, STEPS_AT_LEAST - 1, timeout)
        os.kill(processes.child_with_argument(launcher.pid, "--process_id=1"), signal.SIGTERM)  # not process 0
        output = launcher.communicate(timeout=120)[0]
        return output, launcher.returncode


def test_two_processes_stop_together_and_match_one_process(tmp_path):
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    config.update_from_flattened_dict(OVERRIDES)
    readers = stages.build_readers(config)  # generate the data once, before the processes read it
    workdir = str(tmp_path / "run")
    output, code = train_until_sigterm_to_process_1(config, workdir)
    assert code == 0, output[-3000:]
    stopped = [int(step) for step in re.findall(r"preempted \(SIGTERM\): checkpoint saved at step (\d+)", output)]
    assert len(stopped) == 2 and STEPS_AT_LEAST <= stopped[0] == stopped[1] < config.train.steps, output[-3000:]
    steps = stopped[0]
    assert processes.latest_checkpoint_step(workdir) == steps
    assert "2 process(es)" in output and output.count(f"[train] step {STEPS_AT_LEAST}/") == 1  # process 0 only

    # One process, one device, the same global batches: process p's rows are its own shard of the data.
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = train.create_train_state(config, model, init_key, mesh)
    step_fn = train.jit_train_step(config, state, mesh)
    streams = [train.train_batches(config, readers["train"], config.data.batch_size // 2, p, 2) for p in range(2)]
    for _ in range(steps):
        rows = [next(stream) for stream in streams]
        batch = {k: np.concatenate([r[k] for r in rows]) for k in ("image", "label")}
        state, _ = step_fn(state, parallel.global_batch(batch, mesh), None, dropout_key)

    target = train.create_train_state(config, model, init_key, mesh)
    restored, meta = Checkpoints(os.path.join(workdir, "checkpoints")).restore(target)
    assert meta["step"] == steps
    leaves = jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))
    for a, b in zip(jax.tree_util.tree_leaves((restored.params, restored.batch_stats, restored.opt_state)), leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    differences = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(state.params))]
    print(f"max |params 2 processes - 1 process| = {max(differences):.2e}")

    # A 2-process evaluation of that checkpoint (global eval batches, counts summed over processes) agrees too.
    with processes.killed_on_exit(processes.start_two_processes(config.dataset.root, workdir, OVERRIDES,
                                                                stages="eval")) as launcher:
        output, code = launcher.communicate(timeout=120)[0], launcher.returncode
    assert code == 0, output[-3000:]
    assert [output.count(line) for line in (f"checkpoint] step {steps}", "report written")] == [1, 1], output
    miou = float(re.search(r"\[eval\] mIoU ([0-9.]+)", output).group(1))
    assert miou == pytest.approx(evaluate.evaluate(state, readers["val"], config)["miou"], abs=2e-4)
