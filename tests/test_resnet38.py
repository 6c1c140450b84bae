"""ResNet-38 (models/resnet38.py): the parameter count against the released definition (and the published
figure), output strides at even and odd sizes, and the whole forward pass against an independent float64
forward of the torch layout (PSA / SEAM `resnet38d.py`) run straight from a generated fake state dict, which
also tests the weight import (models/pretrained.py) and the deformable variant at zero offsets."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax.models import build_model
from semeda_jax.models.pretrained import convert_state_dict, load_backbone_weights
from semeda_jax.models.resnet38 import ResNet38

# The torch layout, widths at base width 64: (name, in, mid, out, stride, dilation of conv 2a, of conv 2b1)
BASIC_UNITS = [("b2", 64, 128, 128, 2, 1, 1), ("b2_1", 128, 128, 128, 1, 1, 1), ("b2_2", 128, 128, 128, 1, 1, 1),
               ("b3", 128, 256, 256, 2, 1, 1), ("b3_1", 256, 256, 256, 1, 1, 1), ("b3_2", 256, 256, 256, 1, 1, 1),
               ("b4", 256, 512, 512, 2, 1, 1), *((f"b4_{i}", 512, 512, 512, 1, 1, 1) for i in range(1, 6)),
               ("b5", 512, 512, 1024, 1, 1, 2), ("b5_1", 1024, 512, 1024, 1, 2, 2), ("b5_2", 1024, 512, 1024, 1, 2, 2)]
BOTTLENECK_UNITS = [("b6", 1024, 2048, 4), ("b7", 2048, 4096, 4)]  # (name, in, out, dilation): out/4, out/2, out


def count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def shapes(base_width: int):
    """{torch conv name: OIHW shape} and {torch BN name: channels} of the released layout at `base_width`."""
    s = lambda c: c * base_width // 64  # noqa: E731
    convs, bns = {"conv1a": (s(64), 3, 3, 3)}, {"bn7": s(4096)}
    for name, cin, mid, out, stride, _, _ in BASIC_UNITS:
        convs[f"{name}.conv_branch2a"] = (s(mid), s(cin), 3, 3)
        convs[f"{name}.conv_branch2b1"] = (s(out), s(mid), 3, 3)
        if cin != out or stride != 1:
            convs[f"{name}.conv_branch1"] = (s(out), s(cin), 1, 1)
        bns.update({f"{name}.bn_branch2a": s(cin), f"{name}.bn_branch2b1": s(mid)})
    for name, cin, out, _ in BOTTLENECK_UNITS:
        convs.update({f"{name}.conv_branch2a": (s(out // 4), s(cin), 1, 1),
                      f"{name}.conv_branch2b1": (s(out // 2), s(out // 4), 3, 3),
                      f"{name}.conv_branch2b2": (s(out), s(out // 2), 1, 1),
                      f"{name}.conv_branch1": (s(out), s(cin), 1, 1)})
        bns.update({f"{name}.bn_branch2a": s(cin), f"{name}.bn_branch2b1": s(out // 4),
                    f"{name}.bn_branch2b2": s(out // 2)})
    return convs, bns


def fake_state_dict(rng, base_width):
    """A torch-layout state dict with random float32 values (BN statistics included; float32 so that the
    import, which casts to the float32 parameters, is exact) and the counters torch saves."""
    convs, bns = shapes(base_width)
    state = {f"{n}.weight": rng.normal(0, math.sqrt(2 / np.prod(s[1:])), s) for n, s in convs.items()}
    for name, c in bns.items():
        state.update({f"{name}.weight": rng.uniform(0.5, 1.5, c), f"{name}.bias": rng.normal(0, 0.1, c),
                      f"{name}.running_mean": rng.normal(0, 0.1, c), f"{name}.running_var": rng.uniform(0.5, 2, c),
                      f"{name}.num_batches_tracked": np.array(7)})
    return {name: value.astype(np.float32) if value.ndim else value for name, value in state.items()}


def reference_forward(state, images):
    """resnet38d.py's forward (eval BN, eps 1e-5) in float64, from the torch names and OIHW weights."""
    state = {name: np.asarray(value, np.float64) for name, value in state.items()}

    def conv(x, name, stride=1, dilation=1):
        w = jnp.asarray(state[f"{name}.weight"])
        pad = dilation * (w.shape[-1] // 2)
        return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2, rhs_dilation=(dilation,) * 2,
                                            dimension_numbers=("NHWC", "OIHW", "NHWC"))

    def bn_relu(x, name):
        g, b, m, v = (state[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        return jax.nn.relu((x - m) / np.sqrt(v + 1e-5) * g + b)

    x = conv(jnp.asarray(images), "conv1a")
    for name, cin, _, out, stride, d1, d2 in BASIC_UNITS:
        a = bn_relu(x, f"{name}.bn_branch2a")
        shortcut = conv(a, f"{name}.conv_branch1", stride) if cin != out or stride != 1 else x
        y = conv(bn_relu(conv(a, f"{name}.conv_branch2a", stride, d1), f"{name}.bn_branch2b1"),
                 f"{name}.conv_branch2b1", 1, d2)
        x = shortcut + y
    for name, _, _, dilation in BOTTLENECK_UNITS:
        a = bn_relu(x, f"{name}.bn_branch2a")
        y = bn_relu(conv(a, f"{name}.conv_branch2a"), f"{name}.bn_branch2b1")
        y = bn_relu(conv(y, f"{name}.conv_branch2b1", 1, dilation), f"{name}.bn_branch2b2")
        x = conv(a, f"{name}.conv_branch1") + conv(y, f"{name}.conv_branch2b2")
    return bn_relu(x, "bn7")


def test_parameter_count_is_the_released_definitions():
    """Wu et al.'s table prints 124M for model A; the released definition (ademxapp's rna_feat_a1, PSA's
    resnet38d.py; the layout above) has 105,070,912 trainable parameters without the classifier and
    109,167,912 with the 1000-class one. Ours matches the released layout exactly."""
    convs, bns = shapes(64)
    expected = sum(np.prod(s) for s in convs.values()) + 2 * sum(bns.values())
    assert expected == 105_070_912
    for num_classes, extra in ((None, 0), (1000, 4096 * 1000 + 1000)):
        variables = jax.eval_shape(ResNet38(num_classes=num_classes).init, jax.random.PRNGKey(0),
                                   jnp.zeros((1, 32, 32, 3)))
        assert count(variables["params"]) == expected + extra
        assert count(variables["batch_stats"]) == 2 * sum(bns.values())
    deformable = jax.eval_shape(ResNet38(deformable=True).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    offsets = (3 * 3 * 512 * 18 + 18) + (3 * 3 * 1024 * 18 + 18)  # offset convs of B6 (512 in) and B7 (1024 in)
    assert count(deformable["params"]) == expected + offsets


@pytest.mark.parametrize("size", [(32, 32), (33, 35), (65, 47), (17, 9)])
def test_output_strides_at_even_and_odd_sizes(size):
    variables = jax.eval_shape(ResNet38(base_width=4).init, jax.random.PRNGKey(0), jnp.zeros((1, *size, 3)))
    features = jax.eval_shape(ResNet38(base_width=4).apply, variables, jnp.zeros((2, *size, 3)))
    h, w = size
    assert features["low_level"].shape == (2, math.ceil(h / 4), math.ceil(w / 4), 16)
    assert features["out"].shape == (2, math.ceil(h / 8), math.ceil(w / 8), 256)


def test_forward_and_weight_import_match_the_torch_layout_reference(rng, tmp_path):
    """Odd input size 41x45 (6x6 at OS 8, so dilations 2 and 4 reach real pixels); the fake file goes through
    the import path, the reference reads the torch tensors directly (no name mapping, no transposes)."""
    state = fake_state_dict(rng, base_width=2)
    path = tmp_path / "resnet38d.npz"
    np.savez(path, **state)
    images = rng.normal(size=(2, 41, 45, 3))
    expected = np.asarray(reference_forward(state, images))
    assert expected.shape == (2, 6, 6, 128)
    for deformable in (False, True):
        model = ResNet38(base_width=2, deformable=deformable, dtype=jnp.float64)
        shapes_only = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 41, 45, 3)))
        params, batch_stats, ignored = convert_state_dict(state, shapes_only["params"],
                                                          shapes_only["batch_stats"], backbone="resnet38")
        assert len(ignored) == sum(name.endswith("num_batches_tracked") for name in state)
        if deformable:
            assert not np.any(params["b7"]["conv_branch2b1"]["offset"]["kernel"])
        out = jax.jit(model.apply)({"params": params, "batch_stats": batch_stats}, jnp.asarray(images))["out"]
        # float32 parameters and BN statistics (flax normalises with them): agreement to ~1e-6 of the scale; a
        # wrong stride, dilation, shortcut or BN placement is off by O(scale)
        np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    # the same file into a whole RelationNet model's backbone (eval_shape variables: shapes and dtypes only)
    model = build_model("relationnet", num_classes=3, base_width=2, dtype=jnp.float64)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 41, 45, 3)))
    lines = []
    loaded = load_backbone_weights(variables, str(path), backbone="resnet38", log=lines.append)
    np.testing.assert_array_equal(loaded["params"]["backbone"]["b4_3"]["conv_branch2a"]["kernel"],
                                  state["b4_3.conv_branch2a.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["bn7"]["var"], state["bn7.running_var"])
    assert loaded["params"]["classifier"] is variables["params"]["classifier"]  # heads untouched
    assert "resnet38 tensors" in lines[0]


def test_import_names_missing_and_wrong_shaped_tensors(rng):
    state = fake_state_dict(rng, base_width=2)
    variables = jax.eval_shape(ResNet38(base_width=2).init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    convert = lambda sd: convert_state_dict(sd, variables["params"], variables["batch_stats"],  # noqa: E731
                                            backbone="resnet38", source="f.npz")
    with pytest.raises(ValueError, match=r"missing from the file \(1: backbone/b5_2/conv_branch2b1/kernel\)"):
        convert({k: v for k, v in state.items() if k != "b5_2.conv_branch2b1.weight"})
    with pytest.raises(ValueError, match=r"b3.conv_branch1.weight has shape \(8,4,1,2\)"):
        convert({**state, "b3.conv_branch1.weight": np.zeros((8, 4, 1, 2))})
    with pytest.raises(ValueError, match="holds resnet38 weights but backbone='resnet'"):
        convert_state_dict(state, variables["params"], variables["batch_stats"], backbone="resnet")


@pytest.mark.parametrize("fields,match", [
    (dict(depth=101), "depth: ResNet-38 has depth 38 only"),
    (dict(output_stride=16), "output_stride: ResNet-38 .* has output stride 8 only"),
])
def test_bad_settings_are_named(fields, match):
    model = build_model("relationnet", num_classes=3, base_width=2, **fields)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="stem: 'deeplab' is a ResNet stem; backbone='resnet38'"):
        build_model("relationnet", num_classes=3, stem="deeplab")
