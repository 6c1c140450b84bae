"""VGG-16 DeepLab-LargeFOV: feature strides and the padding to a multiple of the output stride, parameter counts
against torchvision's and DeepLab's, torchvision weight import (features, and fc6 / fc7 into the LargeFOV head and
the classification branch) checked against a NumPy float64 forward of the torch/Caffe computation.

Shapes and counts use `jax.eval_shape`; numbers use tiny widths (base_width 4-8, inputs of ~20-40 pixels).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from test_pretrained import conv_nchw, n_params, random_state_dict, relu, save

from semeda_jax import train
from semeda_jax.models import LargeFOVHead, build_model, load_backbone_weights
from semeda_jax.models.vgg import VGG16, VGG16_FEATURES, pad_to_multiple, vgg16_conv_names

KEY = jax.random.PRNGKey(0)
# torchvision vgg16: features (13 convs) and the whole network with its 1000-way classifier.
TORCHVISION_VGG16_FEATURES_PARAMS = 14_714_688
TORCHVISION_VGG16_PARAMS = 138_357_544
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def vgg16_shapes(width=64, classifier=True) -> dict:
    """torchvision vgg16 state-dict names and shapes at `width` / 64 of the channels (classifier 4096 -> 64x)."""
    shapes, inp = {}, 3
    for index, channels in zip(VGG16_FEATURES, VGG16_WIDTHS):
        out = channels * width // 64
        shapes[f"features.{index}.weight"], shapes[f"features.{index}.bias"] = (out, inp, 3, 3), (out,)
        inp = out
    if classifier:
        fc = 64 * width
        for index, (out, fan_in) in zip((0, 3, 6), ((fc, inp * 49), (fc, fc), (1000, fc))):
            shapes[f"classifier.{index}.weight"], shapes[f"classifier.{index}.bias"] = (out, fan_in), (out,)
    return shapes


def abstract_variables(name, shape=(1, 33, 33, 3), **fields):
    model = build_model(name, num_classes=fields.pop("num_classes", 21), **fields)
    return model, jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct(shape, jnp.float32))


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


# ---------------------------------------------------------------- shapes and padding


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("height, width", [(33, 41), (32, 48), (17, 9)])
def test_feature_and_logit_shapes_at_both_strides(output_stride, height, width):
    model, variables = abstract_variables("deeplab_largefov", (2, height, width, 3), num_classes=5, base_width=8,
                                          output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)["logits"]
    cells = (math.ceil(height / output_stride), math.ceil(width / output_stride))
    assert logits.shape == (2, *cells, 5) and logits.dtype == jnp.float32
    features = jax.eval_shape(lambda x: VGG16(base_width=8, output_stride=output_stride).init_with_output(KEY, x)[0],
                              x)
    assert features["out"].shape == (2, *cells, 64)
    # conv3_3 at stride 4 of the padded image
    assert features["low_level"].shape == (2, cells[0] * output_stride // 4, cells[1] * output_stride // 4, 32)


def test_padding_is_zeros_at_the_bottom_and_right():
    x = np.random.default_rng(0).normal(size=(2, 9, 17, 3))
    padded = np.asarray(pad_to_multiple(jnp.asarray(x), 8))
    assert padded.shape == (2, 16, 24, 3)
    np.testing.assert_array_equal(padded[:, :9, :17], x)
    assert not padded[:, 9:].any() and not padded[:, :, 17:].any()
    assert pad_to_multiple(jnp.asarray(padded), 8).shape == padded.shape


def test_an_image_and_its_padded_copy_give_the_same_features():
    model = VGG16(base_width=4, output_stride=16)
    x = jax.random.normal(KEY, (1, 21, 30, 3), jnp.float32)
    variables = model.init(KEY, x)
    out = model.apply(variables, x)["out"]
    padded = model.apply(variables, jnp.pad(x, ((0, 0), (0, 11), (0, 2), (0, 0))))["out"]
    assert out.shape == padded.shape == (1, 2, 2, 32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(padded))


def test_bad_depth_and_stride_are_named():
    with pytest.raises(ValueError, match="depth: backbone 'vgg16' has depth 16, got 101"):
        abstract_variables("deeplab_largefov", depth=101, base_width=4)
    with pytest.raises(ValueError, match=r"output_stride: got 32; valid values for vgg16 are \[8, 16\]"):
        abstract_variables("deeplab_largefov", output_stride=32, base_width=4)
    with pytest.raises(ValueError, match="stem: 'deeplab' is a ResNet stem; backbone='vgg16'"):
        build_model("deeplab_largefov", num_classes=3, stem="deeplab")


@pytest.mark.parametrize("output_stride, rate", [(8, 12), (16, 6)])
def test_largefov_fc6_reaches_exactly_rate_cells_away(output_stride, rate):
    """d logits[centre] / d features is nonzero exactly at row/column offsets {0, +-rate} (fc6's 3x3 taps)."""
    head = LargeFOVHead(num_classes=2, output_stride=output_stride, head_width=4)
    features = jnp.zeros((1, 2 * rate + 3, 2 * rate + 3, 3))
    params = head.init(KEY, {"out": features})["params"]
    params = {**params, "fc6": {**params["fc6"], "bias": jnp.full((4,), 10.0)},  # every ReLU active
              "fc7": {**params["fc7"], "bias": jnp.full((4,), 10.0)}}
    centre = rate + 1
    grad = jax.grad(lambda f: head.apply({"params": params}, {"out": f})[0, centre, centre].sum())(features)
    rows, cols = np.nonzero(np.abs(np.asarray(grad[0])).sum(-1))
    offsets = {centre - rate, centre, centre + rate}
    assert set(rows) == offsets and set(cols) == offsets


# ---------------------------------------------------------------- parameter counts


def test_parameter_counts_match_torchvision_and_deeplab_largefov():
    _, variables = abstract_variables("deeplab_largefov", num_classes=21)
    params = variables["params"]
    assert "batch_stats" not in variables  # VGG-16 has no batch norm
    assert count(params["backbone"]) == TORCHVISION_VGG16_FEATURES_PARAMS == n_params(vgg16_shapes(classifier=False))
    # DeepLab-LargeFOV: fc6 3x3 512 -> 1024 (dilation 12), fc7 1x1 1024 -> 1024, fc8 1024 -> 21, all with biases
    assert count(params["fc6"]) == 3 * 3 * 512 * 1024 + 1024
    assert count(params["fc7"]) == 1024 * 1024 + 1024
    assert count(params["classifier"]) == 1024 * 21 + 21
    assert n_params(vgg16_shapes()) == TORCHVISION_VGG16_PARAMS
    assert tuple(params["backbone"]) == vgg16_conv_names()
    assert params["fc6"]["kernel"].shape == (3, 3, 512, 1024)


# ---------------------------------------------------------------- weight import


def max_pool_nchw(x, stride):
    """3x3 max pool, padding 1 (padding never wins), stride `stride`: DeepLab's pool layers, NCHW."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(-2, -1))


def deeplab_vgg_forward(state, x, output_stride):
    """conv5 features (after pool5) of DeepLab's VGG-16 in float64, NCHW, x already a multiple of the stride."""
    strides = (2, 2, 2, 2 if output_stride == 16 else 1, 1)
    layer = iter(VGG16_FEATURES)
    for block, num_convs in enumerate((2, 2, 3, 3, 3)):
        dilation = 2 if block == 4 and output_stride == 8 else 1
        for _ in range(num_convs):
            index = next(layer)
            x = relu(conv_nchw(x, state[f"features.{index}.weight"], padding=dilation, dilation=dilation)
                     + state[f"features.{index}.bias"][None, :, None, None])
        x = max_pool_nchw(x, strides[block])
    return x


@pytest.fixture(scope="module")
def tiny_state():
    """A torchvision-layout VGG-16 state dict at 1/16 of the width (4..32 channels, classifier 256)."""
    return random_state_dict(vgg16_shapes(width=4), seed=1)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_mapped_weights_reproduce_the_deeplab_forward(tmp_path, tiny_state, output_stride):
    _, variables = abstract_variables("deeplab_largefov", num_classes=3, base_width=4,
                                          output_stride=output_stride)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    loaded = load_backbone_weights(variables, save(tiny_state, tmp_path / "vgg16.safetensors"), backbone="vgg16",
                                   log=lambda line: None)
    x = np.random.default_rng(2).normal(size=(1, 32, 32, 3))
    features = VGG16(base_width=4, output_stride=output_stride, dtype=jnp.float64).apply(
        {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), loaded["params"]["backbone"])},
        jnp.asarray(x))["out"]
    expected = deeplab_vgg_forward(tiny_state, x.transpose(0, 3, 1, 2), output_stride)
    np.testing.assert_allclose(np.asarray(features), expected.transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-9)


def test_fc6_fc7_fill_the_largefov_head_and_the_classification_branch(tmp_path, tiny_state):
    _, variables = abstract_variables("deeplab_largefov_guidance", num_classes=3, base_width=4)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    lines = []
    loaded = load_backbone_weights(variables, save(tiny_state, tmp_path / "vgg16.npz"), backbone="vgg16",
                                   log=lines.append)["params"]
    w6, b6 = tiny_state["classifier.0.weight"], tiny_state["classifier.0.bias"]  # [256, 32*49]
    w7, b7 = tiny_state["classifier.3.weight"], tiny_state["classifier.3.bias"]
    # LargeFOV (64 filters): filter f = torch filter 4f, tap (i, j) = torch tap (3i, 3j)
    kernel = np.asarray(loaded["fc6"]["kernel"])
    assert kernel.shape == (3, 3, 32, 64)
    torch6 = w6.reshape(256, 32, 7, 7)
    for i, j, c, f in [(0, 0, 0, 0), (2, 1, 31, 63), (1, 2, 5, 17)]:
        assert kernel[i, j, c, f] == torch6[4 * f, c, 3 * i, 3 * j]
    np.testing.assert_array_equal(loaded["fc6"]["bias"], b6[::4])
    np.testing.assert_array_equal(loaded["fc7"]["kernel"][0, 0], w7[::4, ::4].T)
    np.testing.assert_array_equal(loaded["fc7"]["bias"], b7[::4])
    # the branch's dense fc6 on the NHWC pool computes torch's Linear on the NCHW flatten of the same pool
    pooled = np.random.default_rng(3).normal(size=(7, 7, 32))
    branch = loaded["class_branch"]
    ours = pooled.reshape(-1) @ np.asarray(branch["fc6"]["kernel"], np.float64) + branch["fc6"]["bias"]
    np.testing.assert_allclose(ours, w6 @ pooled.transpose(2, 0, 1).reshape(-1) + b6, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(branch["fc7"]["kernel"], w7.T)
    assert not np.any(branch["classifier"]["kernel"]) and not np.any(loaded["classifier"]["kernel"])
    assert "into the backbone, fc6, fc7, class_branch" in lines[0] and "classifier.6.weight" in lines[0]


def test_train_state_takes_the_head_layers_too(tmp_path, tiny_state):
    from configs import common
    config = common.base_config()
    config.model.update(name="deeplab_largefov_guidance", backbone="vgg16", depth=16, stem="standard",
                        base_width=4, pretrained=save(tiny_state, tmp_path / "vgg16.npz"))
    _, variables = abstract_variables("deeplab_largefov_guidance", num_classes=3, base_width=4)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
    state = train.TrainState.create(apply_fn=None, params=zeros["params"], tx=optax.sgd(0.1), batch_stats={})
    loaded = train.load_pretrained_backbone(config, state, lambda line: None)
    np.testing.assert_array_equal(loaded.params["class_branch"]["fc7"]["kernel"], tiny_state["classifier.3.weight"].T)
    np.testing.assert_array_equal(loaded.params["fc7"]["bias"], tiny_state["classifier.3.bias"][::4])
    np.testing.assert_array_equal(loaded.params["backbone"]["conv5_3"]["bias"], tiny_state["features.28.bias"])
    assert loaded.params["classifier"] is state.params["classifier"]  # untouched subtrees are not re-placed


def test_a_features_only_file_leaves_fc6_fc7_random_and_says_so(tmp_path, tiny_state):
    features_only = {k: v for k, v in tiny_state.items() if k.startswith("features.")}
    _, variables = abstract_variables("deeplab_largefov", num_classes=3, base_width=4)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    lines = []
    loaded = load_backbone_weights(variables, save(features_only, tmp_path / "f.npz"), backbone="vgg16",
                                   log=lines.append)
    assert loaded["params"]["fc6"] is variables["params"]["fc6"]
    assert "loaded 26 vgg16 tensors into the backbone; ignored nothing" in lines[0]
    # an ASPP head has no fc6/fc7: the classifier tensors are ignored by name
    _, aspp = abstract_variables("deeplab_v3", num_classes=3, backbone="vgg16", base_width=4)
    lines = []
    load_backbone_weights(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), aspp),
                          save(tiny_state, tmp_path / "all.npz"), backbone="vgg16", log=lines.append)
    assert "ignored classifier.0.bias, classifier.0.weight, classifier.3.bias" in lines[0]


def test_mismatched_files_are_named(tmp_path, tiny_state):
    _, variables = abstract_variables("deeplab_largefov_guidance", num_classes=3, base_width=4, class_reduce=16)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    path = save(tiny_state, tmp_path / "vgg16.npz")
    with pytest.raises(ValueError, match=r"vgg16.npz: VGG's fc6/fc7 give class_branch/fc6/kernel the shape "
                                         r"\(1568,256\) but the model has \(784,256\)"):
        load_backbone_weights(variables, path, backbone="vgg16")
    partial = {k: v for k, v in tiny_state.items() if k != "classifier.3.bias"}
    with pytest.raises(ValueError, match="but not all of"):
        load_backbone_weights(variables, save(partial, tmp_path / "p.npz"), backbone="vgg16")
    with pytest.raises(ValueError, match="holds vgg16 weights but backbone='resnet'"):
        load_backbone_weights(abstract_variables("deeplab_v3", num_classes=3, depth=18, base_width=4)[1], path,
                              backbone="resnet")
    wide = random_state_dict(vgg16_shapes(width=8))
    with pytest.raises(ValueError, match=r"features.0.bias has shape \(8,\) but backbone/conv1_1/bias expects "
                                         r"\(4,\)"):
        load_backbone_weights(variables, save(wide, tmp_path / "wide.npz"), backbone="vgg16")
