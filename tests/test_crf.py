"""The guided filter and the guidance CRF (semeda_jax/crf.py) against NumPy float64 references with explicit
windows and an explicit kernel matrix, the compatibility's collapse to a class bias (SPEC.md 4(c)) and its
effect on a constructed scene, a gradient check of the unrolled layer, the CRF layer on a model's outputs, and
the CRF as the inference seam's post-processing "guided_crf" (with the views' mean class_logits)."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags as absl_flags
from jax.test_util import check_grads
from ml_collections import config_flags

from references import softmax
from semeda_jax import crf, inference, stages
from semeda_jax.validation import ConfigError, InputError

SHAPE = (2, 17, 19)


def random_pair(rng, channels=3, shape=SHAPE):
    """p [B,H,W,C] in [0,1] and a 0-255 guide with two colour regions plus noise (edges and flat parts)."""
    p = rng.random((*shape, channels))
    base = np.where(np.arange(shape[2])[None, None, :, None] < shape[2] // 2, [40.0, 90.0, 200.0],
                    [180.0, 60.0, 30.0])
    guide = np.clip(base + rng.normal(scale=25.0, size=(*shape, 3)), 0, 255)
    return p, guide


def window(i, n, r):
    return slice(max(i - r, 0), min(i + r, n - 1) + 1)


def reference_guided_filter(p, guide, r, eps):
    """He et al.'s equations with explicit clipped windows: a_k, b_k per window, then for every pixel the mean of
    a_k, b_k over the windows that contain it (accumulated window by window)."""
    batch, h, w, c = p.shape
    out = np.zeros_like(p)
    for n in range(batch):
        sum_a, sum_b, count = np.zeros((h, w, 3, c)), np.zeros((h, w, c)), np.zeros((h, w, 1))
        for y in range(h):
            for x in range(w):
                win = (window(y, h, r), window(x, w, r))
                guide_k, p_k = guide[n][win].reshape(-1, 3), p[n][win].reshape(-1, c)
                mu, pbar = guide_k.mean(0), p_k.mean(0)
                sigma = (guide_k - mu).T @ (guide_k - mu) / len(guide_k)
                cov = guide_k.T @ p_k / len(guide_k) - np.outer(mu, pbar)
                a = np.linalg.solve(sigma + eps * np.eye(3), cov)
                sum_a[win] += a
                sum_b[win] += pbar - a.T @ mu
                count[win] += 1
        out[n] = np.einsum("hwic,hwi->hwc", sum_a / count[..., None], guide[n]) + sum_b / count
    return out


def reference_kernel(guide, r, eps):
    """The kernel W [HW, HW] of SPEC.md 4(c) for one image [H,W,3], windows clipped to the image:
    W_ij = 1/|K_i| sum_{k in K_i, j in w_k} 1/|w_k| [1 + (I_i - mu_k)^T (Sigma_k + eps U)^-1 (I_j - mu_k)],
    K_i = the windows containing i (|K_i| = |w_k| = |w| without clipping: the paper's 1/|w|^2)."""
    h, w, _ = guide.shape
    flat = guide.reshape(-1, 3)
    kernel, windows_of = np.zeros((h * w, h * w)), np.zeros(h * w)
    for y in range(h):
        for x in range(w):
            mask = np.zeros((h, w), bool)
            mask[window(y, h, r), window(x, w, r)] = True
            members = np.flatnonzero(mask)
            guide_k = flat[members]
            mu = guide_k.mean(0)
            inverse = np.linalg.inv((guide_k - mu).T @ (guide_k - mu) / len(members) + eps * np.eye(3))
            d = guide_k - mu
            kernel[np.ix_(members, members)] += (1 + d @ inverse @ d.T) / len(members)
            windows_of[members] += 1
    return kernel / windows_of[:, None]


def reference_mean_field(unary, guide, r, eps, iterations, weight, mu):
    """Mean field with the explicit kernel: Q = softmax(U); T times Q = softmax(U + w (W Q) mu^T); mu [B,C,C]."""
    out = []
    for n in range(unary.shape[0]):
        kernel, u = reference_kernel(guide[n], r, eps), unary[n].reshape(-1, unary.shape[-1])
        q = softmax(u)
        for _ in range(iterations):
            q = softmax(u + weight * (kernel @ q) @ mu[n].T)
        out.append(q.reshape(unary.shape[1:]))
    return np.stack(out)


def test_box_sum_is_the_clipped_window_sum_on_both_of_its_paths(rng):
    """Window sums (r <= WINDOW_SUM_MAX_RADIUS) and prefix sums (larger r) against explicit windows, on a
    [B,H,W,3,C] array (trailing axes flattened and restored), radii up to beyond the image."""
    x = rng.random((2, 11, 13, 3, 2))
    limit = crf.WINDOW_SUM_MAX_RADIUS
    for radius in (0, 1, limit, limit + 1, 12, 30):
        want = np.zeros_like(x)
        for y in range(11):
            for col in range(13):
                want[:, y, col] = x[:, window(y, 11, radius), window(col, 13, radius)].sum(axis=(1, 2))
        np.testing.assert_allclose(np.asarray(crf.box_sum(jnp.asarray(x), radius)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("radius, eps", [(1, 10.0), (3, 10.0), (2, 0.5), (4, 1e4), (12, 10.0)])
def test_guided_filter_matches_explicit_windows(rng, radius, eps):
    """Borders included (r = 12 exceeds the 17x19 image: every window is clipped)."""
    p, guide = random_pair(rng)
    got = crf.guided_filter(jnp.asarray(p), jnp.asarray(guide), radius, eps)
    np.testing.assert_allclose(np.asarray(got), reference_guided_filter(p, guide, radius, eps), rtol=1e-9, atol=1e-9)


def test_guided_filter_is_the_kernel_of_the_spec_and_normalised(rng):
    p, guide = random_pair(rng, channels=2, shape=(1, 7, 8))
    kernel = reference_kernel(guide[0], 2, 10.0)
    np.testing.assert_allclose(kernel.sum(1), 1.0, atol=1e-12)
    got = crf.guided_filter(jnp.asarray(p), jnp.asarray(guide), 2, 10.0)
    np.testing.assert_allclose(np.asarray(got)[0].reshape(-1, 2), kernel @ p[0].reshape(-1, 2), atol=1e-10)
    ones = crf.guided_filter(jnp.ones((2, 17, 19, 3)), jnp.asarray(random_pair(rng)[1]), 3, 10.0)
    np.testing.assert_allclose(np.asarray(ones), 1.0, atol=1e-12)


def test_infinite_eps_is_the_box_filter_applied_twice(rng):
    """eps -> infinity: a_k -> 0, b_k -> the window mean of p, so q_i = the mean over the windows containing i
    of their means of p (the box filter, twice: He et al.'s b is box-filtered again)."""
    p, guide = random_pair(rng)
    box = np.zeros_like(p)
    for y in range(SHAPE[1]):
        for x in range(SHAPE[2]):
            box[:, y, x] = p[:, window(y, SHAPE[1], 2), window(x, SHAPE[2], 2)].mean(axis=(1, 2))
    twice = np.zeros_like(p)
    for y in range(SHAPE[1]):
        for x in range(SHAPE[2]):
            twice[:, y, x] = box[:, window(y, SHAPE[1], 2), window(x, SHAPE[2], 2)].mean(axis=(1, 2))
    got = crf.guided_filter(jnp.asarray(p), jnp.asarray(guide), 2, 1e13)
    np.testing.assert_allclose(np.asarray(got), twice, atol=1e-7)
    assert np.abs(np.asarray(crf.guided_filter(jnp.asarray(p), jnp.asarray(guide), 2, 10.0)) - twice).max() > 1e-2


def test_shapes_dtypes_and_bad_inputs_are_named(rng):
    p, guide = random_pair(rng)
    q32 = crf.guided_filter(jnp.asarray(p, jnp.float32), jnp.asarray(guide, jnp.uint8), 2)
    assert q32.shape == p.shape and q32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(q32), reference_guided_filter(p.astype(np.float32).astype(np.float64),
                                                                       guide.astype(np.uint8).astype(float), 2, 10.0),
                               atol=2e-4)
    assert crf.guided_filter(jnp.asarray(p, jnp.bfloat16), jnp.asarray(guide), 2).dtype == jnp.bfloat16
    p, guide = jnp.asarray(p), jnp.asarray(guide)
    bad = [((p[0], guide, 2, 10.0), r"p: expected rank 4 \[B,H,W,C\]"),
           ((p, guide[..., :2], 2, 10.0), r"guide: expected \[B,H,W,3\] with the B,H,W of p"),
           ((p, guide[:, 1:], 2, 10.0), r"guide: expected \[B,H,W,3\]"),
           ((p.astype(jnp.int32), guide, 2, 10.0), "p: expected a floating-point array, got dtype int32"),
           ((p, guide, -1, 10.0), "radius: expected an integer >= 0, got -1"),
           ((p, guide, 1.5, 10.0), "radius: expected an integer >= 0, got 1.5"),
           ((p, guide, 2, 0.0), r"eps: expected a finite number > 0 \(on 0-255 intensities\), got 0.0"),
           ((p, guide, 2, float("inf")), "eps: expected a finite number > 0")]
    for args, message in bad:
        with pytest.raises(InputError, match=message):
            crf.guided_filter(*args)
    with pytest.raises(InputError, match=r"compatibility: expected \[C,C\] or \[B,C,C\] with C = 3, B = 2"):
        crf.mean_field(p, guide, radius=2, compatibility=jnp.eye(4))
    with pytest.raises(InputError, match=r"unary: expected rank 4 \[B,H,W,C\]"):
        crf.mean_field(p[0], guide, radius=2)
    with pytest.raises(InputError, match="iterations: expected an integer >= 0"):
        crf.mean_field(p, guide, radius=2, iterations=-1)


def test_mean_field_matches_the_explicit_kernel_reference(rng):
    """Potts ([C,C]) and the content-sensitive compatibility per image ([B,C,C]), 3 iterations."""
    _, guide = random_pair(rng, shape=(2, 7, 8))
    unary = rng.normal(size=(2, 7, 8, 4))
    scores = rng.normal(size=(2, 4))
    mu = np.eye(4)[None] + 0.7 * (scores[:, :, None] + scores[:, None, :])
    np.testing.assert_allclose(np.asarray(crf.content_compatibility(jnp.asarray(scores), 0.7)), mu, atol=1e-14)
    for compatibility, ref_mu in ((None, np.stack([np.eye(4)] * 2)), (jnp.asarray(mu), mu)):
        got = crf.mean_field(jnp.asarray(unary), jnp.asarray(guide), radius=2, eps=10.0, iterations=3, weight=1.5,
                             compatibility=compatibility)
        want = reference_mean_field(unary, guide, 2, 10.0, 3, 1.5, ref_mu)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-10)


def test_zero_pairwise_weight_or_no_iteration_returns_softmax_of_the_unary(rng):
    _, guide = random_pair(rng)
    unary = rng.normal(size=(*SHAPE, 5)) * 3
    for weight, iterations in ((0.0, 5), (2.0, 0)):
        got = crf.mean_field(jnp.asarray(unary), jnp.asarray(guide), radius=3, iterations=iterations, weight=weight)
        np.testing.assert_allclose(np.asarray(got), softmax(unary), atol=1e-14)


def test_content_compatibility_is_a_per_class_global_bias(rng):
    """SPEC.md 4(c): with sum_l' m(l') = 1 (normalised filter), mu = delta + lambda (s(l) + s(l')) gives the same
    Q as the Potts update with the unary U + w lambda s(l), iteration by iteration from Q = softmax(U)."""
    _, guide = random_pair(rng)
    unary, scores = rng.normal(size=(*SHAPE, 4)), rng.normal(size=(2, 4)) * 2
    lam, weight, iterations = 0.8, 1.7, 4
    got = crf.mean_field(jnp.asarray(unary), jnp.asarray(guide), radius=3, iterations=iterations, weight=weight,
                         compatibility=crf.content_compatibility(jnp.asarray(scores), lam))
    setup = crf.guided_filter_setup(jnp.asarray(guide), 3, 10.0, jnp.float64)
    biased = jnp.asarray(unary + weight * lam * scores[:, None, None, :])
    q = jax.nn.softmax(jnp.asarray(unary))
    for _ in range(iterations):
        q = crf.mean_field_update(q, biased, setup, weight, crf.potts_compatibility(4, jnp.float64))
    np.testing.assert_allclose(np.asarray(got), np.asarray(q), atol=1e-12)
    potts = crf.mean_field(jnp.asarray(unary), jnp.asarray(guide), radius=3, iterations=iterations, weight=weight)
    assert np.abs(np.asarray(potts) - np.asarray(got)).max() > 1e-2  # the bias matters


def test_a_noisy_label_inside_a_flat_region_is_cleaned_and_the_colour_edge_kept():
    """Two flat colour regions labelled 0 | 1 by the unary (margin 2), with 3 pixels flipped (margin 1 the
    other way): after the CRF every pixel has its region's label, on both sides of the colour edge."""
    h, w = 17, 19
    region = (np.arange(w) >= 9).astype(int)[None, :].repeat(h, 0)
    guide = np.where(region[None, ..., None] == 0, [30.0, 120.0, 200.0], [210.0, 80.0, 40.0])
    margin = np.where(region == 0, 2.0, -2.0)
    for y, x in ((4, 3), (12, 6), (8, 14)):
        margin[y, x] = -1.0 if region[y, x] == 0 else 1.0
    unary = np.stack([margin, -margin], -1)[None] / 2
    assert (np.argmax(unary[0], -1) != region).sum() == 3
    q = crf.mean_field(jnp.asarray(unary), jnp.asarray(guide), radius=3, iterations=5, weight=4.0)
    np.testing.assert_array_equal(np.argmax(np.asarray(q)[0], -1), region)


def test_gradients_of_the_unrolled_layer():
    """Reverse- and forward-mode derivatives (unary, class scores, weight) against finite differences (float64)."""
    rng = np.random.default_rng(1)
    _, guide = random_pair(rng, shape=(1, 6, 7))
    guide = jnp.asarray(guide)

    def layer(unary, scores, weight):
        q = crf.mean_field(unary, guide, radius=2, iterations=3, weight=weight,
                           compatibility=crf.content_compatibility(scores, 0.5))
        return jnp.sum(q * jnp.sin(jnp.arange(q.size, dtype=q.dtype).reshape(q.shape)))

    args = (jnp.asarray(rng.normal(size=(1, 6, 7, 3))), jnp.asarray(rng.normal(size=(1, 3))), jnp.asarray(1.3))
    check_grads(layer, args, order=1, modes=("rev", "fwd"), atol=1e-6, rtol=1e-6)


def two_class_scene(h=9, w=10):
    """A flat guide and a unary that slightly prefers class 0 over class 1 everywhere (class 2 unlikely)."""
    guide = np.full((1, h, w, 3), [90.0, 120.0, 60.0]) + np.random.default_rng(3).normal(size=(1, h, w, 3))
    unary = np.zeros((1, h, w, 3))
    unary[..., 0], unary[..., 2] = 0.3, -4.0
    return unary, guide


def test_content_compatibility_moves_the_labels_towards_the_guided_class():
    """The classification branch says "class 1 is in the image" (s_g = [-1, 2, -1]): with the content-sensitive
    compatibility the region the unary gives to class 0 by a small margin goes to class 1, with Potts it stays 0,
    and Q(class 1) grows monotonically with lambda."""
    unary, guide = two_class_scene()
    scores = jnp.asarray([[-1.0, 2.0, -1.0]])
    run = functools.partial(crf.mean_field, jnp.asarray(unary), jnp.asarray(guide), radius=2, iterations=5,
                            weight=1.0)
    assert (np.argmax(np.asarray(run()), -1) == 0).all()
    q1 = [float(np.asarray(run(compatibility=crf.content_compatibility(scores, lam)))[..., 1].mean())
          for lam in (0.0, 0.1, 0.5)]
    assert q1[0] < 0.5 < q1[2] and q1[0] < q1[1] < q1[2]
    content = run(compatibility=crf.content_compatibility(scores, 0.5))
    assert (np.argmax(np.asarray(content), -1) == 1).all()


def test_post_processing_gets_the_views_mean_class_logits(rng):
    """Through build_predict_fn: the content CRF of the fused probabilities with the mean over the views of
    the network's class_logits (which differ per view here: they are means of the view's logits)."""
    kernel = rng.normal(size=(3, 3, 3, 4))
    conv = conv_apply_fn(kernel)

    def apply_fn(variables, images, train=False):
        logits = conv(variables, images)["logits"]
        return {"logits": logits, "class_logits": 3 * jnp.mean(logits, axis=(1, 2))}

    x = jnp.asarray(rng.normal(size=(2, 12, 14, 3)))
    options = crf.options_from_config({**parse().eval.crf.to_dict(), "compatibility": "content", "lam": 0.7,
                                       "radius": 2}, parse().data)
    spec = inference.InferenceSpec(scales=(1.0, 0.5), flip=True, fusion="avg", postprocess="guided_crf",
                                   postprocess_options=tuple(sorted(options.items())))
    got = inference.build_predict_fn(spec, apply_fn)(None, x, (12, 14))
    probs, scores = inference.build_views_fn(spec, apply_fn)(None, x, (12, 14))
    assert scores.shape == (4, 2, 4) and np.abs(np.asarray(scores[0] - scores[3])).max() > 1e-3
    want = crf.crf_postprocess(jnp.mean(probs, 0), x, jnp.mean(scores, 0), **options)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12)
    potts = crf.crf_postprocess(jnp.mean(probs, 0), x, None, **{**options, "compatibility": "potts"})
    assert np.abs(np.asarray(got) - np.asarray(potts)).max() > 1e-3
    with pytest.raises(ConfigError, match="'content' reads the model output 'class_logits'"):
        inference.build_predict_fn(spec, conv)(None, x, (12, 14))


def test_the_crf_layer_refines_the_logits_at_their_resolution(rng):
    """CRFLayer = mean_field_logits of the logits with the images resized to their grid as the guide; softmax of
    mean_field_logits is mean_field's Q; the content compatibility reads the outputs' class_logits."""
    unary, guide = two_class_scene(8, 6)
    mean, std = (100.0, 110.0, 90.0), (50.0, 60.0, 55.0)
    images = np.repeat(np.repeat((guide - np.asarray(mean)) / np.asarray(std), 2, 1), 2, 2)  # [1,16,12,3]
    options = dict(mean=mean, std=std, radius=2, eps=10.0, iterations=3, weight=1.5, lam=0.5)
    outputs = {"logits": jnp.asarray(unary), "class_logits": jnp.asarray([[-1.0, 2.0, -1.0]])}
    for compatibility, mu in (("potts", None), ("content", crf.content_compatibility(outputs["class_logits"], 0.5))):
        got = crf.CRFLayer(compatibility=compatibility, **options)(outputs, jnp.asarray(images))
        small = jax.image.resize(jnp.asarray(images), (1, 8, 6, 3), "bilinear", antialias=True)
        want = crf.mean_field_logits(outputs["logits"], small * jnp.asarray(std) + jnp.asarray(mean), radius=2,
                                     iterations=3, weight=1.5, compatibility=mu)
        np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(want), atol=1e-12)
        assert got["class_logits"] is outputs["class_logits"]
        np.testing.assert_allclose(np.asarray(jax.nn.softmax(want)), np.asarray(crf.mean_field(
            outputs["logits"], small * jnp.asarray(std) + jnp.asarray(mean), radius=2, iterations=3, weight=1.5,
            compatibility=mu)), atol=1e-12)
    with pytest.raises(ConfigError, match=r"'class_logits'.*\(config.model.crf_layer\)"):
        crf.CRFLayer(compatibility="content", **options)({"logits": outputs["logits"]}, jnp.asarray(images))


def test_postprocess_un_normalises_the_images(rng):
    """The post-processor = mean field on log p with the images x std + mean as the 0-255 guide."""
    p, guide = random_pair(rng)
    p = p / p.sum(-1, keepdims=True)
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    images = (guide - np.asarray(mean)) / np.asarray(std)
    got = crf.crf_postprocess(jnp.asarray(p), jnp.asarray(images), mean=mean, std=std, radius=2, eps=10.0,
                              iterations=3, weight=2.0)
    want = crf.mean_field(jnp.log(jnp.asarray(p)), jnp.asarray(guide), radius=2, eps=10.0, iterations=3, weight=2.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12)


def parse(*overrides):
    """configs/demo.py with command-line overrides, parsed as main.py's --config flag does."""
    flag_values = absl_flags.FlagValues()
    argv = ["prog", f"--config={pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'demo.py'}", *overrides]
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def conv_apply_fn(kernel):
    def apply_fn(variables, images, train=False):
        return {"logits": jax.lax.conv_general_dilated(images, jnp.asarray(kernel, images.dtype), (1, 1), "SAME",
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))}
    return apply_fn


def test_guided_crf_post_processing_through_the_config_and_build_predict_fn(rng):
    apply_fn = conv_apply_fn(rng.normal(size=(3, 3, 3, 4)))
    x = jnp.asarray(rng.normal(size=(2, 12, 14, 3)))
    plain = inference.build_predict_fn(inference.InferenceSpec(), apply_fn)(None, x, (12, 14))
    off = parse("--config.eval.inference.postprocess=guided_crf", "--config.eval.crf.weight=0")
    stages.check_config(off)
    spec = inference.spec_for(off)
    assert dict(spec.postprocess_options)["mean"] == tuple(off.data.mean)
    got = inference.build_predict_fn(spec, apply_fn)(None, x, (12, 14))
    np.testing.assert_allclose(np.asarray(got), np.asarray(plain), atol=1e-12)
    on = parse("--config.eval.inference.postprocess=guided_crf", "--config.eval.crf.radius=2")
    got = jax.jit(inference.build_predict_fn(inference.spec_for(on), apply_fn), static_argnums=2)(None, x, (12, 14))
    assert got.shape == plain.shape
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, atol=1e-12)
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-3
    assert inference.spec_for(parse()).postprocess_options == ()


@pytest.mark.parametrize("override, message", [
    ("--config.eval.crf.eps=0", "config.eval.crf.eps: expected a finite number > 0, got 0.0"),
    ("--config.eval.crf.radius=-2", "config.eval.crf.radius: expected an integer >= 0, got -2"),
    ("--config.eval.crf.compatibility=pairs", "config.eval.crf.compatibility: unknown 'pairs'"),
    ("--config.eval.crf.lam=nan", "config.eval.crf.lam: expected a finite number, got nan"),
    ("--config.eval.crf.compatibility=content",
     "config.eval.crf.compatibility: 'content' reads the model output 'class_logits', which the model does not "
     r"produce \(post-processing\)"),
])
def test_bad_crf_settings_are_named(override, message):
    config = parse("--config.eval.inference.postprocess=guided_crf", override)
    with pytest.raises(ConfigError, match=message):
        stages.check_config(config)
