"""Spatial correlation loss (RelationNet Eqs. 4-6) against explicit float64 loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from semeda_jax.losses.scl import downsample_labels_nearest, neighbour_offsets, pair_targets, \
    spatial_correlation_loss
from references import random_labels
from semeda_jax.validation import InputError

VOID = 255
OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]


def ref_pairs(labels):
    """Loop over every pixel and offset: (same, valid) [B,H,W,9]."""
    batch, height, width = labels.shape
    same, valid = np.zeros(labels.shape + (9,), bool), np.zeros(labels.shape + (9,), bool)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for k, (dy, dx) in enumerate(OFFSETS):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and VOID not in (labels[b, y, x], labels[b, ny, nx]):
                        valid[b, y, x, k] = True
                        same[b, y, x, k] = labels[b, y, x] == labels[b, ny, nx]
    return same, valid


def ref_loss(pair_logits, labels):
    same, valid = ref_pairs(labels)
    n_same, n_diff = same.sum(), (valid & ~same).sum()
    if n_same + n_diff == 0:
        return 0.0
    alpha, beta = n_same / (n_same + n_diff), n_diff / (n_same + n_diff)
    prob = 1 / (1 + np.exp(-pair_logits))
    total = beta * np.log(prob[same]).sum() + alpha * np.log(1 - prob[valid & ~same]).sum()
    return -total / (n_same + n_diff)


def test_neighbour_offsets_row_major_with_centre():
    assert list(neighbour_offsets()) == OFFSETS


def test_pair_targets_hand_checked_3x3():
    labels = np.array([[[0, 0, 1], [0, VOID, 1], [2, 2, 1]]], np.int32)
    same, valid = (np.asarray(a, int)[0] for a in pair_targets(labels))
    np.testing.assert_array_equal(valid[1, 1], 0)  # the void centre pairs with nothing
    np.testing.assert_array_equal(valid[0, 0], [0, 0, 0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(same[0, 0], [0, 0, 0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(valid[0, 2], [0, 0, 0, 1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(same[0, 2], [0, 0, 0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(valid[2, 1], [1, 0, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(same[2, 1], [0, 0, 0, 1, 1, 0, 0, 0, 0])
    assert valid.sum() == 32 and same.sum() == 20  # 8 self pairs + 2 x 12 neighbour pairs


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_pair_targets_and_loss_match_reference(rng, num_classes):
    labels = random_labels(rng, (2, 7, 10), num_classes)
    pair_logits = rng.normal(scale=2.0, size=labels.shape + (9,))
    for got, want in zip(pair_targets(labels), ref_pairs(labels)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(spatial_correlation_loss(pair_logits, labels), ref_loss(pair_logits, labels),
                               rtol=1e-12)


def test_alpha_weights_the_different_label_term():
    """[0, 0, 1]: 5 same and 2 different pairs, so beta = 2/7 on the same pairs (logit 0, each -log 1/2)."""
    labels = np.array([[[0, 0, 1]]], np.int32)
    same, _ = pair_targets(labels)
    pair_logits = np.where(np.asarray(same), 0.0, -50.0)
    np.testing.assert_allclose(spatial_correlation_loss(pair_logits, labels), 10 * np.log(2) / 49, rtol=1e-12)


def test_all_void_gives_zero(rng):
    labels = np.full((1, 4, 4), VOID, np.int32)
    assert float(spatial_correlation_loss(rng.normal(size=(1, 4, 4, 9)), labels)) == 0.0


def test_gradients_and_zero_gradient_on_invalid_pairs(rng):
    labels = random_labels(rng, (2, 5, 6), 3, void_fraction=0.3)
    pair_logits = rng.normal(size=labels.shape + (9,))
    loss = lambda z: spatial_correlation_loss(z, labels)  # noqa: E731
    check_grads(loss, (pair_logits,), order=1)
    grad = np.asarray(jax.grad(loss)(pair_logits))
    _, valid = ref_pairs(labels)
    assert np.all(grad[~valid] == 0) and np.all(grad[valid] != 0)
    np.testing.assert_allclose(jax.jit(loss)(pair_logits), loss(pair_logits), rtol=1e-12)


def test_downsample_labels_nearest_samples_half_pixel_centres(rng):
    grid = (10 * np.arange(8)[:, None] + np.arange(8)[None, :])[None].astype(np.int32)
    np.testing.assert_array_equal(downsample_labels_nearest(grid, (2, 2))[0], [[22, 26], [62, 66]])
    labels = random_labels(rng, (2, 37, 29), 21)
    for size in [(5, 4), (37, 29), (9, 15), (40, 31)]:
        rows = np.floor((np.arange(size[0]) + 0.5) * 37 / size[0]).astype(int)
        cols = np.floor((np.arange(size[1]) + 0.5) * 29 / size[1]).astype(int)
        got = downsample_labels_nearest(labels, size)
        np.testing.assert_array_equal(got, labels[:, rows][:, :, cols])
        np.testing.assert_array_equal(got, jax.image.resize(labels, (2,) + size, "nearest"))


@pytest.mark.parametrize("logit_shape,labels,match", [
    ((1, 4, 4), np.zeros((1, 4, 4), np.int32), "pair_logits: expected rank 4"),
    ((1, 4, 4, 8), np.zeros((1, 4, 4), np.int32), r"pair_logits: expected shape \(1, 4, 4, 9\)"),
    ((2, 4, 4, 9), np.zeros((1, 4, 4), np.int32), r"got \(2, 4, 4, 9\)"),
    ((1, 4, 4, 9), np.zeros((4, 4), np.int32), "labels: expected rank 3"),
    ((1, 4, 4, 9), np.zeros((1, 4, 4)), "labels: expected an integer label map"),
])
def test_bad_input_raises(logit_shape, labels, match):
    with pytest.raises(InputError, match=match):
        spatial_correlation_loss(jnp.zeros(logit_shape), labels)


@pytest.mark.parametrize("size", [(0, 3), (3,), (2.0, 3)])
def test_bad_downsample_size_raises(size):
    with pytest.raises(InputError, match="size( h| w)?: expected"):
        downsample_labels_nearest(np.zeros((1, 8, 8), np.int32), size)
