"""Aligned Xception-71 backbone and DeepLab with backbone="xception": shapes, parameter tree, count, errors.

Shapes and counts use `jax.eval_shape` (nothing allocated). Running models are filled from NumPy random numbers
on the abstract tree instead of `model.init`, whose per-shape initialiser compiles take ~30 s for Xception-71 on
a CPU. Numerical equality with timm's computation is tested in test_pretrained.py (mapped weights vs a NumPy
reference of the torch forward).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax.models import BACKBONES, Xception, build_model

KEY = jax.random.PRNGKey(0)
# timm's xception71 (timm/models/xception_aligned.py, 1000 classes): 42,338,736 parameters (timm lists 42.34M).
# By hand: stem 3*32*9 + 64 + 32*64*9 + 128; each separable conv Cin*9 + 2 Cin + Cin*Cout + 2 Cout over the 23
# blocks' 69 convs (5 entry, 16 middle, 2 exit); 1x1 projections + BN of blocks 0-4 and 21; fc 2048*1000 + 1000.
TIMM_XCEPTION71_PARAMS = 42_338_736


def count_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_init(model, shape=(1, 33, 33, 3)):
    return jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct(shape, jnp.float32))


def random_variables(abstract, seed=0):
    """Concrete float32 variables shaped like `abstract`: N(0, 0.1) everywhere, BN variances in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)
    return jax.tree_util.tree_map_with_path(fill, abstract)


def test_xception71_parameter_count_matches_timm():
    variables = abstract_init(Xception(num_classes=1000), (1, 299, 299, 3))
    assert count_params(variables["params"]) == TIMM_XCEPTION71_PARAMS
    # timm's state dict: 440 parameter tensors, 292 running statistics (146 BN layers).
    assert len(jax.tree_util.tree_leaves(variables["params"])) == 440
    assert len(jax.tree_util.tree_leaves(variables["batch_stats"])) == 292


def test_xception71_names_and_shapes():
    params = abstract_init(Xception())["params"]
    assert set(params) == {"stem0", "stem1"} | {f"block{i}" for i in range(23)}
    assert {i for i in range(23) if "shortcut" in params[f"block{i}"]} == {0, 1, 2, 3, 4, 21}
    assert params["stem0"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert params["block4"]["conv3"]["conv_dw"]["kernel"].shape == (3, 3, 1, 728)
    assert params["block21"]["conv2"]["conv_pw"]["kernel"].shape == (1, 1, 728, 1024)
    assert params["block22"]["conv3"]["conv_pw"]["kernel"].shape == (1, 1, 1536, 2048)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_shapes_at_every_output_stride(output_stride):
    model = Xception(base_width=8, output_stride=output_stride)
    height, width = 65, 47  # odd, non-square: every stride-2 layer gives ceil(size / 2)
    features = jax.eval_shape(lambda x: model.init_with_output(KEY, x)[0],
                              jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32))
    assert features["low_level"].shape == (2, math.ceil(height / 4), math.ceil(width / 4), 32)  # 256 * 8 / 64
    assert features["out"].shape == (2, math.ceil(height / output_stride), math.ceil(width / output_stride), 256)


def test_parameter_tree_does_not_depend_on_output_stride_or_multi_grid():
    trees = [jax.tree_util.tree_map(lambda x: x.shape,
                                    abstract_init(Xception(base_width=8, output_stride=os_, multi_grid=grid)))
             for os_, grid in [(32, None), (16, None), (8, None), (16, (1, 2, 4))]]
    assert all(tree == trees[0] for tree in trees[1:])


def test_output_stride_and_multi_grid_change_the_features():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 64, 3)), jnp.float32)
    variables = random_variables(abstract_init(Xception(base_width=8)))
    out = {setting: jax.jit(Xception(base_width=8, output_stride=16, multi_grid=setting).apply)(variables, x)
           for setting in (None, (1, 2, 4))}
    assert np.all(np.isfinite(out[None]["out"]))
    # Same stride-16 grid, different exit-flow rates; the stride-4 features come before the exit flow.
    assert not np.allclose(out[None]["out"], out[(1, 2, 4)]["out"])
    np.testing.assert_array_equal(out[None]["low_level"], out[(1, 2, 4)]["low_level"])


def test_deeplab_v3plus_with_xception_builds_and_runs():
    model = build_model("deeplab_v3plus", num_classes=4, backbone="xception", base_width=8, output_stride=16)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = random_variables(abstract_init(model))
    assert set(variables["params"]) == {"backbone", "aspp", "decoder_low", "decoder_conv1", "decoder_conv2",
                                        "classifier"}
    logits = jax.jit(model.apply)(variables, x)["logits"]
    assert logits.shape == (2, 9, 9, 4) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0


@pytest.mark.parametrize("name", ["deeplab_v2", "deeplab_v3"])
def test_other_deeplabs_take_the_xception_backbone(name):
    model = build_model(name, num_classes=3, backbone="xception", base_width=8, output_stride=16)
    variables = abstract_init(model)
    logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))["logits"]
    assert logits.shape == (1, 3, 3, 3)
    assert "block22" in variables["params"]["backbone"]


def test_resnet_backbone_is_the_default_and_unchanged():
    default = abstract_init(build_model("deeplab_v3plus", num_classes=3, depth=18, base_width=8))
    explicit = abstract_init(build_model("deeplab_v3plus", num_classes=3, depth=18, base_width=8, backbone="resnet"))
    assert jax.tree_util.tree_map(lambda x: x.shape, default) == jax.tree_util.tree_map(lambda x: x.shape, explicit)
    assert "layer4_block1" in default["params"]["backbone"]


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="backbone: unknown 'vgg'") as error:
        abstract_init(build_model("deeplab_v3plus", num_classes=3, backbone="vgg", base_width=8))
    assert all(name in str(error.value) for name in BACKBONES)


def test_depth_sets_the_middle_flow():
    blocks = {depth: set(abstract_init(build_model("deeplab_v3", num_classes=3, backbone="xception", base_width=4,
                                                   depth=depth))["params"]["backbone"])
              for depth in (26, 29)}
    assert {f"block{i}" for i in range(8)} < blocks[26] and "block8" not in blocks[26]  # 5 entry + 1 middle + 2 exit
    assert blocks[29] == blocks[26] | {"block8"}


@pytest.mark.parametrize("kwargs, match", [({"output_stride": 4}, "output_stride"),
                                           ({"depth": 70}, "depth: Xception depth 70"),
                                           ({"depth": 20}, "depth: Xception depth 20"),
                                           ({"stem": "deeplab"}, "stem"),
                                           ({"bn_mode": "sync"}, "bn_mode")])
def test_bad_xception_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        abstract_init(build_model("deeplab_v3", num_classes=3, backbone="xception", base_width=8, **kwargs))
