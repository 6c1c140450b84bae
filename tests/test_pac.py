"""Pyramid atrous convolution (PAC paper §3.3, SPEC.md 2(c)): one shared 3x3 kernel at dilations (1, 3, 5, 7, 9),
summed or concatenated + 1x1, against explicit lax.conv_general_dilated calls and a NumPy float64 reference; the
PAC head's parameter count against ASPP's; PAC in DeepLab v3 builds, runs and keeps ASPP's output shape."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax.models import ASPPHead, PACHead, PyramidAtrousConv, build_model
from semeda_jax.models.aspp import scaled_rates

KEY = jax.random.PRNGKey(0)
RATES = (1, 3, 5, 7, 9)


def numpy_dilated_conv(x, kernel, rate):
    """Float64 'same' 3x3 conv at dilation `rate` with zero padding: x [B,H,W,I], kernel [3,3,I,O]."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (rate, rate), (rate, rate), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += padded[:, i * rate:i * rate + h, j * rate:j * rate + w] @ kernel[i, j]
    return out


def pac_variables(module, x):
    variables = module.init(KEY, x)
    # BN with random statistics so that the check covers it too (frozen mode: running statistics)
    rng = np.random.default_rng(1)
    stats = {"mean": rng.normal(size=module.features), "var": rng.uniform(0.5, 2.0, module.features)}
    variables = {"params": variables["params"], "batch_stats": {"bn": stats}}
    variables["params"]["bn"] = {"scale": rng.normal(size=module.features), "bias": rng.normal(size=module.features)}
    return variables


def bn_relu(y, variables, eps=1e-5):
    stats, bn = variables["batch_stats"]["bn"], variables["params"]["bn"]
    return np.maximum((y - stats["mean"]) / np.sqrt(stats["var"] + eps) * bn["scale"] + bn["bias"], 0.0)


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_pac_equals_explicit_dilated_convolutions_with_one_kernel(merge, rng):
    x = rng.normal(size=(2, 23, 19, 5))  # x64 on (conftest): the module runs in float64 here
    module = PyramidAtrousConv(6, rates=RATES, merge=merge, dtype=jnp.float64)
    variables = pac_variables(module, jnp.asarray(x))
    kernel = np.asarray(variables["params"]["kernel"], np.float64)
    assert kernel.shape == (3, 3, 5, 6)  # one kernel for every rate
    responses = [numpy_dilated_conv(x, kernel, rate) for rate in RATES]
    # the same responses from lax.conv_general_dilated, called once per rate
    for rate, expected in zip(RATES, responses):
        lax = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(kernel), (1, 1), [(rate, rate)] * 2,
                                           rhs_dilation=(rate, rate), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(np.asarray(lax), expected, rtol=1e-10, atol=1e-10)
    if merge == "sum":
        merged = sum(responses)
    else:
        merge_kernel = np.asarray(variables["params"]["merge"]["kernel"], np.float64)[0, 0]
        assert merge_kernel.shape == (5 * 6, 6)
        merged = np.concatenate(responses, axis=-1) @ merge_kernel
    out = module.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), bn_relu(merged, variables), rtol=1e-9, atol=1e-9)


def test_rates_scale_with_the_output_stride():
    """At OS8 the rates are (2, 6, 10, 14, 18): the centre output sees a pixel 18 rows away, not one 19 away."""
    rates = scaled_rates(RATES, 16, 8)
    assert rates == (2, 6, 10, 14, 18)
    module = PyramidAtrousConv(2, rates=rates, dtype=jnp.float64)
    x = jnp.zeros((1, 41, 41, 1), jnp.float64)
    variables = module.init(KEY, x)
    variables["params"]["bn"]["bias"] = jnp.full((2,), 10.0)  # keeps the ReLU open: the gradient is the kernel's
    reach = {}
    for offset in (18, 19):
        def centre(v):
            return jnp.sum(module.apply(variables, x.at[0, 20 + offset, 20, 0].set(v))[0, 20, 20])
        reach[offset] = float(jax.grad(centre)(0.5))
    assert reach[18] != 0 and reach[19] == 0


def count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_head_parameter_count_against_aspp(merge):
    cin, width, classes = 64, 16, 5
    features = {"out": jax.ShapeDtypeStruct((1, 9, 9, cin), jnp.float32)}
    pac = jax.eval_shape(PACHead(classes, head_width=width, pac_merge=merge).init, KEY, features)
    aspp = jax.eval_shape(ASPPHead(classes, head_width=width).init, KEY, features)
    bn = 2 * width  # scale + bias of one BN
    # ASPP: 1x1 + three 3x3 atrous + pooling 1x1, projection 1x1 of 5 branches, classifier from `width`
    aspp_expected = (cin * width + bn) + 3 * (9 * cin * width + bn) + (cin * width + bn) \
        + (5 * width * width + bn) + (width * classes + classes)
    # PAC head: 1x1 + pooling 1x1 + ONE 3x3 kernel (+ 1x1 merge of 5 responses), classifier from 3 branches
    pac_expected = (cin * width + bn) + (cin * width + bn) + (9 * cin * width + bn) \
        + (5 * width * width if merge == "concat" else 0) + (3 * width * classes + classes)
    assert count(aspp["params"]) == aspp_expected
    assert count(pac["params"]) == pac_expected
    assert count(pac["params"]) < count(aspp["params"])


def test_deeplab_v3_pac_builds_and_runs_like_v3():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 33, 33, 3), jnp.float32)
    model = build_model("deeplab_v3_pac", num_classes=4, depth=18, base_width=8, bn_mode="train")
    variables = jax.jit(model.init)(KEY, x)
    assert set(variables["params"]) == {"backbone", "conv1x1", "pool", "pac", "classifier"}
    logits = jax.jit(model.apply)(variables, x)["logits"]
    v3 = jax.eval_shape(build_model("deeplab_v3", num_classes=4, depth=18, base_width=8).init, KEY, x)
    assert logits.shape == jax.eval_shape(build_model("deeplab_v3", num_classes=4, depth=18, base_width=8).apply,
                                          v3, x)["logits"].shape == (2, 3, 3, 4)
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0
    with pytest.raises(ValueError, match="pac_merge: unknown 'mean'"):
        jax.eval_shape(build_model("deeplab_v3_pac", num_classes=4, depth=18, base_width=8, pac_merge="mean").init,
                       KEY, x)
