"""Focal loss (Lin et al. 2017, softmax form) against a float64 per-pixel NumPy loop; gamma = 0 is CE exactly."""
import jax
import numpy as np
import pytest

import references as ref
from semeda_jax.losses.ce import cross_entropy
from semeda_jax.losses.focal import focal_loss
from semeda_jax.validation import InputError


@pytest.mark.parametrize("gamma,alpha,weights,masked", [
    (2.0, None, None, False), (0.5, (0.25, 1.0, 0.75, 2.0), None, True), (3.0, None, (1.0, 0.0, 2.0, 0.5), True),
    (1.0, (0.25, 1.0, 0.75, 2.0), (1.0, 3.0, 2.0, 0.5), False),
])
def test_matches_reference(rng, gamma, alpha, weights, masked):
    logits, labels, mask = ref.loss_case(rng, 4, shape=(2, 7, 9), logits_hw=(4, 5), absent=(3,))
    kw = dict(gamma=gamma, alpha=alpha, class_weights=weights, pixel_mask=mask if masked else None)
    np.testing.assert_allclose(focal_loss(logits, labels, **kw), ref.focal(logits, labels, **kw), rtol=1e-12)


@pytest.mark.parametrize("weights,masked", [(None, False), ((0.5, 2.0, 1.0), True)])
def test_gamma_zero_without_alpha_is_cross_entropy_exactly(rng, weights, masked):
    logits, labels, mask = ref.loss_case(rng, 3, shape=(2, 8, 8), logits_hw=(3, 5))
    kw = dict(class_weights=weights, pixel_mask=mask if masked else None)
    for x in (logits, logits.astype(np.float32)):
        assert float(focal_loss(x, labels, gamma=0.0, **kw)) == float(cross_entropy(x, labels, **kw))


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_gradient_matches_reference_finite_differences(rng, gamma):
    logits, labels, mask = ref.loss_case(rng, 3, shape=(2, 4, 5), logits_hw=(3, 3))
    kw = dict(gamma=gamma, alpha=(0.25, 1.0, 0.5), class_weights=(1.0, 2.0, 0.5), pixel_mask=mask)
    grad = jax.grad(lambda x: focal_loss(x, labels, **kw))(logits)
    np.testing.assert_allclose(grad, ref.numeric_grad(lambda x: ref.focal(x, labels, **kw), logits),
                               rtol=1e-6, atol=1e-9)


def test_confident_pixels_saturate_to_zero_and_void_gets_no_gradient(rng):
    logits, labels, mask = ref.loss_case(rng, 3, void_fraction=0.3)
    perfect = 1000.0 * np.eye(3)[np.where(labels == 255, 0, labels)]  # p_t == 1 exactly: (1 - p_t)^gamma = 0
    assert float(focal_loss(perfect, labels)) == 0.0
    assert np.isfinite(np.asarray(jax.grad(lambda x: focal_loss(x, labels, gamma=0.5))(perfect))).all()
    grad = np.asarray(jax.grad(lambda x: focal_loss(x, labels, pixel_mask=mask))(logits))
    assert not grad[(labels == 255) | ~mask].any() and grad[(labels != 255) & mask].any()
    void = np.full_like(labels, 255)
    assert float(focal_loss(logits, void)) == 0.0 and not np.asarray(jax.grad(focal_loss)(logits, void)).any()


@pytest.mark.parametrize("kw,message", [
    ({"gamma": -1.0}, "gamma: expected a number >= 0.0, got -1.0"),
    ({"alpha": (0.25, 0.75)}, r"alpha: expected shape \(3,\), got \(2,\)"),
    ({"alpha": 0.25}, r"alpha: expected shape \(3,\), got \(\)"),
    ({"class_weights": (1.0, np.nan, 1.0)}, "class_weights: expected finite weights >= 0"),
    ({"pixel_mask": np.ones((1, 4), bool)}, "pixel_mask: expected a bool array"),
])
def test_bad_input_is_named(kw, message):
    with pytest.raises(InputError, match=message):
        focal_loss(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4), np.int32), **kw)
