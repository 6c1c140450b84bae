"""Spatial partitioning (config.parallel.spatial_partitions): on 8 simulated CPU devices, meshes of 4 data x 2
spatial and 2 data x 4 spatial (each image split by height) against one device on the whole batch: one train
step's loss, gradients, BN statistics and updated parameters (trained BN, CE + SEMEDA with a frozen g_phi, and
BAL + Sobel + Dice with grouped BN), and the eval step's counts and per-image outputs. Config errors: a spatial
size that does not divide the devices, a process's devices, or a batch's height.

The 8-device checks run this file as a script in a subprocess (as tests/test_parallel.py does): XLA_FLAGS must
be set before jax initialises.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from semeda_jax import evaluate, objective, parallel
from semeda_jax.validation import ConfigError
from test_parallel import NUM_CLASSES, initial_state, max_diffs, one_step, tiny_batch, tiny_config

pytestmark = pytest.mark.usefixtures("float32_jax")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = {  # name: (spatial partitions, config overrides); BN trained on the batch in all
    "4x2_ce_semeda_params_sharded": (2, {"loss": "ce+semeda", "parallel.param_sharding": "data"}),
    "2x4_ce_semeda": (4, {"loss": "ce+semeda"}),
    "2x4_bal_sobel_dice_grouped_bn_4": (4, {"loss": "bal+sobel+dice", "model.bn_group_size": 4}),
}


def eval_batch(size=8):
    """An eval batch of 16x16 images, the last one a filler (mask False, all void), as evaluate.step_inputs."""
    batch = tiny_batch(size)
    batch["label"][-1] = 255
    rng = np.random.default_rng(1)
    return {**batch, "mask": np.arange(size) < size - 1, "index": np.arange(size, dtype=np.int32),
            "boundary_sizes": rng.integers(10, 17, (size, 2)).astype(np.int32),
            "boundary_band_width": np.full(size, 2, np.int32), "boundary_tolerance": np.full(size, 1, np.int32)}


def eval_outputs(config, apply_fn, variables, mesh, batch):
    """evaluate.jit_eval_counts (whole image) of the model on `mesh`, its variables replicated -> {key: np.ndarray}
    of every output."""
    step = evaluate.jit_eval_counts(apply_fn, evaluate.PERIODIC, 2, NUM_CLASSES, tuple(config.eval.trimap_widths),
                                    mesh)
    out = step(jax.device_put(variables, parallel.replicated(mesh)), parallel.global_batch(batch, mesh))
    maps = {key: parallel.host_rows(out[key]) for key in ("predictions", "entropy")}
    assert all(np.array_equal(maps[key], np.asarray(out[key])) for key in maps)  # host_rows pastes the shards
    return {key: np.asarray(value) for key, value in out.items()}


def error(function, *args) -> str:
    try:
        function(*args)
    except ConfigError as e:
        return str(e)
    return "no error"


def spatial_vs_single_device() -> dict:
    """Run in a process with 8 CPU devices -> {"train": {scenario: {kind: max relative diff}}, "eval": {mesh:
    {key: max abs diff}}, "input_specs": a global batch's specs, "errors": [messages]}."""
    assert jax.device_count() == 8, jax.devices()
    one = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), (parallel.DATA_AXIS, parallel.SPATIAL_AXIS))
    parallel.MIN_SHARDED_SIZE = 1  # so that TinySegNet's leaves are sharded too under param_sharding="data"
    frozen = {"edge_net": objective.FROZEN_NETS["edge_net"](jax.random.PRNGKey(3), NUM_CLASSES)}
    results = {"train": {}, "eval": {}}
    for name, (spatial, overrides) in SCENARIOS.items():
        config = tiny_config(**overrides, **{"parallel.spatial_partitions": spatial})
        mesh, batch = parallel.make_mesh(config), tiny_batch()
        assert dict(mesh.shape) == {"data": 8 // spatial, "spatial": spatial}
        state = initial_state(config, mesh)
        single = jax.device_put(jax.device_get(state), parallel.replicated(one))  # a copy: `state` is donated
        uses = frozen if "semeda" in config.loss else None
        results["train"][name] = max_diffs(one_step(config, state, mesh, batch, uses),
                                           one_step(config, single, one, batch, uses))
    # the step's batch arrives as placed (jax.jit: an argument whose sharding differs from in_shardings fails)
    results["input_specs"] = {k: str(v.sharding.spec) for k, v in parallel.global_batch(batch, mesh).items()}
    config = tiny_config()
    state = initial_state(config, one)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    reference = eval_outputs(config, state.apply_fn, variables, one, eval_batch())
    for spatial in (2, 4):
        mesh = parallel.make_mesh(tiny_config(**{"parallel.spatial_partitions": spatial}))
        out = eval_outputs(config, state.apply_fn, variables, mesh, eval_batch())
        results["eval"][f"{8 // spatial}x{spatial}"] = {  # NaN in both (the filler's scores) counts as equal
            key: float(np.nan_to_num(np.abs(out[key].astype(np.float64) - reference[key]), nan=0.0).max()
                       if np.array_equal(np.isnan(out[key]), np.isnan(reference[key])) else np.inf)
            for key in reference}
    mesh = parallel.make_mesh(tiny_config(**{"parallel.spatial_partitions": 4}))
    results["errors"] = [error(parallel.make_mesh, tiny_config(**{"parallel.spatial_partitions": 3})),
                         error(parallel.global_batch, {"image": np.zeros((8, 18, 16, 3), np.float32)}, mesh)]
    return results


def test_spatial_partitions_match_one_device():
    """8 devices, images split by height over 2 or 4 of them, vs 1 device: float32, reduction order only."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    assert set(results["train"]) == set(SCENARIOS)
    for scenario, diffs in results["train"].items():
        assert set(diffs) >= {"loss", "grads", "params", "stats"}, scenario
        for kind, diff in diffs.items():
            assert diff < 2e-5, (scenario, kind, diff)
    spec = str(PartitionSpec("data", "spatial"))
    assert results["input_specs"] == {"image": spec, "label": spec}
    assert set(results["eval"]) == {"4x2", "2x4"}
    for mesh, diffs in results["eval"].items():
        for key, diff in diffs.items():
            assert diff <= (1e-5 if key in ("entropy", "emeasure_sums", "image_miou", "image_boundary_iou") else 0), \
                (mesh, key, diff)
    assert results["errors"] == [
        "config.parallel.spatial_partitions: 3 does not divide the 8 devices",
        "config.parallel.spatial_partitions: 4 does not divide the height of the batch's 'image' [8, 18, 16, 3]; "
        "use crop / eval pad heights (times config.data.input_scale) that are multiples of 4"]


def test_a_spatial_group_must_lie_inside_one_process(monkeypatch):
    """2 processes of 2 devices each: groups of 4 would span both, groups of 2 do not."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    devices = jax.devices()[:1] * 4  # make_mesh reads only their number before the check
    with pytest.raises(ConfigError, match="spatial_partitions: 4 does not divide the 2 devices of a process"):
        parallel.make_mesh(tiny_config(**{"parallel.spatial_partitions": 4}), devices)


if __name__ == "__main__":
    print(json.dumps(spatial_vs_single_device()))
