"""Data parallelism on one machine: the sharded train step on 8 simulated CPU devices against one device,
grouped batch norm against a NumPy float64 reference, gradient accumulation, mixed precision.

The 8-device checks run this file as a script in a subprocess: XLA_FLAGS=--xla_force_host_platform_device_count=8
must be set before jax initialises, which in the pytest process it already has.
"""
import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from configs import common
from semeda_jax import objective, parallel, train
from semeda_jax.models.layers import BatchNormed, ConvBNReLU, GroupedBatchNorm, conv

pytestmark = pytest.mark.usefixtures("float32_jax")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4


class TinySegNet(BatchNormed):
    """conv-BN-ReLU, strided conv-BN-ReLU, 1x1 classifier: [B,16,16,3] -> {"logits": [B,8,8,C]}. Small enough that
    the 8-device programs compile in a second; its batch norms are the models' (layers.norm)."""
    num_classes: int

    @nn.compact
    def __call__(self, images, train=False):
        x = ConvBNReLU(8, name="block1", **self.norm_kwargs())(images.astype(self.dtype), train)
        x = ConvBNReLU(8, strides=2, name="block2", **self.norm_kwargs())(x, train)
        return {"logits": conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="classifier")(x)}


def tiny_model(config):
    """TinySegNet with config.model's BN settings and config.mixed_precision's dtype."""
    return TinySegNet(NUM_CLASSES, bn_mode=config.model.bn_mode, bn_group_size=config.model.bn_group_size,
                      dtype=train.build_segmentation_model(config, NUM_CLASSES).dtype)


def tiny_config(**overrides):
    """The smoke config at 16x16 crops, trained BN, batch 16, CE (with TinySegNet for the steps)."""
    config = common.base_config()
    common.shrink_for_smoke(config)
    config.model.bn_mode = "train"
    config.dataset.num_classes = NUM_CLASSES
    config.data.update(crop_size=(16, 16), batch_size=16)
    config.loss = "ce"
    config.optimizer.update(learning_rate=0.1, warmup_steps=0)
    config.update_from_flattened_dict(overrides)
    return config


def tiny_batch(batch_size=16, void=True):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, (batch_size, 16, 16)).astype(np.int32)
    if void:
        labels[:, :3] = 255
    return {"image": rng.normal(size=(batch_size, 16, 16, 3)).astype(np.float32), "label": labels}


def initial_state(config, mesh):
    return train.create_train_state(config, tiny_model(config), jax.random.PRNGKey(0), mesh)


def one_step(config, state, mesh, batch, frozen=None):
    """-> {name: np.ndarray}: loss, gradients, BN statistics after the step, updated params (flattened);
    `frozen`: the loss terms' frozen nets ({"edge_net": g_phi params} or None)."""
    dropout_key = jax.random.PRNGKey(1)
    batch = parallel.global_batch(batch, mesh)
    loss, _, _, grads = jax.jit(lambda s, b: train.compute_gradients(
        s, b, frozen, loss_fn=objective.Objective(config), key=dropout_key,
        accum_steps=config.train.grad_accum_steps))(state, batch)
    state, metrics = train.jit_train_step(config, state, mesh)(state, batch, frozen, dropout_key)
    flat = {"loss": loss, "metric_loss": metrics["loss"]}
    for name, tree in (("grads", grads), ("params", state.params), ("stats", state.batch_stats)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            flat[name + jax.tree_util.keystr(path)] = leaf
    return {k: np.asarray(jax.device_get(v), np.float64) for k, v in flat.items()}


def max_diffs(a, b):
    """Largest |a - b| per kind of leaf, relative to the largest |b| of that kind."""
    out = {}
    for key in a:
        kind = key.split("[")[0]
        scale = max(np.abs(b[key]).max(), 1e-12)
        out[kind] = max(out.get(kind, 0.0), float(np.abs(a[key] - b[key]).max() / scale))
    return out


def sharded_vs_single_device() -> dict:
    """Run in a process with 8 CPU devices: {scenario: {kind: max relative diff 8 devices vs 1}}."""
    assert jax.device_count() == 8, jax.devices()
    one = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), (parallel.DATA_AXIS, parallel.SPATIAL_AXIS))
    eight = parallel.make_mesh(tiny_config())  # eval batches round up to a multiple of the 8 devices
    assert [parallel.local_eval_batch_size(b, eight) for b in (1, 8, 9)] == [8, 8, 16]
    parallel.MIN_SHARDED_SIZE = 1  # so that TinySegNet's leaves are sharded too under param_sharding="data"
    scenarios = {
        "global_bn": ({}, True),
        # groups of 4 span 2 devices (2 samples each); parameters and momenta split over the 8 devices
        "grouped_bn_4_params_sharded": ({"model.bn_group_size": 4, "parallel.param_sharding": "data"}, True),
        "grad_accum_2": ({"model.bn_mode": "frozen", "train.grad_accum_steps": 2}, False),
    }
    results = {}
    for name, (overrides, void) in scenarios.items():
        config = tiny_config(**overrides)
        mesh, batch = parallel.make_mesh(config), tiny_batch(void=void)
        state = initial_state(config, mesh)
        single = jax.device_put(jax.device_get(state), parallel.replicated(one))  # a copy: `state` is donated
        if name.startswith("grouped"):
            assert state.params["block1"]["conv"]["kernel"].sharding.spec == PartitionSpec(None, None, None, "data")
        results[name] = max_diffs(one_step(config, state, mesh, batch), one_step(config, single, one, batch))
    return results


def test_eight_devices_match_one_device():
    """Loss, gradients, BN statistics and updated parameters: 8 devices vs 1, float32 (reduction order only)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    for scenario, diffs in results.items():
        assert set(diffs) >= {"loss", "grads", "params"}, scenario
        for kind, diff in diffs.items():
            assert diff < 2e-5, (scenario, kind, diff)


def test_grouped_batch_norm_matches_numpy_float64():
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, (8, 3, 5, 6))
    scale, bias = rng.normal(size=6), rng.normal(size=6)
    ra_mean, ra_var = rng.normal(size=6), rng.uniform(0.5, 2.0, 6)
    module = GroupedBatchNorm(4, momentum=0.9, epsilon=1e-5, dtype=jnp.float64)
    y, updates = module.apply({"params": {"scale": scale, "bias": bias},
                               "batch_stats": {"mean": ra_mean, "var": ra_var}}, x, mutable=["batch_stats"])
    groups = x.reshape(2, 4, 3, 5, 6)
    mean = groups.mean((1, 2, 3), keepdims=True)
    var = groups.var((1, 2, 3), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-5) * scale + bias).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.9 * ra_mean + 0.1 * mean.mean(0).ravel(), rtol=1e-12)
    np.testing.assert_allclose(stats["var"], 0.9 * ra_var + 0.1 * var.mean(0).ravel(), rtol=1e-12)


def test_group_size_keeps_the_variable_tree():
    """DeepLab v3+ (shapes only, no compilation): the same variables with and without groups."""
    images = jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32)
    trees = []
    for group in (None, 2):
        model = train.build_segmentation_model(tiny_config(**{"model.bn_group_size": group}), NUM_CLASSES)
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), images)
        _, updates = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"],
                                                      rngs={"dropout": jax.random.PRNGKey(0)}), variables, images)
        assert updates["batch_stats"] == variables["batch_stats"]
        trees.append(variables)
    assert trees[0] == trees[1]


def test_grad_accumulation_equals_the_whole_batch():
    """Frozen BN, no void (every micro-batch has as many valid pixels): k=4 micro-batches == one batch."""
    whole_config = tiny_config(**{"model.bn_mode": "frozen"})
    mesh, batch = parallel.make_mesh(whole_config), tiny_batch(void=False)
    whole = one_step(whole_config, initial_state(whole_config, mesh), mesh, batch)
    config = tiny_config(**{"model.bn_mode": "frozen", "train.grad_accum_steps": 4})
    micro = one_step(config, initial_state(config, mesh), mesh, batch)
    for kind, diff in max_diffs(micro, whole).items():
        assert diff < 1e-5, (kind, diff)


def test_mixed_precision_keeps_float32_state():
    full_config, config = tiny_config(), tiny_config(mixed_precision=True)
    mesh, batch = parallel.make_mesh(config), tiny_batch()
    full = one_step(full_config, initial_state(full_config, mesh), mesh, batch)
    assert train.build_segmentation_model(config, NUM_CLASSES).dtype == jnp.bfloat16
    state = initial_state(config, mesh)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    half = one_step(config, state, mesh, batch)
    assert abs(half["loss"] - full["loss"]) < 0.02 * abs(full["loss"])
    assert all(np.isfinite(v).all() for v in half.values())


if __name__ == "__main__":
    print(json.dumps(sharded_vs_single_device()))
