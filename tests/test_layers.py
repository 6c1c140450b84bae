"""models/layers.py: the matmul form of 1x1 convs and the dead-tap-skipping k x k conv against flax's nn.Conv
and a NumPy float64 reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax.models.cpu_kernels import live_taps
from semeda_jax.models.layers import DepthwiseConv, PointwiseConv, SpatialConv, conv, conv_init


def nn_conv_1x1(features, strides, use_bias):
    return nn.Conv(features, (1, 1), strides=(strides, strides), padding=((0, 0), (0, 0)), use_bias=use_bias,
                   dtype=jnp.float64, param_dtype=jnp.float32, kernel_init=conv_init)


@pytest.mark.parametrize("strides, size, use_bias", [(1, (5, 7), False), (2, (5, 7), True), (2, (8, 6), False),
                                                     (3, (7, 7), True)])
def test_pointwise_conv_matches_nn_conv_and_numpy(rng, strides, size, use_bias):
    x = jnp.asarray(rng.standard_normal((2, *size, 6)))
    ours = conv(4, 1, strides=strides, use_bias=use_bias, dtype=jnp.float64)  # exact comparisons
    assert isinstance(ours, PointwiseConv)
    key = jax.random.PRNGKey(3)
    params = ours.init(key, x)
    reference_params = nn_conv_1x1(4, strides, use_bias).init(key, x)
    # Same parameter tree and the same initial values (one key, one initialiser, one shape).
    assert jax.tree.structure(params) == jax.tree.structure(reference_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
        np.testing.assert_array_equal(a, b)
    if use_bias:
        params = {"params": {**params["params"], "bias": jnp.asarray(rng.standard_normal(4))}}
    y = ours.apply(params, x)
    kernel = np.asarray(params["params"]["kernel"][0, 0], np.float64)
    expected = np.einsum("bhwi,io->bhwo", np.asarray(x, np.float64)[:, ::strides, ::strides], kernel)
    if use_bias:
        expected = expected + np.asarray(params["params"]["bias"], np.float64)
    assert y.shape == (2, -(-size[0] // strides), -(-size[1] // strides), 4)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, nn_conv_1x1(4, strides, use_bias).apply(params, x), rtol=1e-10, atol=1e-12)

    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    ours_grads = jax.grad(lambda v, x: loss(ours, v, x), argnums=(0, 1))(params, x)
    reference_grads = jax.grad(lambda v, x: loss(nn_conv_1x1(4, strides, use_bias), v, x), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(reference_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_pointwise_conv_computes_in_its_dtype_with_float32_parameters(rng):
    x = jnp.asarray(rng.standard_normal((1, 4, 4, 3)), jnp.float32)
    module = conv(2, 1, use_bias=True, dtype=jnp.bfloat16)
    params = module.init(jax.random.PRNGKey(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert module.apply(params, x).dtype == jnp.bfloat16


def numpy_conv(x, kernel, strides, dilation):
    """Direct float64 conv, symmetric padding dilation * (k - 1) // 2, every tap summed (dead ones included)."""
    k = kernel.shape[0]
    pad = dilation * (k - 1) // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h_out, w_out = -(-x.shape[1] // strides), -(-x.shape[2] // strides)
    y = np.zeros((x.shape[0], h_out, w_out, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            window = xp[:, i * dilation::strides, j * dilation::strides][:, :h_out, :w_out]
            y += np.einsum("bhwi,io->bhwo", window, kernel[i, j])
    return y


def assert_same_gradients(ours, reference, params, x):
    """Gradients of sum(sin(module(x))) with respect to the parameters and x agree between two modules."""
    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    grads = jax.grad(lambda v, x: loss(ours, v, x), argnums=(0, 1))(params, x)
    reference_grads = jax.grad(lambda v, x: loss(reference, v, x), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size, kernel_size, strides, dilation, use_bias", [
    ((12, 12), 3, 1, 18, False),  # every off-centre tap dead: a 1x1 matmul
    ((12, 12), 3, 1, 6, True),    # all live
    ((6, 8), 3, 1, 6, False),     # rows dead, columns live
    ((5, 7), 3, 1, 1, True),
    ((9, 4), 5, 1, 2, False),     # 5x5: two taps each side of the centre, one of them dead along W
    ((12, 12), 3, 2, 18, False),  # strided: never pruned
    ((11, 9), 7, 2, 1, True),     # the ResNet stem's shape of conv
])
def test_spatial_conv_matches_nn_conv_and_numpy(rng, size, kernel_size, strides, dilation, use_bias):
    x = jnp.asarray(rng.standard_normal((2, *size, 5)))
    ours = conv(4, kernel_size, strides=strides, dilation=dilation, use_bias=use_bias, dtype=jnp.float64)
    assert isinstance(ours, SpatialConv)
    pad = dilation * (kernel_size - 1) // 2
    reference = nn.Conv(4, (kernel_size, kernel_size), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                        kernel_dilation=(dilation, dilation), use_bias=use_bias, dtype=jnp.float64,
                        param_dtype=jnp.float32, kernel_init=conv_init)
    key = jax.random.PRNGKey(5)
    params = ours.init(key, x)
    reference_params = reference.init(key, x)
    assert jax.tree.structure(params) == jax.tree.structure(reference_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
        np.testing.assert_array_equal(a, b)
    params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)  # bias non-zero too
    y = ours.apply(params, x)
    expected = numpy_conv(np.asarray(x), np.asarray(params["params"]["kernel"], np.float64), strides, dilation)
    if use_bias:
        expected = expected + np.asarray(params["params"]["bias"], np.float64)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, reference.apply(params, x), rtol=1e-10, atol=1e-10)
    assert_same_gradients(ours, reference, params, x)


def test_dead_taps_are_skipped():
    assert [live_taps(n, 3, 18) for n in (12, 18, 19, 33)] == [0, 0, 1, 1]
    assert live_taps(9, 5, 2) == 2 and live_taps(4, 5, 2) == 1
    x = jnp.zeros((1, 12, 12, 8))
    module = conv(4, 3, dilation=12)
    params = module.init(jax.random.PRNGKey(0), x)
    jaxpr = str(jax.make_jaxpr(lambda p: module.apply(p, x))(params))
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr
    jaxpr = str(jax.make_jaxpr(lambda p: module.apply(p, jnp.zeros((1, 13, 13, 8))))(params))
    assert "conv_general_dilated" in jaxpr


def test_even_kernels_are_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        conv(4, 2).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)))


def test_stride1_gradients_are_tapwise_on_cpu_and_xla_convolutions_elsewhere():
    """conv_stride1 picks its gradients at lowering time: the CPU module computes the backward as per-tap dots
    (one convolution, the forward), a CUDA module (exported without a GPU) as XLA's convolutions, no dots."""
    module = conv(4, 3, dilation=2)
    x = jnp.zeros((2, 9, 9, 3))
    params = module.init(jax.random.PRNGKey(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2), argnums=(0, 1)))
    counts = {}
    for platform in ("cpu", "cuda"):
        text = jax.export.export(grad, platforms=[platform])(params, x).mlir_module()
        counts[platform] = (text.count("stablehlo.convolution"), text.count("stablehlo.dot_general"))
    assert counts["cpu"] == (1, 18), counts  # 9 taps x (kernel gradient, input gradient)
    assert counts["cuda"] == (3, 0), counts  # forward, input gradient, kernel gradient


@pytest.mark.parametrize("size, kernel_size, strides, dilation", [
    ((7, 9), 3, 1, 1), ((8, 8), 3, 2, 1), ((9, 6), 3, 2, 1), ((12, 12), 3, 1, 2), ((6, 5), 3, 1, 4), ((9, 9), 5, 1, 1),
])
def test_depthwise_conv_matches_grouped_nn_conv_and_numpy(rng, size, kernel_size, strides, dilation):
    """DepthwiseConv (shifted windows on CPU): nn.Conv(feature_group_count=C)'s parameter, outputs against a
    float64 per-channel NumPy conv, and gradients (input and kernel) against nn.Conv's."""
    channels = 6
    x = jnp.asarray(rng.standard_normal((2, *size, channels)))
    ours = DepthwiseConv(kernel_size, strides, dilation, jnp.float64)
    pad = dilation * (kernel_size - 1) // 2
    reference = nn.Conv(channels, (kernel_size, kernel_size), strides=(strides, strides),
                        padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                        feature_group_count=channels, use_bias=False, dtype=jnp.float64, param_dtype=jnp.float32,
                        kernel_init=conv_init)
    params = ours.init(jax.random.PRNGKey(3), x)
    reference_params = reference.init(jax.random.PRNGKey(3), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference_params)
    params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)
    kernel = np.asarray(params["params"]["kernel"], np.float64)
    expected = np.stack([numpy_conv(np.asarray(x)[..., c:c + 1], kernel[..., c:c + 1], strides, dilation)[..., 0]
                         for c in range(channels)], axis=-1)
    y = ours.apply(params, x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    assert_same_gradients(ours, reference, params, x)


def test_depthwise_conv_is_shifted_windows_on_cpu_and_a_grouped_convolution_elsewhere():
    module = DepthwiseConv(3, 2, 1)
    x = jnp.zeros((2, 9, 9, 4))
    params = module.init(jax.random.PRNGKey(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2), argnums=(0, 1)))
    cpu, cuda = (jax.export.export(grad, platforms=[platform])(params, x).mlir_module() for platform in ("cpu", "cuda"))
    assert "stablehlo.convolution" not in cpu
    assert cuda.count("stablehlo.convolution") == 3 and "feature_group_count = 4" in cuda
