"""The inference seam (semeda_jax/inference.py) on tiny hand-made networks whose exact outputs are known:
sliding windows against the whole image, flip TTA of a flip-equivariant net, the view transforms and their
inverses, the fusion rules against NumPy float64, shifted multi-step testing against the finer-stride map
(placed with the whole-image map's alignment)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax import inference
from semeda_jax.models.layers import resize_bilinear
from semeda_jax.validation import ConfigError

C = 4


def conv_net(kernel, stride=1):
    """apply_fn of a 'same' conv (kernel [k,k,3,C]) followed by subsampling at `stride` (an output stride)."""
    def apply_fn(variables, images, train=False):
        k = kernel.shape[0] // 2
        y = jax.lax.conv_general_dilated(images, jnp.asarray(kernel, images.dtype), (1, 1), [(k, k), (k, k)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return {"logits": y[:, ::stride, ::stride]}
    return apply_fn


def images(rng, shape=(2, 24, 32, 3)):
    return jnp.asarray(rng.normal(size=shape))


def test_sliding_window_as_large_as_the_image_is_whole_image_inference(rng):
    apply_fn, x = conv_net(rng.normal(size=(3, 3, 3, C)), stride=4), images(rng)
    whole = inference.build_predict_fn(inference.InferenceSpec(), apply_fn)(None, x, (24, 32))
    for window in [(24, 32), (40, 40)]:
        spec = inference.InferenceSpec(mode="sliding", window=window, stride=(8, 8))
        sliding = inference.build_predict_fn(spec, apply_fn)(None, x, (24, 32))
        np.testing.assert_array_equal(np.asarray(sliding), np.asarray(whole))


@pytest.mark.parametrize("blend", ["uniform", "gaussian"])
def test_sliding_windows_of_a_pointwise_net_blend_back_to_the_whole_map(blend, rng):
    """A 1x1 conv gives every window exactly the whole map's values there: any blend of them is that map."""
    apply_fn, x = conv_net(rng.normal(size=(1, 1, 3, C))), images(rng)
    spec = inference.InferenceSpec(mode="sliding", window=(10, 12), stride=(7, 5), blend=blend)
    got, _ = inference.sliding_logits(apply_fn, None, x, spec.window, spec.stride, spec.blend)
    np.testing.assert_allclose(np.asarray(got), np.asarray(apply_fn(None, x)["logits"]), rtol=1e-10, atol=1e-10)
    assert inference.window_starts(24, 10, 7) == [0, 7, 14] and inference.window_starts(32, 12, 5)[-1] == 20


def test_flip_tta_of_a_flip_equivariant_net_equals_single_scale(rng):
    kernel = rng.normal(size=(3, 3, 3, C))
    kernel = kernel + kernel[:, ::-1]  # mirror-symmetric along W: conv(flip(x)) = flip(conv(x))
    apply_fn, x = conv_net(kernel, stride=1), images(rng)
    single = inference.build_predict_fn(inference.InferenceSpec(), apply_fn)(None, x, (24, 32))
    for fusion in ("avg", "max", "avg+max"):
        flipped = inference.build_predict_fn(inference.InferenceSpec(flip=True, fusion=fusion), apply_fn)(
            None, x, (24, 32))
        np.testing.assert_allclose(np.asarray(flipped), np.asarray(single), rtol=1e-12, atol=1e-12)
    # a net that is not equivariant gives other probabilities (the check above can fail)
    other = inference.build_predict_fn(inference.InferenceSpec(flip=True), conv_net(rng.normal(size=(3, 3, 3, C))))
    plain = inference.build_predict_fn(inference.InferenceSpec(), conv_net(rng.normal(size=(3, 3, 3, C))))
    assert not np.allclose(np.asarray(other(None, x, (24, 32))), np.asarray(plain(None, x, (24, 32))))


def test_unflip_and_scale_back_invert_the_view(rng):
    x = images(rng)
    np.testing.assert_array_equal(np.asarray(inference.from_view(inference.to_view(x, 1.0, True), (24, 32), True)),
                                  np.asarray(x))
    assert inference.to_view(x, 1.0, False) is x
    for scale in (0.5, 0.75, 1.25, 2.0):
        view = inference.to_view(x, scale, True)
        assert view.shape[1:3] == (round(24 * scale), round(32 * scale))
        back = inference.from_view(view, (24, 32), True)
        assert back.shape == x.shape
        constant = jnp.full_like(view, 3.5)  # a constant map comes back exactly
        np.testing.assert_allclose(np.asarray(inference.from_view(constant, (24, 32), True)), 3.5, rtol=1e-12)
    # a left-right ramp through the mirrored 2x view and back: the ramp again (bilinear is exact on a linear
    # map; the border columns are clamped by the upsampling)
    ramp = jnp.broadcast_to(jnp.arange(32.0), (1, 24, 32))[..., None]
    via_view = inference.from_view(inference.to_view(ramp, 2.0, True), (24, 32), True)
    np.testing.assert_allclose(np.asarray(via_view)[:, :, 1:-1], np.asarray(ramp)[:, :, 1:-1], atol=1e-9)


def test_fusions_match_numpy(rng):
    logits = rng.normal(size=(3, 2, 4, 5, C))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    avg, mx = probs.mean(0), probs.max(0)
    expected = {"avg": avg, "max": mx / mx.sum(-1, keepdims=True),
                "avg+max": (avg + mx) / 2 / ((avg + mx) / 2).sum(-1, keepdims=True)}
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(inference.FUSIONS[name](jnp.asarray(probs))), value, rtol=1e-12)
    weights = rng.uniform(0.1, 1.0, (3, C))
    learned = np.einsum("vc,vbhwc->bhwc", weights, probs)
    np.testing.assert_allclose(np.asarray(inference.learned_fusion(weights)(jnp.asarray(probs))),
                               learned / learned.sum(-1, keepdims=True), rtol=1e-6)


def test_learned_fusion_is_a_hook_of_build_predict_fn(rng):
    apply_fn, x = conv_net(rng.normal(size=(1, 1, 3, C))), images(rng)
    spec = inference.InferenceSpec(scales=(1.0, 0.5), flip=True, fusion="learned")
    with pytest.raises(ConfigError, match=r"'learned' needs view weights \[4, C\]"):
        inference.build_predict_fn(spec, apply_fn)
    one_hot = np.zeros((4, C))
    one_hot[0] = 1.0  # all weight on the first view (scale 1, unflipped): the single-scale prediction
    fused = inference.build_predict_fn(spec, apply_fn, view_weights=one_hot)(None, x, (24, 32))
    single = inference.build_predict_fn(inference.InferenceSpec(), apply_fn)(None, x, (24, 32))
    np.testing.assert_allclose(np.asarray(fused), np.asarray(single), rtol=1e-10)


def upsample_interleaved_reference(fine, size, n):
    """NumPy float64: output pixel p of each axis reads the fine grid at (p + 1/2) L / size - n / 2 (L its length:
    coarse cell i, at (p + 1/2) h / size - 1/2 in resize_bilinear, times n), linearly, clamped (np.interp)."""
    out = np.asarray(fine, np.float64)
    for axis, length in ((1, size[0]), (2, size[1])):
        coords = (np.arange(length) + 0.5) * out.shape[axis] / length - n / 2
        out = np.apply_along_axis(lambda v: np.interp(coords, np.arange(v.size), v), axis, out)
    return out


def test_shifted_multi_step_gives_the_finer_stride_map(rng):
    """A net at output stride 8 that samples a pointwise map: 4 shifts by 4 px interleave into that map at
    stride 4 (RelationNet's 4-step testing), placed with the stride-8 map's alignment; 9 shifts (of 8/3 -> 2 px
    steps, stride 8 / 3 is not whole) fail."""
    kernel = rng.normal(size=(1, 1, 3, C))
    x = images(rng, (2, 32, 48, 3))
    got, _ = inference.shifted_logits(conv_net(kernel, stride=8), None, x, shifts=4, output_stride=8)
    fine = conv_net(kernel, stride=4)(None, x)["logits"]
    np.testing.assert_allclose(np.asarray(got), upsample_interleaved_reference(fine, (32, 48), 2), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_array_equal(np.asarray(inference.shift_images(x, 3, 5)[:, :29, :43]), np.asarray(x[:, 3:, 5:]))
    with pytest.raises(ConfigError, match="9 shifts need an output stride divisible by 3"):
        inference.shifted_logits(conv_net(kernel, stride=8), None, x, shifts=9, output_stride=8)


@pytest.mark.parametrize("n, coarse, size", [(2, (3, 5), (24, 40)), (4, (3, 4), (21, 37)), (2, (1, 2), (8, 16))])
def test_interleaved_midpoints_reproduce_whole_image_inference(n, coarse, size, rng):
    """A fine grid whose cell n i + a is the linear blend of coarse cells i, i + 1 at a / n (the last coarse cell
    repeated) adds nothing: upsampled, it is resize_bilinear of the coarse grid (the whole-image map), so the
    interleaved samples sit where the coarse ones do; against the NumPy reference too."""
    grid = rng.normal(size=(2, *coarse, C))
    fine = grid
    for axis in (1, 2):
        nxt = np.concatenate([np.take(fine, np.arange(1, fine.shape[axis]), axis=axis),
                              np.take(fine, [-1], axis=axis)], axis=axis)
        parts = [fine + a / n * (nxt - fine) for a in range(n)]
        fine = np.stack(parts, axis=axis + 1).reshape(*fine.shape[:axis], -1, *fine.shape[axis + 1:])
    got = inference.upsample_interleaved(jnp.asarray(fine), size, n)
    np.testing.assert_allclose(np.asarray(got), np.asarray(resize_bilinear(jnp.asarray(grid), size)), atol=1e-10)
    np.testing.assert_allclose(np.asarray(got), upsample_interleaved_reference(fine, size, n), atol=1e-10)


@pytest.mark.parametrize("section, fragment", [
    ({"mode": "tiles"}, "config.eval.inference.mode: unknown 'tiles'"),
    ({"fusion": "median"}, "config.eval.inference.fusion: unknown 'median'"),
    ({"postprocess": "crf"}, "config.eval.inference.postprocess: unknown 'crf'"),
    ({"combine": "avg"}, "config.eval.inference.combine: no such inference field"),
    ({"mode": "sliding", "window": (0, 0)}, "sliding needs window"),
    ({"mode": "shifted", "shifts": 3}, "config.eval.inference.shifts: 3 is not a square"),
    ({"scales": ()}, "config.eval.inference.scales"),
])
def test_bad_inference_settings_are_named(section, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        inference.spec_from_config(section)
