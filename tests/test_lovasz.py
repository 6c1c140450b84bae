"""Lovasz-softmax against a float64 reference built from the definition of the Lovasz extension as a Choquet
integral over error levels (no sorted cumulative sums), and against the Jaccard loss on 0/1 errors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references as ref
from semeda_jax.losses.lovasz import lovasz_extension, lovasz_softmax_loss
from semeda_jax.validation import InputError


def test_extension_equals_jaccard_loss_on_every_binary_error_vector():
    truth = np.array([1, 0, 1, 1, 0, 0], float)
    cases = np.array(list(itertools.product((0.0, 1.0), repeat=truth.size)))
    got = lovasz_extension(jnp.asarray(cases), jnp.broadcast_to(truth, cases.shape))
    expected = [ref.jaccard_set_loss(set(np.flatnonzero(m).tolist()), set(np.flatnonzero(truth).tolist()))
                for m in cases]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_extension_matches_the_level_set_integral(rng):
    errors = rng.random((20, 9))
    errors[:, :3] = np.round(errors[:, :3], 1)  # ties
    errors[:5, 4] = 0.0
    truth = (rng.random((20, 9)) < 0.4).astype(float)
    expected = [ref.lovasz_extension_by_levels(e, t) for e, t in zip(errors, truth)]
    np.testing.assert_allclose(lovasz_extension(errors, truth), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("per_image,classes", [(False, "present"), (True, "present"), (False, "all"), (True, "all")])
@pytest.mark.parametrize("weighted,masked", [(False, False), (True, True)])
def test_matches_reference(rng, per_image, classes, weighted, masked):
    logits, labels, mask = ref.loss_case(rng, 4, shape=(3, 6, 7), logits_hw=(3, 4), absent=(2,))
    labels[2] = np.where(labels[2] == 1, 0, labels[2])  # class 1 absent from image 2 only
    kw = dict(per_image=per_image, classes=classes, class_weights=(1.0, 0.5, 2.0, 3.0) if weighted else None,
              pixel_mask=mask if masked else None)
    np.testing.assert_allclose(lovasz_softmax_loss(logits, labels, **kw), ref.lovasz_softmax(logits, labels, **kw),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("per_image,classes", [(False, "present"), (True, "all")])
def test_gradient_matches_reference_finite_differences(rng, per_image, classes):
    logits, labels, mask = ref.loss_case(rng, 3, shape=(2, 4, 5), logits_hw=(3, 3), absent=(1,))
    kw = dict(per_image=per_image, classes=classes, class_weights=(1.0, 2.0, 0.5), pixel_mask=mask)
    grad = jax.grad(lambda x: lovasz_softmax_loss(x, labels, **kw))(logits)
    expected = ref.numeric_grad(lambda x: ref.lovasz_softmax(x, labels, **kw), logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)


def test_absent_classes_perfect_prediction_void_and_masked_pixels(rng):
    logits, labels, mask = ref.loss_case(rng, 3, absent=(2,))
    perfect = 60.0 * np.eye(3)[np.where(labels == 255, 0, labels)]
    assert abs(float(lovasz_softmax_loss(perfect, labels, classes="all"))) < 1e-12
    # "all" scores an absent class by its largest probability over the counted pixels.
    worst = ref.label_probs(logits, labels)[..., 2][labels != 255].max()
    present = float(lovasz_softmax_loss(logits, labels))
    np.testing.assert_allclose(lovasz_softmax_loss(logits, labels, classes="all"), (2 * present + worst) / 3,
                               rtol=1e-12)
    grad = np.asarray(jax.grad(lambda x: lovasz_softmax_loss(x, labels, pixel_mask=mask))(logits))
    assert not grad[(labels == 255) | ~mask].any() and grad[(labels != 255) & mask].any()
    void = np.full_like(labels, 255)
    for per_image in (False, True):
        loss = lambda x: lovasz_softmax_loss(x, void, per_image=per_image)  # noqa: E731
        assert float(loss(logits)) == 0.0 and not np.asarray(jax.grad(loss)(logits)).any()
    np.testing.assert_allclose(jax.jit(lambda x: lovasz_softmax_loss(x, labels))(logits), present, rtol=1e-12)


@pytest.mark.parametrize("kw,message", [
    ({"classes": "some"}, r"classes: expected one of \('present', 'all'\), got 'some'"),
    ({"per_image": "yes"}, r"per_image: expected one of \(False, True\), got 'yes'"),
    ({"class_weights": (1.0, 1.0, 1.0, 1.0)}, r"class_weights: expected shape \(3,\), got \(4,\)"),
    ({"pixel_mask": np.ones((1, 4, 4))}, "pixel_mask: expected a bool array"),
])
def test_bad_input_is_named(kw, message):
    with pytest.raises(InputError, match=message):
        lovasz_softmax_loss(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4), np.int32), **kw)
