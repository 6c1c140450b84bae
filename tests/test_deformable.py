"""Deformable convolution v1 (models/deformable.py): zero offsets are the plain convolution, integer offsets are
shifted plain convolutions, random offsets match a NumPy float64 pixel-by-pixel bilinear reference (stride and
dilation included), gradients w.r.t. input, kernel and offsets match finite differences, and the flax module
starts as a plain conv whose zero offsets still receive gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from semeda_jax.models.deformable import DeformableConv, deformable_conv, output_size

SETTINGS = [(1, 1), (1, 2), (2, 1)]  # (stride, dilation)


def plain_conv(x, kernel, stride=1, dilation=1):
    pad = dilation * (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(kernel), (stride, stride), [(pad, pad)] * 2,
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def numpy_bilinear(image, y, x):
    """image [H,W,C] float64 sampled at (y, x): bilinear, every corner outside the image is zero."""
    height, width = image.shape[:2]
    y0, x0 = math.floor(y), math.floor(x)
    value = np.zeros(image.shape[-1])
    for row, weight_y in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for col, weight_x in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= row < height and 0 <= col < width:
                value += weight_y * weight_x * image[row, col]
    return value


def numpy_deformable_conv(x, offsets, kernel, stride, dilation):
    """The DCN v1 definition, one output pixel and one tap at a time (float64)."""
    batch, height, width, _ = x.shape
    k = kernel.shape[0]
    pad = dilation * (k - 1) // 2
    out_h, out_w = offsets.shape[1:3]
    out = np.zeros((batch, out_h, out_w, kernel.shape[-1]))
    for b in range(batch):
        for i in range(out_h):
            for j in range(out_w):
                for a in range(k):
                    for c in range(k):
                        t = a * k + c
                        y = i * stride - pad + a * dilation + offsets[b, i, j, 2 * t]
                        xx = j * stride - pad + c * dilation + offsets[b, i, j, 2 * t + 1]
                        out[b, i, j] += numpy_bilinear(x[b], y, xx) @ kernel[a, c]
    return out


def random_problem(rng, stride=1, dilation=1, size=(7, 6), scale=2.0):
    x = rng.normal(size=(2, *size, 3))
    kernel = rng.normal(size=(3, 3, 3, 4))
    out_h, out_w = (output_size(n, 3, stride, dilation) for n in size)
    offsets = rng.uniform(-scale, scale, (2, out_h, out_w, 18))  # reaches outside the image at the borders
    return x, offsets, kernel


@pytest.mark.parametrize("stride,dilation", SETTINGS)
def test_zero_offsets_equal_the_plain_convolution(stride, dilation, rng):
    x, offsets, kernel = random_problem(rng, stride, dilation)
    out = deformable_conv(jnp.asarray(x), jnp.zeros_like(offsets), jnp.asarray(kernel), stride=stride,
                          dilation=dilation)
    expected = plain_conv(x, kernel, stride, dilation)
    assert out.shape == expected.shape == (2, math.ceil(7 / stride), math.ceil(6 / stride), 4)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-12, atol=1e-12)


def test_integer_offsets_equal_shifted_plain_convolutions(rng):
    """Tap t displaced by the integer (dy_t, dx_t) everywhere = the conv with only tap t's weights, applied to the
    zero-padded x shifted by (dy_t, dx_t), cropped back; summed over the taps."""
    x, _, kernel = random_problem(rng)
    shifts = rng.integers(-3, 4, (9, 2))
    offsets = np.broadcast_to(shifts.reshape(18).astype(float), (2, 7, 6, 18))
    pad = 4  # > the largest shift + the kernel radius: np.roll's wrap-around only brings in zeros
    canvas = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    expected = np.zeros((2, 7, 6, 4))
    for t, (dy, dx) in enumerate(shifts):
        one_tap = np.zeros_like(kernel)
        one_tap[t // 3, t % 3] = kernel[t // 3, t % 3]
        shifted = np.roll(canvas, (-dy, -dx), axis=(1, 2))  # shifted[y, x] = canvas[y + dy, x + dx]
        expected += np.asarray(plain_conv(shifted, one_tap))[:, pad:pad + 7, pad:pad + 6]
    out = deformable_conv(jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(kernel))
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,dilation", SETTINGS)
def test_random_offsets_match_the_pixel_by_pixel_reference(stride, dilation, rng):
    x, offsets, kernel = random_problem(rng, stride, dilation)
    out = jax.jit(deformable_conv, static_argnames=("stride", "dilation"))(
        jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(kernel), stride=stride, dilation=dilation)
    expected = numpy_deformable_conv(x, offsets, kernel, stride, dilation)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)


def test_gradients_match_finite_differences(rng):
    """Bilinear sampling has kinks where a position crosses an integer; fractional parts in [0.1, 0.9] keep the
    finite-difference steps away from them."""
    x, _, kernel = random_problem(rng, size=(5, 6))
    whole = rng.integers(-2, 3, (2, 5, 6, 18))
    offsets = whole + rng.uniform(0.1, 0.9, whole.shape)
    fn = lambda x, offsets, kernel: deformable_conv(x, offsets, kernel, dilation=2)
    check_grads(fn, (jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(kernel)), order=1, modes=("fwd", "rev"),
                eps=1e-5, atol=1e-7, rtol=1e-7)


def test_module_starts_as_the_plain_conv_and_learns_offsets(rng):
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)))
    module = DeformableConv(5, strides=2, dilation=1, use_bias=True, dtype=jnp.float64)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)
    params = variables["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"offset": {"kernel": (3, 3, 3, 18), "bias": (18,)}, "kernel": (3, 3, 3, 5), "bias": (5,)}
    assert not np.any(params["offset"]["kernel"]) and not np.any(params["offset"]["bias"])
    out = jax.jit(module.apply)(variables, x)
    plain = plain_conv(x, np.asarray(params["kernel"], np.float64), 2)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-12, atol=1e-12)
    assert out.shape == (2, 5, 4, 5)

    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)  # float64 gradients
    # at zero offsets the derivative w.r.t. an offset is the one-sided (forward) difference of the bilinear
    # sample: exact for any step in (0, 1), where the sample is linear in the offset
    weights = jnp.asarray(rng.normal(size=out.shape))
    loss = lambda bias: jnp.sum(weights * module.apply(
        {"params": {**params, "offset": {**params["offset"], "bias": bias}}}, x))
    zero = params["offset"]["bias"]
    grad = jax.jit(jax.grad(loss))(zero)
    step = 0.5
    forward = (jax.jit(jax.vmap(loss))(zero + step * jnp.eye(18)) - loss(zero)) / step
    np.testing.assert_allclose(np.asarray(grad), forward, rtol=1e-10, atol=1e-10)
    assert np.all(np.abs(forward) > 1e-3)


def test_bad_offset_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"offsets shape \(1, 4, 4, 9\), expected \(1, 4, 4, 18\)"):
        deformable_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 9)), jnp.zeros((3, 3, 2, 1)))
