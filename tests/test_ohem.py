"""OHEM cross-entropy (RelationNet Eq. 3) against a float64 NumPy reference that sorts the probabilities."""
import jax
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import softmax

from semeda_jax.losses.ohem import ohem_cross_entropy, ohem_kept_mask
from semeda_jax.validation import InputError

VOID = 255


def logits_and_labels(rng, num_classes, shape=(2, 9, 11), void_fraction=0.2):
    logits = rng.normal(scale=1.5, size=shape + (num_classes,))
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < void_fraction] = VOID
    return logits, labels.astype(np.int32)


def ref_true_prob(logits, labels):
    safe = np.where(labels == VOID, 0, labels)
    return np.take_along_axis(softmax(logits, axis=-1), safe[..., None], -1)[..., 0]


def ref_kept(logits, labels, threshold, min_kept):
    prob, valid = ref_true_prob(logits, labels).ravel(), (labels != VOID).ravel()
    kept = valid & (prob < threshold)
    valid_idx = np.flatnonzero(valid)
    kept[valid_idx[np.argsort(prob[valid_idx], kind="stable")[:min_kept]]] = True
    return kept.reshape(labels.shape)


def ref_loss(logits, labels, threshold, min_kept):
    kept = ref_kept(logits, labels, threshold, min_kept)
    return -np.log(ref_true_prob(logits, labels)[kept]).mean() if kept.any() else 0.0


@pytest.mark.parametrize("num_classes", [2, 5, 21])
@pytest.mark.parametrize("threshold,min_kept", [(0.6, 0), (0.3, 25), (0.6, 10**6), (0.05, 3)])
def test_matches_sorting_reference(rng, num_classes, threshold, min_kept):
    logits, labels = logits_and_labels(rng, num_classes)
    kept = ohem_kept_mask(logits, labels, threshold=threshold, min_kept=min_kept)
    np.testing.assert_array_equal(kept, ref_kept(logits, labels, threshold, min_kept))
    got = ohem_cross_entropy(logits, labels, threshold=threshold, min_kept=min_kept)
    np.testing.assert_allclose(got, ref_loss(logits, labels, threshold, min_kept), rtol=1e-12)


def test_paper_setting_keeps_exactly_the_hard_pixels(rng):
    logits, labels = logits_and_labels(rng, 5)
    prob, valid = ref_true_prob(logits, labels), labels != VOID
    kept = np.asarray(ohem_kept_mask(logits, labels))
    assert 0 < kept.sum() < valid.sum()
    np.testing.assert_array_equal(kept, valid & (prob < 0.6))


def test_min_kept_beyond_valid_count_keeps_every_valid_pixel(rng):
    logits, labels = logits_and_labels(rng, 5, shape=(1, 4, 5))
    kept = ohem_kept_mask(logits, labels, threshold=0.0, min_kept=1000)
    np.testing.assert_array_equal(kept, labels != VOID)


def test_nothing_kept_gives_zero_loss_and_gradient():
    labels = np.array([[[0, 1], [VOID, 1]]], np.int32)
    logits = 20.0 * np.eye(2)[np.where(labels == VOID, 0, labels)]
    loss = lambda x: ohem_cross_entropy(x, labels)  # noqa: E731
    assert float(loss(logits)) == 0.0
    assert np.all(np.asarray(jax.grad(loss)(logits)) == 0)
    assert float(ohem_cross_entropy(logits, labels, min_kept=1)) > 0


def test_void_never_takes_a_min_kept_slot():
    """Void pixels come first in the flat order and tie with saturated valid pixels (p == 1 exactly)."""
    labels = np.array([[[VOID, VOID, 0], [1, VOID, 0]]], np.int32)
    logits = 1000.0 * np.eye(2)[np.where(labels == VOID, 0, labels)]
    np.testing.assert_array_equal(ohem_kept_mask(logits, labels, min_kept=3), labels != VOID)


@pytest.mark.parametrize("min_kept", [0, 30])
def test_gradients_and_zero_gradient_outside_kept(rng, min_kept):
    logits, labels = logits_and_labels(rng, 5)
    prob = ref_true_prob(logits, labels)
    assert np.abs(prob - 0.6).min() > 1e-3  # no pixel flips its selection within the finite-difference step
    loss = lambda x: ohem_cross_entropy(x, labels, min_kept=min_kept)  # noqa: E731
    check_grads(loss, (logits,), order=1)
    grad_norm = np.abs(np.asarray(jax.grad(loss)(logits))).sum(-1)
    kept = ref_kept(logits, labels, 0.6, min_kept)
    assert np.all(grad_norm[~kept] == 0) and np.all(grad_norm[kept] > 0)


def test_jit_with_traced_threshold(rng):
    logits, labels = logits_and_labels(rng, 5)
    jitted = jax.jit(lambda x, t: ohem_cross_entropy(x, labels, threshold=t, min_kept=4))
    for threshold in (0.2, 0.6):
        np.testing.assert_allclose(jitted(logits, threshold), ref_loss(logits, labels, threshold, 4), rtol=1e-12)


@pytest.mark.parametrize("logit_shape,label_shape,labels_value,min_kept,match", [
    ((5, 5, 3), (1, 5, 5), 0, 0, "logits: expected rank 4"),
    ((1, 5, 5, 3), (1, 5, 5, 1), 0, 0, "labels: expected rank 3"),
    ((2, 5, 5, 3), (3, 5, 5), 0, 0, r"batch sizes differ \(2 vs 3\)"),
    ((1, 5, 5, 3), (1, 5, 5), 3, 0, r"labels: values \{3\}"),
    ((1, 5, 5, 3), (1, 5, 5), 0, -1, "min_kept: expected an integer >= 0, got -1"),
    ((1, 5, 5, 3), (1, 5, 5), 0, 2.5, "min_kept: expected an integer >= 0, got 2.5"),
])
def test_bad_input_raises(logit_shape, label_shape, labels_value, min_kept, match):
    for fn in (ohem_cross_entropy, ohem_kept_mask):
        with pytest.raises(InputError, match=match):
            fn(np.zeros(logit_shape), np.full(label_shape, labels_value, np.int32), min_kept=min_kept)
