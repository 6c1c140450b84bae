"""Sobel-loss baseline against a NumPy reference with explicit per-class filtering."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import references as ref
from semeda_jax.losses.sobel import sobel_loss, sobel_responses


def reference_sobel_loss(logits, labels, coefficient, reduction):
    num_classes = logits.shape[-1]
    probs, truth, valid = ref.void_neutral_masks(logits, labels, num_classes)
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    total = 0.0
    for kernel in (sobel_x, sobel_x.T):
        for c in range(num_classes):
            k = np.zeros((3, 3, 1, 1))
            k[:, :, 0, 0] = kernel
            response = lambda m: ref.conv2d_same(m[..., c:c + 1], k, pad_mode="edge")[..., 0]
            total += np.abs(response(probs) - response(truth))[valid].sum()
    n = max(valid.sum(), 1)
    scale = {"mean_pixels_sum_channels": 1 / n, "mean": 1 / (n * 2 * num_classes), "sum": 1 / labels.shape[0]}
    return coefficient * total * scale[reduction]


@pytest.mark.parametrize("reduction", ["mean_pixels_sum_channels", "mean", "sum"])
@pytest.mark.parametrize("num_classes,shape", [(2, (1, 7, 8)), (5, (2, 9, 6)), (21, (1, 8, 8))])
def test_matches_reference(rng, reduction, num_classes, shape):
    labels = ref.random_labels(rng, shape, num_classes)
    logits = rng.normal(size=shape + (num_classes,)) * 2
    np.testing.assert_allclose(sobel_loss(logits, labels, coefficient=4.0, reduction=reduction),
                               reference_sobel_loss(logits, labels, 4.0, reduction), rtol=1e-10)


def test_uniform_region_and_border_give_no_response(rng):
    labels = np.full((1, 6, 6), 2, np.int32)
    logits = np.zeros((1, 6, 6, 3))
    logits[..., 2] = rng.normal(size=(1, 6, 6)) * 0 + 1.0  # constant prediction, not one-hot
    assert float(sobel_loss(logits, labels)) < 1e-12


def test_gradient_and_void(rng):
    labels = ref.random_labels(rng, (1, 7, 6), 3, void_fraction=0.3)
    logits = jnp.asarray(rng.normal(size=(1, 7, 6, 3)))
    check_grads(lambda x: sobel_loss(x, labels), (logits,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    grad = np.asarray(jax.grad(sobel_loss)(logits, labels))
    assert not grad[labels == 255].any()
    assert np.abs(grad[labels != 255]).sum() > 0


def test_responses_are_the_sobel_filters(rng):
    masks = rng.random((2, 6, 7, 3))
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    kernel = np.zeros((3, 3, 3, 6))
    for c in range(3):
        kernel[:, :, c, c], kernel[:, :, c, 3 + c] = sobel_x, sobel_x.T
    np.testing.assert_allclose(sobel_responses(masks), ref.conv2d_same(masks, kernel, pad_mode="edge"), atol=1e-12)
