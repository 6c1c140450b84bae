"""Segmentation models: output shapes, ResNet parameter counts and names, batch-norm modes, registry errors, grads.

Shapes and parameter counts use `jax.eval_shape` (nothing is allocated or computed); numerical tests use tiny
models (ResNet-18, base width 8, inputs of ~32 pixels). Models are float32 even though conftest enables x64.
"""
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from semeda_jax import optim
from semeda_jax.models import MODELS, ResNet, build_model, frozen_bn_mask, upsample_logits
from semeda_jax.models.builder import DEFAULT_DEPTHS

KEY = jax.random.PRNGKey(0)
TINY = {"depth": 18, "base_width": 8}


def count_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_init(model, shape=(1, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape, jnp.float32)))


def paths(tree) -> set:
    return {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def images(shape=(2, 32, 32, 3), seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shapes(name, output_stride, depth):
    backbone = MODELS[name].get("backbone", "resnet")
    if backbone != "resnet":
        depth = DEFAULT_DEPTHS[backbone]  # backbones of one depth (VGG-16, ResNet-38): their own test files
    if backbone == "resnet38" and output_stride != 8:
        pytest.skip("ResNet-38 has output stride 8 only (its refusal of 16: tests/test_resnet38.py)")
    model = build_model(name, num_classes=5, depth=depth, base_width=8, output_stride=output_stride)
    height, width = 33, 41  # odd, non-square: every stride-2 layer gives ceil(size / 2)
    x = jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32)
    variables = jax.eval_shape(model.init, KEY, x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)["logits"]
    stride = 4 if name == "deeplab_v3plus" else output_stride
    assert logits.shape == (2, math.ceil(height / stride), math.ceil(width / stride), 5)
    assert logits.dtype == jnp.float32
    full = jax.eval_shape(lambda y: upsample_logits(y, (height, width)), logits)
    assert full.shape == (2, height, width, 5)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_feature_strides(output_stride):
    model = ResNet(depth=50, base_width=8, output_stride=output_stride)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    features = jax.eval_shape(lambda x: model.init_with_output(KEY, x)[0], x)
    assert features["low_level"].shape == (1, 16, 16, 32)
    assert features["out"].shape == (1, 64 // output_stride, 64 // output_stride, 256)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build_model("deeplab_v3plus", num_classes=3, dtype=jnp.bfloat16, output_stride=16, **TINY)
    variables = abstract_init(model)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 32, 32, 3), jnp.float32)), variables)["logits"]
    assert logits.dtype == jnp.float32


def test_upsample_logits_is_bilinear_half_pixel():
    logits = jnp.arange(4.0).reshape(1, 1, 4, 1) * jnp.ones((1, 2, 4, 1))
    up = upsample_logits(logits, (4, 8))
    # half-pixel centres: output column j samples input position (j + 0.5) / 2 - 0.5, clamped at the borders
    expected = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    np.testing.assert_allclose(np.asarray(up[0, 0, :, 0]), expected, atol=1e-6)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("depth, expected", [(18, 11_689_512), (50, 25_557_032), (101, 44_549_160)])
def test_resnet_parameter_counts_match_torchvision(depth, expected):
    variables = abstract_init(ResNet(depth=depth, num_classes=1000), (1, 224, 224, 3))
    assert count_params(variables["params"]) == expected


def test_resnet50_parameter_names_mirror_torchvision():
    variables = abstract_init(ResNet(depth=50, num_classes=1000), (1, 224, 224, 3))
    params, stats = variables["params"], variables["batch_stats"]
    blocks = {stage: len([k for k in params if k.startswith(f"layer{stage}_block")]) for stage in (1, 2, 3, 4)}
    assert blocks == {1: 3, 2: 4, 3: 6, 4: 3}
    assert set(params) - {f"layer{s}_block{i}" for s, n in blocks.items() for i in range(n)} == {
        "stem_conv", "stem_bn", "fc"}
    assert set(params["layer1_block0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                            "downsample_conv", "downsample_bn"}
    assert "downsample_conv" not in params["layer1_block1"]
    assert params["layer2_block0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert params["fc"]["kernel"].shape == (2048, 1000)
    # torchvision's resnet50 has 161 parameter tensors and 106 running statistics (plus num_batches_tracked).
    assert len(jax.tree_util.tree_leaves(params)) == 161
    assert len(jax.tree_util.tree_leaves(stats)) == 106


def test_deeplab_stem_names_and_shapes():
    params = abstract_init(ResNet(depth=50, stem="deeplab"))["params"]
    kernels = [params[f"stem_conv{i}"]["kernel"].shape for i in (1, 2, 3)]
    assert kernels == [(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128)]
    assert params["layer1_block0"]["conv1"]["kernel"].shape == (1, 1, 128, 64)


def test_parameter_tree_does_not_depend_on_output_stride_or_multi_grid():
    trees = [jax.tree_util.tree_map(lambda x: x.shape, abstract_init(ResNet(output_stride=os_, multi_grid=grid,
                                                                            **TINY)))
             for os_, grid in [(32, None), (16, None), (8, None), (16, (1, 2, 4))]]
    assert all(tree == trees[0] for tree in trees[1:])


# ---------------------------------------------------------------- batch norm


@pytest.fixture(scope="module")
def tiny_resnet_variables():
    """Variables of ResNet(**TINY), initialised once (the tree depends on neither bn_mode nor output stride)."""
    return jax.jit(ResNet(**TINY).init)(KEY, images((1, 32, 32, 3)))


def randomise_batch_stats(variables, seed=3):
    leaves, treedef = jax.tree_util.tree_flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [jax.random.uniform(k, x.shape, x.dtype, 0.5, 1.5) for k, x in zip(keys, leaves)]
    return {**variables, "batch_stats": jax.tree_util.tree_unflatten(treedef, new)}


def test_frozen_bn_ignores_batch_statistics(tiny_resnet_variables):
    model = ResNet(output_stride=16, bn_mode="frozen", **TINY)
    x = images()
    variables = randomise_batch_stats(tiny_resnet_variables)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    train_out, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    eval_out = apply(variables, x, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(train_out["out"], eval_out["out"])


def test_frozen_bn_mask_marks_exactly_bn_scale_and_bias():
    model = build_model("deeplab_v3plus", num_classes=3, output_stride=16, **TINY)
    variables = abstract_init(model)
    params = variables["params"]
    mask = frozen_bn_mask(params)
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
    frozen = {tuple(k.key for k in path) for path, m in jax.tree_util.tree_leaves_with_path(mask) if not m}
    bn_layers = {path[:-1] for path in paths(variables["batch_stats"])}
    assert frozen == {layer + (leaf,) for layer in bn_layers for leaf in ("scale", "bias")}
    assert isinstance(frozen_bn_mask(flax.core.freeze(params)), flax.core.FrozenDict)


def test_frozen_bn_mask_recipe_keeps_bn_parameters_fixed():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2))}, "bn": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}
    frozen = jax.tree_util.tree_map(lambda trainable: not trainable, frozen_bn_mask(params))
    tx = optax.chain(optax.adamw(0.1, weight_decay=0.5), optax.masked(optax.set_to_zero(), frozen))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["bn"]["scale"], params["bn"]["scale"])
    np.testing.assert_array_equal(new["bn"]["bias"], params["bn"]["bias"])
    assert not np.allclose(new["conv"]["kernel"], params["conv"]["kernel"])


def test_weight_decay_applies_to_every_kernel_and_nothing_else():
    """optim.create_optimizer decays conv/dense kernels and the relation module's GRU kernels (input_kernel,
    hidden_kernel), not biases or BN parameters: with zero gradients and no momentum one step moves exactly
    the kernels, by -lr * weight_decay * value."""
    params = {"conv": {"kernel": jnp.full((1, 1, 2, 2), 2.0), "bias": jnp.ones(2)},
              "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
              "gru": {"input_kernel": jnp.full((2, 2, 6), 3.0), "input_bias": jnp.ones((2, 6)),
                      "hidden_kernel": jnp.full((2, 2, 6), 4.0), "hidden_bias": jnp.ones((2, 2))}}
    config = ml_collections.ConfigDict(dict(weight_decay=0.5, momentum=0.0))
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1), params, freeze_batch_norm=False)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    for path, update in jax.tree_util.tree_leaves_with_path(updates):
        value = params
        for key in path:
            value = value[key.key]
        want = -0.1 * 0.5 * value if path[-1].key.endswith("kernel") else jnp.zeros_like(value)
        np.testing.assert_allclose(update, want, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_train_bn_uses_batch_statistics_and_updates_running_averages(tiny_resnet_variables):
    momentum, eps = 0.9, 1e-5
    model = ResNet(output_stride=16, bn_mode="train", bn_momentum=momentum, **TINY)
    x = images()
    variables = randomise_batch_stats(tiny_resnet_variables)
    scale = jax.random.uniform(jax.random.PRNGKey(4), (8,), jnp.float32, 0.5, 2.0)
    bias = jax.random.normal(jax.random.PRNGKey(5), (8,), jnp.float32)
    variables["params"] = {**variables["params"], "stem_bn": {"scale": scale, "bias": bias}}
    apply = jax.jit(model.apply, static_argnames=("train", "mutable", "capture_intermediates"))

    _, state = apply(variables, x, train=True, mutable=("batch_stats", "intermediates"), capture_intermediates=True)
    conv_out = np.asarray(state["intermediates"]["stem_conv"]["__call__"][0], np.float64)
    bn_out = np.asarray(state["intermediates"]["stem_bn"]["__call__"][0], np.float64)
    mean, var = conv_out.mean(axis=(0, 1, 2)), conv_out.var(axis=(0, 1, 2))
    expected = (conv_out - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)
    np.testing.assert_allclose(bn_out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn_out.mean(axis=(0, 1, 2)), bias, atol=1e-4)  # per-channel mean = beta

    old, new = variables["batch_stats"]["stem_bn"], state["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], momentum * np.asarray(old["mean"]) + (1 - momentum) * mean, rtol=1e-4)
    np.testing.assert_allclose(new["var"], momentum * np.asarray(old["var"]) + (1 - momentum) * var, rtol=1e-4)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), state["batch_stats"],
                                     variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))

    # eval mode normalises with the running averages
    _, state = apply(variables, x, train=False, mutable=("intermediates",), capture_intermediates=True)
    conv_out = np.asarray(state["intermediates"]["stem_conv"]["__call__"][0], np.float64)
    bn_out = np.asarray(state["intermediates"]["stem_bn"]["__call__"][0], np.float64)
    expected = (conv_out - np.asarray(old["mean"])) / np.sqrt(np.asarray(old["var"]) + eps) * np.asarray(scale) \
        + np.asarray(bias)
    np.testing.assert_allclose(bn_out, expected, rtol=1e-4, atol=1e-4)


def test_multi_grid_changes_the_features(tiny_resnet_variables):
    x = images((1, 64, 64, 3))  # layer4 is 4x4 at OS16: wide enough for rates 2 and 4 to differ
    variables = tiny_resnet_variables
    plain = jax.jit(ResNet(output_stride=16, **TINY).apply)(variables, x)["out"]
    grid = jax.jit(ResNet(output_stride=16, multi_grid=(1, 2, 4), **TINY).apply)(variables, x)["out"]
    assert plain.shape == grid.shape and not np.allclose(plain, grid)


# ---------------------------------------------------------------- registry


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="deeplab_v4") as error:
        build_model("deeplab_v4", num_classes=3)
    assert all(name in str(error.value) for name in MODELS)


def test_unknown_argument_is_named():
    with pytest.raises(ValueError, match="num_clases"):
        build_model("deeplab_v3", num_clases=3)


@pytest.mark.parametrize("attribute, value", [("depth", 42), ("output_stride", 4), ("stem", "fancy"),
                                              ("bn_mode", "sync")])
def test_bad_attribute_value_is_named(attribute, value):
    model = build_model("deeplab_v3", num_classes=3, **{**TINY, attribute: value})
    with pytest.raises(ValueError, match=attribute):
        abstract_init(model)


# ---------------------------------------------------------------- gradients


def test_jitted_forward_backward_of_tiny_v3plus_is_finite():
    model = build_model("deeplab_v3plus", num_classes=4, output_stride=16, bn_mode="train", **TINY)
    x = images()
    labels = jax.random.randint(jax.random.PRNGKey(2), (2, 8, 8), 0, 4)
    variables = jax.jit(model.init)(KEY, x)

    @jax.jit
    def loss_and_grads(params, batch_stats, x, labels, key):
        def loss_fn(params):
            outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                           mutable=["batch_stats"], rngs={"dropout": key})
            logits = outputs["logits"]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, updates), grads = loss_and_grads(variables["params"], variables["batch_stats"], x, labels, KEY)
    assert np.isfinite(loss)
    grad_norms = jax.tree_util.tree_map(lambda g: float(jnp.linalg.norm(g)), grads)
    assert all(np.isfinite(n) and n > 0 for n in jax.tree_util.tree_leaves(grad_norms))
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])


# ---------------------------------------------------------------- rematerialisation


def remat_loss_and_grads(backbone, remat, dtype):
    """Loss, parameter gradients and batch_stats updates of a tiny v3+ (train-mode BN) built with `remat`."""
    depth = 26 if backbone == "xception" else 18
    model = build_model("deeplab_v3plus", num_classes=4, output_stride=16, bn_mode="train", backbone=backbone,
                        depth=depth, base_width=8, remat=remat, dtype=dtype)
    x = images()
    labels = jax.random.randint(jax.random.PRNGKey(2), (2, 8, 8), 0, 4)
    variables = model.init(KEY, x)

    def loss_fn(params):
        outputs, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": KEY})
        return optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], labels).mean(), updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    return loss, grads, updates


@pytest.mark.parametrize("backbone, remat, dtype", [("resnet", "blocks", jnp.float32),
                                                    ("resnet", "dots_saveable", jnp.bfloat16),
                                                    ("xception", "blocks", jnp.float32),
                                                    ("xception", "dots_with_no_batch_dims_saveable", jnp.float32)])
def test_remat_keeps_values_gradients_and_batch_stats(backbone, remat, dtype):
    want = remat_loss_and_grads(backbone, "none", dtype)
    got = remat_loss_and_grads(backbone, remat, dtype)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        if dtype == jnp.float32:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        else:  # the recomputed bfloat16 activations may be fused, so rounded, differently: bfloat16's tolerance
            assert float(jnp.linalg.norm(g - w)) <= 3e-2 * float(jnp.linalg.norm(w)) + 1e-6


def test_remat_recomputes_the_blocks_in_the_backward_pass():
    model = build_model("deeplab_v3", num_classes=3, output_stride=16, remat="blocks", **TINY)
    x = images()
    variables = model.init(KEY, x)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply({**variables, "params": p}, x)["logits"].sum()))(
        variables["params"])
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)


def test_unknown_remat_is_named():
    with pytest.raises(ValueError, match=r"remat: unknown 'layers'; valid values are \['none', 'blocks'"):
        build_model("deeplab_v3", num_classes=3, remat="layers", **TINY)
    with pytest.raises(ValueError, match="remat: backbone 'vgg16' has no rematerialised blocks"):
        build_model("deeplab_largefov", num_classes=3, remat="blocks")
    build_model("deeplab_largefov", num_classes=3, remat="none")
