"""Pieces every loss shares: the logits-to-labels resize (point-sampled bilinear both ways) and how
out-of-range labels behave under jit (void, in every loss)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references as ref
from semeda_jax import losses
from semeda_jax.losses.common import resize_to_labels


@pytest.mark.parametrize("logits_hw,labels_hw", [((4, 2), (2, 1)), ((3, 5), (12, 20)), ((9, 16), (4, 7)),
                                                 ((6, 6), (6, 6))])
def test_resize_matches_point_sampled_bilinear(rng, logits_hw, labels_hw):
    logits = rng.normal(size=(2, *logits_hw, 3))
    labels = np.zeros((2, *labels_hw), np.int32)
    np.testing.assert_allclose(resize_to_labels(logits, labels), ref.bilinear_upsample(logits, *labels_hw),
                               rtol=1e-12, atol=1e-12)


def test_shrinking_does_not_antialias():
    # logits [1,1,4,2] (channel 0 = 0, 1, 2, 3) to labels [1,1,2]: the pixel centres fall halfway between
    # columns 0-1 and 2-3 -> 0.5 and 2.5 (an antialiased resize gives 0.714 and 2.286).
    logits = np.stack([np.arange(4.0), np.zeros(4)], -1)[None, None]
    np.testing.assert_allclose(resize_to_labels(logits, np.zeros((1, 1, 2), np.int32))[0, 0, :, 0], [0.5, 2.5],
                               rtol=1e-12)
    labels = np.array([[[0, 1]]])
    expected = -np.log(ref.softmax(np.array([[0.5, 0.0], [2.5, 0.0]]))[[0, 1], [0, 1]]).mean()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-12)


def _loss_fns(num_classes, rng):
    edge_params = losses.init_edge_net(jax.random.PRNGKey(0), num_classes)
    return {
        "ce": losses.cross_entropy,
        "semeda": lambda x, y: losses.semeda_loss(x, y, edge_params),
        "sobel": losses.sobel_loss,
        "bal": lambda x, y: losses.boundary_aware_loss(x, y, size=5, down=2),
        "ohem": lambda x, y: losses.ohem_cross_entropy(x, y, min_kept=5),
        "edge_pretrain": lambda x, y: losses.edge_pretrain_loss(edge_params, y, num_classes),
    }


@pytest.mark.parametrize("name", ["ce", "semeda", "sobel", "bal", "ohem", "edge_pretrain"])
@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_out_of_range_labels_are_void_under_jit(rng, name, bad):
    """Under jit (no value checks) a label outside [0, C) gives exactly the loss and gradient of void there."""
    num_classes = 3
    loss = _loss_fns(num_classes, rng)[name]
    labels = ref.random_labels(rng, (2, 8, 8), num_classes, void_fraction=0.1)
    labels[0, 2:4, 3:6] = bad
    void = np.where((labels < 0) | (labels >= num_classes), 255, labels)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, num_classes)))
    value, grad = jax.jit(jax.value_and_grad(loss))(logits, labels)
    expected, expected_grad = jax.value_and_grad(loss)(logits, void)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)
