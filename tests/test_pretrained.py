"""Pretrained backbone import: torchvision/timm state dicts (safetensors, npz) -> flax backbone variables.

State dicts are generated here from the published architectures (torchvision resnet101, timm resnet101s's deep
stem, timm xception71) with their real names and torch-layout shapes; the generators are checked against the
published parameter counts. Full-size files (~170 MB) are not written: the full-size names and shapes are mapped
from zero-stride arrays, and values travel through real files at base width 8 (real names and depths).
Numerics: mapped weights must reproduce a NumPy float64 forward of the torch computation (NCHW
cross-correlation, eval-mode BN) for whole tiny backbones.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from safetensors.numpy import save_file

from semeda_jax.models import ResNet, Xception, build_model, load_backbone_weights
from semeda_jax.models.pretrained import convert_state_dict

KEY = jax.random.PRNGKey(0)
RESNET101_BLOCKS = (3, 4, 23, 3)
# torchvision resnet101 / timm xception71 parameter counts, classifiers included (running statistics excluded).
TORCHVISION_RESNET101_PARAMS = 44_549_160
TIMM_XCEPTION71_PARAMS = 42_338_736
# timm xception71 blocks: (output widths of the three separable convs, stride, residual).
XCEPTION71 = ([((128,) * 3, 2, True), ((256,) * 3, 1, True), ((256,) * 3, 2, True), ((728,) * 3, 1, True),
               ((728,) * 3, 2, True)] + [((728,) * 3, 1, True)] * 16
              + [((728, 1024, 1024), 2, True), ((1536, 1536, 2048), 1, False)])


# ---------------------------------------------------------------- state-dict generators (torch names and shapes)


def _conv(shapes, name, out, inp, k):
    shapes[f"{name}.weight"] = (out, inp, k, k)


def _bn(shapes, name, channels):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{leaf}"] = (channels,)
    shapes[f"{name}.num_batches_tracked"] = ()


def resnet_shapes(blocks=RESNET101_BLOCKS, width=64, deep_stem=False) -> dict:
    """torchvision resnet (bottleneck) state-dict shapes; deep_stem: timm resnet*s (stem 3x3 convs w, w, 2w)."""
    shapes = {}
    if deep_stem:
        _conv(shapes, "conv1.0", width, 3, 3), _bn(shapes, "conv1.1", width)
        _conv(shapes, "conv1.3", width, width, 3), _bn(shapes, "conv1.4", width)
        _conv(shapes, "conv1.6", 2 * width, width, 3)
        inplanes = 2 * width
    else:
        _conv(shapes, "conv1", width, 3, 7)
        inplanes = width
    _bn(shapes, "bn1", inplanes)
    for stage, num_blocks in enumerate(blocks, start=1):
        planes = width * 2 ** (stage - 1)
        for i in range(num_blocks):
            prefix = f"layer{stage}.{i}"
            _conv(shapes, f"{prefix}.conv1", planes, inplanes, 1), _bn(shapes, f"{prefix}.bn1", planes)
            _conv(shapes, f"{prefix}.conv2", planes, planes, 3), _bn(shapes, f"{prefix}.bn2", planes)
            _conv(shapes, f"{prefix}.conv3", 4 * planes, planes, 1), _bn(shapes, f"{prefix}.bn3", 4 * planes)
            if i == 0:
                _conv(shapes, f"{prefix}.downsample.0", 4 * planes, inplanes, 1)
                _bn(shapes, f"{prefix}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    shapes["fc.weight"], shapes["fc.bias"] = (1000, inplanes), (1000,)
    return shapes


def xception_shapes(width=64) -> dict:
    """timm xception71 state-dict shapes; channels c scaled to c * width // 64."""
    def scale(c):
        return max(1, c * width // 64)
    shapes = {}
    _conv(shapes, "stem.0.conv", scale(32), 3, 3), _bn(shapes, "stem.0.bn", scale(32))
    _conv(shapes, "stem.1.conv", scale(64), scale(32), 3), _bn(shapes, "stem.1.bn", scale(64))
    inplanes = scale(64)
    for i, (outs, stride, residual) in enumerate(XCEPTION71):
        outs = [scale(c) for c in outs]
        if residual and (outs[-1] != inplanes or stride != 1):
            _conv(shapes, f"blocks.{i}.shortcut.conv", outs[-1], inplanes, 1)
            _bn(shapes, f"blocks.{i}.shortcut.bn", outs[-1])
        channels = inplanes
        for k, out in enumerate(outs, start=1):
            prefix = f"blocks.{i}.stack.conv{k}"
            shapes[f"{prefix}.conv_dw.weight"] = (channels, 1, 3, 3)
            _bn(shapes, f"{prefix}.bn_dw", channels)
            _conv(shapes, f"{prefix}.conv_pw", out, channels, 1), _bn(shapes, f"{prefix}.bn_pw", out)
            channels = out
        inplanes = outs[-1]
    shapes["head.fc.weight"], shapes["head.fc.bias"] = (1000, inplanes), (1000,)
    return shapes


def random_state_dict(shapes, seed=0) -> dict:
    """He-normal conv weights, small biases/means, variances in [0.05, 1] (where BN's epsilon matters), BN
    weights in [0.2, 0.5] * sqrt(variance) (keeps activations O(1) through ~100 layers), num_batches_tracked
    int64 scalars."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            state[name] = np.array(1000, np.int64)
        elif len(shape) == 4:
            state[name] = rng.normal(0, math.sqrt(2 / math.prod(shape[1:])), shape).astype(np.float32)
        elif leaf == "running_var":
            state[name] = rng.uniform(0.05, 1.0, shape).astype(np.float32)
        elif leaf == "weight" and len(shape) == 1:
            state[name] = rng.uniform(0.2, 0.5, shape).astype(np.float32)
        else:
            state[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    for name in state:
        if name.endswith(".running_var"):
            state[name.replace(".running_var", ".weight")] *= np.sqrt(state[name])
    return state


def n_params(shapes) -> int:
    return sum(math.prod(s) for n, s in shapes.items() if not n.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked")))


def expected_location(name, backbone, deep_stem=False):
    """Where torch `name` must land: (collection, path in the backbone subtree), written out per architecture."""
    parts = name.split(".")
    leaf = parts[-1]
    if backbone == "resnet":
        stem = {"conv1": ["stem_conv"], "bn1": ["stem_bn3" if deep_stem else "stem_bn"], "conv1.0": ["stem_conv1"],
                "conv1.1": ["stem_bn1"], "conv1.3": ["stem_conv2"], "conv1.4": ["stem_bn2"], "conv1.6": ["stem_conv3"]}
        module = ".".join(parts[:-1])
        if module in stem:
            path = stem[module]
        elif parts[2] == "downsample":
            path = [f"{parts[0]}_block{parts[1]}", {"0": "downsample_conv", "1": "downsample_bn"}[parts[3]]]
        else:
            path = [f"{parts[0]}_block{parts[1]}", parts[2]]
    else:
        if parts[0] == "stem":
            path = [f"stem{parts[1]}", parts[2]]
        elif parts[2] == "shortcut":
            path = [f"block{parts[1]}", "shortcut", parts[3]]
        else:
            path = [f"block{parts[1]}", parts[3], parts[4]]
    is_bn = "bn" in path[-1]
    collection, flax_leaf = {"weight": ("params", "scale" if is_bn else "kernel"), "bias": ("params", "bias"),
                             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}[leaf]
    return collection, tuple(path) + (flax_leaf,)


def lookup(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def deeplab_variables(backbone, width=8, **kwargs):
    model = build_model("deeplab_v3plus", num_classes=3, backbone=backbone, base_width=width, **kwargs)
    return jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))


def save(state, path):
    if str(path).endswith(".npz"):
        np.savez(path, **state)
    else:
        save_file(state, str(path))
    return str(path)


# ---------------------------------------------------------------- generators and full-size mapping


def test_generators_have_the_published_parameter_counts():
    assert n_params(resnet_shapes()) == TORCHVISION_RESNET101_PARAMS
    assert n_params(xception_shapes()) == TIMM_XCEPTION71_PARAMS
    # torchvision resnet101: 314 parameters + 3 x 104 BN buffers; timm xception71: 440 parameters + 3 x 146.
    assert len(resnet_shapes()) == 314 + 3 * 104
    assert len(xception_shapes()) == 440 + 3 * 146


@pytest.mark.parametrize("backbone, shapes", [("resnet", resnet_shapes()), ("xception", xception_shapes())])
def test_full_size_names_and_shapes_cover_every_backbone_variable(backbone, shapes):
    variables = deeplab_variables(backbone, width=64)
    zeros = {name: np.broadcast_to(np.zeros((), np.float32), shape) for name, shape in shapes.items()}
    params, stats, ignored = convert_state_dict(zeros, variables["params"]["backbone"],
                                                variables["batch_stats"]["backbone"], backbone=backbone)
    shape_of = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    assert shape_of(params) == shape_of(variables["params"]["backbone"])
    assert shape_of(stats) == shape_of(variables["batch_stats"]["backbone"])
    classifier = {"fc.weight", "fc.bias"} if backbone == "resnet" else {"head.fc.weight", "head.fc.bias"}
    assert set(ignored) == classifier | {n for n in shapes if n.endswith("num_batches_tracked")}


# ---------------------------------------------------------------- values through real files


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
@pytest.mark.parametrize("backbone, shapes", [("resnet", resnet_shapes(width=8)),
                                              ("xception", xception_shapes(width=8)),
                                              ("resnet-deep-stem", resnet_shapes(width=8, deep_stem=True))])
def test_round_trip_puts_every_number_in_its_place(tmp_path, backbone, shapes, suffix):
    state = random_state_dict(shapes)
    kind = backbone.split("-")[0]
    variables = deeplab_variables(kind, **({"stem": "deeplab"} if backbone == "resnet-deep-stem" else {}))
    path = save(state, tmp_path / f"weights.{suffix}")
    lines = []
    loaded = load_backbone_weights(variables, path, backbone=kind, log=lines.append)

    for name, value in state.items():
        if name.endswith("num_batches_tracked") or "fc." in name:
            continue
        collection, location = expected_location(name, kind, deep_stem=backbone == "resnet-deep-stem")
        expected = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
        np.testing.assert_array_equal(lookup(loaded[collection]["backbone"], location), expected, err_msg=name)
    # hand-written anchors of the rule
    if backbone == "resnet":
        np.testing.assert_array_equal(loaded["params"]["backbone"]["layer3_block22"]["conv2"]["kernel"][1, 2, 5, 7],
                                      state["layer3.22.conv2.weight"][7, 5, 1, 2])
        np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["layer2_block0"]["downsample_bn"]["var"],
                                      state["layer2.0.downsample.1.running_var"])
    if backbone == "xception":
        np.testing.assert_array_equal(loaded["params"]["backbone"]["block21"]["conv3"]["conv_dw"]["kernel"][0, 2, 0],
                                      state["blocks.21.stack.conv3.conv_dw.weight"][:, 0, 0, 2])
    # the heads are passed through untouched, the input is not modified
    assert loaded["params"]["aspp"] is variables["params"]["aspp"]
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(variables))
    counters = sum(name.endswith("num_batches_tracked") for name in state)
    assert len(lines) == 1 and path in lines[0]
    assert f"{counters} x *.num_batches_tracked" in lines[0] and "fc.weight" in lines[0]


# ---------------------------------------------------------------- numerics: NumPy float64 torch forward


def conv_nchw(x, weight, stride=1, padding=0, dilation=1):
    """torch.nn.functional.conv2d (cross-correlation) in float64; depthwise when weight is [C,1,kh,kw] and x has
    C > 1 channels (groups = C)."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    k = weight.shape[-1]
    span = dilation * (k - 1) + 1
    windows = sliding_window_view(x, (span, span), axis=(2, 3))[:, :, ::stride, ::stride, ::dilation, ::dilation]
    if weight.shape[1] == 1 and x.shape[1] > 1:
        return np.einsum("nchwij,cij->nchw", windows, weight[:, 0].astype(np.float64))
    return np.einsum("nchwij,ocij->nohw", windows, weight.astype(np.float64))


def bn_nchw(x, state, name, eps):
    def per_channel(leaf):
        return state[f"{name}.{leaf}"].astype(np.float64)[None, :, None, None]
    return (x - per_channel("running_mean")) / np.sqrt(per_channel("running_var") + eps) * per_channel("weight") \
        + per_channel("bias")


def relu(x):
    return np.maximum(x, 0)


def torchvision_resnet_forward(state, x, blocks):
    """torchvision ResNet (bottleneck, v1.5) features at stride 32: (layer1 output, layer4 output), NCHW."""
    def bn(y, name):
        return bn_nchw(y, state, name, 1e-5)
    x = relu(bn(conv_nchw(x, state["conv1.weight"], 2, 3), "bn1"))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-2, -1))
    for stage, num_blocks in enumerate(blocks, start=1):
        for i in range(num_blocks):
            p = f"layer{stage}.{i}."
            stride = 2 if stage > 1 and i == 0 else 1
            y = relu(bn(conv_nchw(x, state[p + "conv1.weight"]), p + "bn1"))
            y = relu(bn(conv_nchw(y, state[p + "conv2.weight"], stride, 1), p + "bn2"))
            y = bn(conv_nchw(y, state[p + "conv3.weight"]), p + "bn3")
            if p + "downsample.0.weight" in state:
                x = bn(conv_nchw(x, state[p + "downsample.0.weight"], stride), p + "downsample.1")
            x = relu(y + x)
        if stage == 1:
            low_level = x
    return low_level, x


def timm_xception_forward(state, x, output_stride):
    """timm XceptionAligned(xception71 config, output_stride) features: (blocks.2.stack.act3, final), NCHW."""
    def bn(y, name):
        return bn_nchw(y, state, name, 1e-3)

    def pad(stride, dilation):  # timm get_padding for a 3x3 conv
        return ((stride - 1) + dilation * 2) // 2
    x = relu(bn(conv_nchw(x, state["stem.0.conv.weight"], 2, 1), "stem.0.bn"))
    x = relu(bn(conv_nchw(x, state["stem.1.conv.weight"], 1, 1), "stem.1.bn"))
    current_stride, current_dilation = 2, 1
    for i, (_, stride, residual) in enumerate(XCEPTION71):
        dilation = current_dilation
        if stride > 1:
            if current_stride * stride > output_stride:
                current_dilation *= stride
                stride = 1
            else:
                current_stride *= stride
        y = x
        for k in (1, 2, 3):
            q = f"blocks.{i}.stack.conv{k}."
            s = stride if k == 3 else 1
            if residual:
                y = relu(y)
            if i == 2 and k == 3:
                low_level = y
            y = bn(conv_nchw(y, state[q + "conv_dw.weight"], s, pad(s, dilation), dilation), q + "bn_dw")
            y = y if residual else relu(y)
            y = bn(conv_nchw(y, state[q + "conv_pw.weight"]), q + "bn_pw")
            y = y if residual else relu(y)
        if not residual:
            x = y
        elif f"blocks.{i}.shortcut.conv.weight" in state:
            x = y + bn(conv_nchw(x, state[f"blocks.{i}.shortcut.conv.weight"], stride), f"blocks.{i}.shortcut.bn")
        else:
            x = y + x
    return low_level, x


def assert_close_nhwc(actual, expected_nchw):
    expected = expected_nchw.transpose(0, 2, 3, 1)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("backbone", ["resnet", "xception"])
def test_mapped_weights_reproduce_the_torch_forward(backbone):
    """Whole tiny backbones (base width 8): ResNet-50 at output stride 32 (torchvision's dilation convention
    differs from ours below 32), Xception-71 at 16 (timm's rule: exit flow at rate 2)."""
    if backbone == "resnet":
        blocks, shapes = (3, 4, 6, 3), resnet_shapes((3, 4, 6, 3), width=8)
        model = ResNet(depth=50, base_width=8, output_stride=32)
    else:
        shapes = xception_shapes(width=8)
        model = Xception(base_width=8, output_stride=16)
    state = random_state_dict(shapes, seed=3)
    images = np.random.default_rng(4).normal(size=(2, 3, 45, 37))  # NCHW, odd sizes
    x = jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float32)
    abstract = jax.eval_shape(model.init, KEY, x)
    params, stats, _ = convert_state_dict(state, abstract["params"], abstract["batch_stats"], backbone=backbone)
    features = jax.jit(model.apply)({"params": params, "batch_stats": stats}, x)

    if backbone == "resnet":
        low_level, out = torchvision_resnet_forward(state, images, blocks)
    else:
        low_level, out = timm_xception_forward(state, images, output_stride=16)
    assert_close_nhwc(features["low_level"], low_level)
    assert_close_nhwc(features["out"], out)


# ---------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def resnet_state():
    return random_state_dict(resnet_shapes(width=8))


@pytest.fixture(scope="module")
def resnet_variables():
    return deeplab_variables("resnet")


def test_first_shape_mismatch_is_named_with_both_shapes_and_the_file(tmp_path, resnet_state, resnet_variables):
    state = dict(resnet_state)
    state["layer3.4.conv2.weight"] = np.zeros((16, 16, 3, 3), np.float32)
    state["layer4.1.bn2.weight"] = np.zeros((7,), np.float32)
    path = save(state, tmp_path / "r101.safetensors")
    message = (f"{path}: layer3.4.conv2.weight has shape (16,16,3,3) -> (3,3,16,16) but "
               "backbone/layer3_block4/conv2/kernel expects (3,3,32,32)")
    with pytest.raises(ValueError) as error:
        load_backbone_weights(resnet_variables, path, backbone="resnet")
    assert str(error.value) == message
    state["layer3.4.conv2.weight"] = resnet_state["layer3.4.conv2.weight"]
    with pytest.raises(ValueError, match=r"layer4\.1\.bn2\.weight has shape \(7,\) but "
                                         r"backbone/layer4_block1/bn2/scale expects \(64,\)"):
        load_backbone_weights(resnet_variables, save(state, tmp_path / "r101.npz"), backbone="resnet")


def test_missing_and_unexpected_names_are_listed(tmp_path, resnet_state, resnet_variables):
    state = dict(resnet_state)
    del state["layer2.1.bn2.running_var"], state["layer4.2.conv3.weight"]
    state["layer3.23.conv1.weight"] = np.zeros((32, 128, 1, 1), np.float32)  # a ResNet-152 block
    with pytest.raises(ValueError) as error:
        load_backbone_weights(resnet_variables, save(state, tmp_path / "w.npz"), backbone="resnet")
    message = str(error.value)
    assert "unexpected names in the file (1: layer3.23.conv1.weight)" in message
    assert "model parameters missing from the file (2: backbone/layer2_block1/bn2/var, " \
           "backbone/layer4_block2/conv3/kernel)" in message


def test_unknown_extension_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"weights\.pth: unknown weight-file extension '\.pth'.*\.npz.*\.safetensors"):
        load_backbone_weights(deeplab_variables("resnet"), str(tmp_path / "weights.pth"), backbone="resnet")


def test_wrong_backbone_files_are_named(tmp_path, resnet_state, resnet_variables):
    xception_file = save(random_state_dict(xception_shapes(width=8)), tmp_path / "x71.safetensors")
    with pytest.raises(ValueError, match=r"x71\.safetensors: holds xception weights but backbone='resnet'"):
        load_backbone_weights(resnet_variables, xception_file, backbone="resnet")
    # the right backbone argument but a ResNet model: every name is unexpected / missing
    with pytest.raises(ValueError, match="does not match the xception backbone"):
        load_backbone_weights(resnet_variables, xception_file, backbone="xception")
    with pytest.raises(ValueError, match="backbone: unknown 'vgg'"):
        load_backbone_weights(resnet_variables, save(resnet_state, tmp_path / "r.npz"), backbone="vgg")


def test_stem_and_resnet_d_mismatches_are_explained(tmp_path, resnet_state, resnet_variables):
    deep = save(random_state_dict(resnet_shapes(width=8, deep_stem=True)), tmp_path / "r101s.npz")
    with pytest.raises(ValueError, match=r"deep \(conv1\.0/\.3/\.6\) stem .* stem='deeplab'"):
        load_backbone_weights(resnet_variables, deep, backbone="resnet")
    standard = save(resnet_state, tmp_path / "r101.npz")
    with pytest.raises(ValueError, match=r"standard 7x7 \(conv1\) stem .* stem='standard'"):
        load_backbone_weights(deeplab_variables("resnet", stem="deeplab"), standard, backbone="resnet")
    resnet_d = dict(resnet_state)
    resnet_d["layer1.0.downsample.2.weight"] = resnet_d.pop("layer1.0.downsample.1.weight")
    with pytest.raises(ValueError, match="ResNet-D"):
        load_backbone_weights(resnet_variables, save(resnet_d, tmp_path / "r101d.npz"), backbone="resnet")


# ---------------------------------------------------------------- training starts from the file


def test_train_state_starts_from_the_pretrained_file(tmp_path):
    """train.load_pretrained_backbone puts the file's numbers into the train state, backbone only."""
    import optax

    from configs import demo
    from semeda_jax import train
    from semeda_jax.validation import ConfigError

    state_dict = random_state_dict(resnet_shapes(blocks=(3, 4, 6, 3), width=8), seed=3)
    config = demo.get_config("smoke")
    config.model.update(depth=50, base_width=8, stem="standard", pretrained=save(state_dict, tmp_path / "r50.npz"))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                             deeplab_variables("resnet", depth=50, stem="standard"))
    state = train.TrainState.create(apply_fn=None, params=jax.device_put(variables["params"]), tx=optax.sgd(0.1),
                                    batch_stats=jax.device_put(variables["batch_stats"]))
    lines = []
    loaded = train.load_pretrained_backbone(config, state, lines.append)
    backbone, stats = loaded.params["backbone"], loaded.batch_stats["backbone"]
    np.testing.assert_array_equal(backbone["layer3_block4"]["conv2"]["kernel"],
                                  state_dict["layer3.4.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stats["layer2_block0"]["downsample_bn"]["var"],
                                  state_dict["layer2.0.downsample.1.running_var"])
    assert backbone["layer1_block0"]["conv1"]["kernel"].sharding == state.params["backbone"]["layer1_block0"][
        "conv1"]["kernel"].sharding
    assert not np.any(loaded.params["classifier"]["kernel"])  # the head keeps its own (zero) initialisation
    assert lines and str(tmp_path / "r50.npz") in lines[0]

    config.model.pretrained = save(random_state_dict(resnet_shapes(blocks=(3, 4, 6, 3), width=16)),
                                   tmp_path / "wide.safetensors")
    with pytest.raises(ConfigError, match="config.model.pretrained: .*wide.safetensors: bn1.bias has shape .16,. but"):
        train.load_pretrained_backbone(config, state, lines.append)

    config.model.pretrained = ""
    lines = []
    assert train.load_pretrained_backbone(config, state, lines.append) is state
    assert "random weights" in lines[0]
