"""Two processes on 127.0.0.1 (launch/local.sh --processes=2: jax.distributed, CPU collectives over gloo) train
3 steps of the smoke model with synchronized BN and evaluate once; the result matches one process running the
same global batches."""
import os
import re

import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import evaluate, parallel, stages, train
from semeda_jax.checkpointing import Checkpoints

import processes

pytestmark = pytest.mark.usefixtures("float32_jax")

OVERRIDES = {"loss": "ce", "train.steps": 3, "train.log_every": 1, "train.eval_every": 3}


def test_two_processes_match_one_process(tmp_path):
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    config.update_from_flattened_dict(OVERRIDES)
    readers = stages.build_readers(config)  # generate the data once, before the processes read it
    workdir = str(tmp_path / "run")
    with processes.killed_on_exit(processes.start_two_processes(config.dataset.root, workdir, OVERRIDES,
                                                                stages="train,eval")) as launcher:
        output, code = launcher.communicate(timeout=180)[0], launcher.returncode
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

