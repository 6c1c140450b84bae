"""Per-pixel cross-entropy against a NumPy float64 reference; void, class weights, resizing, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import references as ref
from semeda_jax.losses.ce import cross_entropy
from semeda_jax.validation import InputError


def reference_ce(logits, labels, class_weights=None):
    num_classes = logits.shape[-1]
    if logits.shape[1:3] != labels.shape[1:]:
        logits = ref.bilinear_upsample(logits, *labels.shape[1:])
    log_probs = np.log(ref.softmax(logits))
    total, weight_sum = 0.0, 0.0
    for index in np.ndindex(labels.shape):
        label = labels[index]
        if label == ref.VOID:
            continue
        assert 0 <= label < num_classes
        w = 1.0 if class_weights is None else class_weights[label]
        total += -w * log_probs[index + (label,)]
        weight_sum += w
    return total / weight_sum if weight_sum else 0.0


@pytest.mark.parametrize("num_classes,shape", [(2, (1, 7, 9)), (5, (3, 11, 6)), (21, (2, 8, 8))])
def test_matches_reference(rng, num_classes, shape):
    labels = ref.random_labels(rng, shape, num_classes)
    logits = rng.normal(size=shape + (num_classes,)) * 3
    np.testing.assert_allclose(cross_entropy(logits, labels), reference_ce(logits, labels), rtol=1e-12)


def test_class_weights_match_reference(rng):
    labels = ref.random_labels(rng, (2, 9, 10), 4)
    logits = rng.normal(size=(2, 9, 10, 4))
    weights = rng.uniform(0.1, 3.0, 4)
    np.testing.assert_allclose(cross_entropy(logits, labels, class_weights=weights),
                               reference_ce(logits, labels, weights), rtol=1e-12)


def test_low_resolution_logits_are_upsampled_bilinearly(rng):
    labels = ref.random_labels(rng, (2, 12, 16), 3)
    logits = rng.normal(size=(2, 3, 4, 3))
    np.testing.assert_allclose(cross_entropy(logits, labels), reference_ce(logits, labels), rtol=1e-12)


def test_all_void_batch_is_zero_with_zero_gradient(rng):
    labels = np.full((2, 5, 5), 255, np.int32)
    logits = rng.normal(size=(2, 5, 5, 3))
    assert float(cross_entropy(logits, labels)) == 0.0
    assert not np.asarray(jax.grad(cross_entropy)(logits, labels)).any()


def test_gradient_and_void_pixels(rng):
    labels = ref.random_labels(rng, (2, 6, 7), 4, void_fraction=0.3)
    logits = jnp.asarray(rng.normal(size=(2, 6, 7, 4)))
    check_grads(lambda x: cross_entropy(x, labels, class_weights=[1.0, 2.0, 0.5, 1.5]), (logits,),
                order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    grad = np.asarray(jax.grad(cross_entropy)(logits, labels))
    assert not grad[labels == 255].any()
    assert np.abs(grad[labels != 255]).sum() > 0


def test_jit_matches_eager(rng):
    labels = ref.random_labels(rng, (2, 6, 7), 3)
    logits = rng.normal(size=(2, 6, 7, 3))
    np.testing.assert_allclose(jax.jit(cross_entropy)(logits, labels), cross_entropy(logits, labels), rtol=1e-12)


@pytest.mark.parametrize("logits_shape,labels_shape,labels_fill,message", [
    ((4, 4, 3), (1, 4, 4), 0, "logits: expected rank 4"),
    ((1, 4, 4, 3), (4, 4), 0, "labels: expected rank 3"),
    ((2, 4, 4, 3), (1, 4, 4), 0, "batch sizes differ"),
    ((1, 4, 4, 3), (1, 4, 4), 3, r"values \{3\} are outside \[0, 3\)"),
    ((1, 4, 4, 3), (1, 4, 4), -1, r"values \{-1\}"),
])
def test_bad_input_is_named(logits_shape, labels_shape, labels_fill, message):
    with pytest.raises(InputError, match=message):
        cross_entropy(np.zeros(logits_shape), np.full(labels_shape, labels_fill, np.int32))


def test_bad_class_weights_and_float_labels():
    with pytest.raises(InputError, match=r"class_weights: expected shape \(3,\)"):
        cross_entropy(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2), np.int32), class_weights=[1.0, 2.0])
    with pytest.raises(InputError, match="integer label map"):
        cross_entropy(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2)))
