"""models/layers.py: the matmul form of 1x1 convs against flax's nn.Conv and a NumPy float64 reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax.models.layers import PointwiseConv, conv, conv_init


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
