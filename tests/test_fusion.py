"""The learned fusion of the test-time ensemble (semeda_jax/fusion.py, guidance paper Eqs. 9-10): known weights
recovered on a synthetic problem, the objective and its gradient against NumPy float64, the pixel sampling,
the weights file and the config checks. The stage end to end is in tests/test_guidance.py."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from semeda_jax import fusion, inference
from semeda_jax.validation import ConfigError


def synthetic_views(rng, n, true_weights):
    """Views' probabilities [N,V,C] (Dirichlet) and labels drawn from the fusion with `true_weights` [V,C]."""
    views, classes = true_weights.shape
    probs = rng.dirichlet(np.full(classes, 0.5), size=(n, views))
    fused = np.einsum("vc,nvc->nc", true_weights, probs)
    fused /= fused.sum(-1, keepdims=True)
    labels = (rng.random((n, 1)) > np.cumsum(fused, -1)).sum(-1)
    return probs, np.minimum(labels, classes - 1)


@pytest.mark.usefixtures("float32_jax")
def test_learned_weights_recover_known_weights(rng):
    """Labels drawn from the learned-fusion model with known w: the fit (maximum likelihood) finds w up to the
    one common factor that the fusion cannot see (both scaled to mean 1), and beats the "avg" fusion."""
    true = rng.uniform(0.3, 3.0, (2, 3))
    probs, labels = synthetic_views(rng, 40000, true)
    got = fusion.fit_view_weights(probs, labels, steps=300, learning_rate=0.05)
    # sampling noise of 40000 labels: ~5% (measured over seeds); the weights themselves spread over ~e^+-1
    np.testing.assert_allclose(np.log(got), np.log(true / true.mean()), atol=0.12)
    assert np.abs(np.log(got)).max() > 0.5  # far from the starting point (the avg fusion)
    loss = {name: float(fusion.fusion_loss(jnp.log(jnp.asarray(w, jnp.float32)), jnp.asarray(probs, jnp.float32),
                                           jnp.asarray(labels))) for name, w in (("avg", np.ones((2, 3))),
                                                                                  ("learned", got))}
    assert loss["learned"] < loss["avg"] - 0.01


def test_fusion_loss_and_its_gradient_against_numpy(rng):
    """L = mean -log(sum_v w p_v[y] / sum_c sum_v w p_v[c]) and Eq. 10 through the exp parametrisation, float64."""
    probs = rng.dirichlet(np.ones(5), size=(7, 3))
    labels = rng.integers(0, 5, 7)
    theta = rng.normal(size=(3, 5)) * 0.5
    w = np.exp(theta)
    fused = np.einsum("vc,nvc->nc", w, probs)
    total = fused.sum(-1)
    want = -np.mean(np.log(fused[np.arange(7), labels] / total))
    # dL/dw[v, c] = mean_n (p_v,c / total_n - [c = y_n] p_v,y / fused_y)
    onehot = np.eye(5)[labels]
    grad_w = np.mean(probs / total[:, None, None] - onehot[:, None] * probs / fused[np.arange(7), labels][:, None,
                                                                                                           None], 0)
    value, grad = jax.value_and_grad(fusion.fusion_loss)(jnp.asarray(theta), jnp.asarray(probs), jnp.asarray(labels))
    np.testing.assert_allclose(float(value), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), grad_w * w, rtol=1e-10, atol=1e-14)


def test_sampled_pixels_are_valid_distinct_and_carry_their_views(rng):
    """sample_views draws k distinct valid pixels of each image (void and filler examples excluded) and returns
    their labels and each view's probabilities there."""
    height, width, classes = 6, 5, 3
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3, height, width, classes)), jnp.float32))
    # the label of pixel (y, x) encodes its position, so the sampled ones can be located
    labels = np.full((3, height, width), 255, np.int32)
    labels[0, :4] = 1
    labels[1, :2, :2] = 2
    labels[2] = 0  # a filler example (mask False): nothing of it is sampled
    batch = {"image": jnp.zeros((3, height, width, 3)), "label": jnp.asarray(labels),
             "mask": jnp.asarray([True, True, False])}
    out = fusion.sample_views(lambda v, images, size: (probs, None), None, batch, jax.random.PRNGKey(0), 8)
    assert out["probs"].shape == (3, 8, 2, classes) and out["labels"].shape == (3, 8)
    got = np.asarray(out["labels"])
    assert (got[0] == 1).all() and (got[1] == 2).sum() == 4 and (got[1] == 255).sum() == 4 and (got[2] == 255).all()
    flat = np.asarray(probs).reshape(2, 3, -1, classes)
    for b, pixel_ids in ((0, range(20)), (1, [0, 1, 5, 6])):
        picked = np.asarray(out["probs"][b])[got[b] != 255]  # [k', V, C]
        candidates = flat[:, b, list(pixel_ids)].transpose(1, 0, 2)  # [pixels, V, C]
        matches = [int(np.flatnonzero(np.abs(candidates - p).max((1, 2)) < 1e-7)[0]) for p in picked]
        assert len(set(matches)) == len(matches)  # without replacement


def test_weights_file_round_trip_and_mismatch_errors(tmp_path):
    spec = inference.InferenceSpec(scales=(0.5, 1.0), flip=True, fusion="learned")
    with pytest.raises(FileNotFoundError, match=r"fusion_weights.json: no learned view weights.*learn_fusion"):
        fusion.with_learned_weights(spec, str(tmp_path), 3)
    weights = np.arange(12, dtype=float).reshape(4, 3) + 1
    record = {"views": [[s, f] for s, f in inference.views(spec)], "weights": weights.tolist(), "num_classes": 3}
    fusion.save(record, str(tmp_path))
    loaded = fusion.with_learned_weights(spec, str(tmp_path), 3)
    np.testing.assert_array_equal(np.asarray(loaded.view_weights), weights)
    assert json.load(open(tmp_path / "fusion_weights.json"))["views"][1] == [0.5, True]
    with pytest.raises(ConfigError, match=r"holds weights for the views .* the config has the views"):
        fusion.with_learned_weights(inference.InferenceSpec(scales=(1.0,), flip=True, fusion="learned"),
                                    str(tmp_path), 3)
    with pytest.raises(ConfigError, match="and 3 classes, the config has .* and 5 classes"):
        fusion.with_learned_weights(spec, str(tmp_path), 5)


@pytest.mark.parametrize("field, value, message", [
    ("split", "val", "config.eval.learn_fusion.split: 'val' is the validation split"),
    ("pixels_per_image", 0, "config.eval.learn_fusion.pixels_per_image: expected an integer >= 1, got 0"),
    ("learning_rate", -1.0, "config.eval.learn_fusion.learning_rate: expected a number > 0"),
])
def test_bad_learn_fusion_settings_are_named(field, value, message):
    config = common.base_config()
    config.eval.learn_fusion[field] = value
    with pytest.raises(ConfigError, match=message):
        fusion.options_from_config(config)


def test_training_leaves_the_learned_fusion_to_the_eval_stage():
    """The weights are fitted after training, so the end-of-training evaluation skips a learned-fusion spec (an
    avg one with the same views still runs there)."""
    from semeda_jax import evaluate

    config = common.base_config()
    config.eval.inference.update(scales=(0.5, 1.0), flip=True, fusion="learned")
    assert set(evaluate.evaluators(config)) == {"periodic"}
    config.eval.inference.fusion = "avg"
    assert set(evaluate.evaluators(config)) == {"periodic", "full"}


def test_learned_fusion_without_weights_or_learn_fusion_is_refused_before_any_work(tmp_path):
    from semeda_jax import stages

    config = common.base_config()
    config.eval.inference.fusion = "learned"
    path = tmp_path / fusion.WEIGHTS_FILE
    for plan in (["eval"], ["train", "eval"], ["eval", "learn_fusion"], ["predict"]):
        with pytest.raises(ConfigError, match=rf"^config.eval.inference.fusion: 'learned' reads {path}, which does "
                                              rf"not exist; add learn_fusion to --stages before "):
            stages.check_run(config, plan, str(tmp_path))
    for plan in (["train", "learn_fusion", "eval"], ["train"], ["learn_fusion", "predict"]):
        stages.check_run(config, plan, str(tmp_path))
    path.write_text("{}")  # an earlier run's weights (their views and classes are checked when read)
    stages.check_run(config, ["eval"], str(tmp_path))
    config.eval.inference.fusion = "avg"
    stages.check_run(config, ["eval"], str(tmp_path / "new"))
