"""Kervadec's boundary (surface) loss: the on-device signed distance maps against a brute-force float64 reference
and scipy's exact EDT in the authors' one_hot2dist form; the loss against a per-pixel NumPy sum."""
import jax
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

import references as ref
from semeda_jax.losses.surface import signed_distance_maps, surface_loss
from semeda_jax.validation import InputError


@pytest.mark.parametrize("height,width", [(7, 9), (10, 6)])  # the brute-force pass runs along the shorter side
def test_maps_match_brute_force_with_void_absent_and_whole_image_classes(rng, height, width):
    labels = ref.random_labels(rng, (3, height, width), 4, void_fraction=0.15)
    labels[0] = np.where(labels[0] == 3, 0, labels[0])  # class 3 absent from image 0
    labels[1] = 2  # image 1: class 2 everywhere (no boundary), the others absent
    labels[2, 0, 0] = 255
    np.testing.assert_allclose(signed_distance_maps(labels, 4), ref.signed_distance_maps(labels, 4), rtol=1e-6)


def test_maps_follow_kervadecs_one_hot2dist_on_larger_maps(rng):
    labels = ref.random_labels(rng, (2, 31, 45), 3, void_fraction=0.05)
    labels[:, 10:25, 5:30] = 1
    got = np.asarray(signed_distance_maps(labels, 3))
    for b, c in np.ndindex(2, 3):
        pos = labels[b] == c
        neg = ~pos
        expected = distance_transform_edt(neg) * neg - (distance_transform_edt(pos) - 1) * pos
        np.testing.assert_allclose(got[b, ..., c], expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 20, 24), (2, 24, 17)])
def test_truncated_maps_are_the_clipped_exact_maps(rng, shape):
    labels = ref.random_labels(rng, shape, 3)
    labels[0, :, :12] = 0
    exact = np.asarray(signed_distance_maps(labels, 3))
    for radius in (1, 3, 7):
        np.testing.assert_allclose(signed_distance_maps(labels, 3, max_distance=radius),
                                   np.clip(exact, 1 - radius, radius), rtol=1e-6)


@pytest.mark.parametrize("weights,masked", [(None, False), ((0.0, 1.0, 2.0, 0.5), True)])
def test_loss_matches_reference(rng, weights, masked):
    logits, labels, mask = ref.loss_case(rng, 4, shape=(2, 8, 9), logits_hw=(4, 5), absent=(3,))
    kw = dict(class_weights=weights, pixel_mask=mask if masked else None)
    phi = ref.signed_distance_maps(labels, 4)
    expected = ref.surface(logits, labels, phi, **kw)
    np.testing.assert_allclose(surface_loss(logits, labels, **kw), expected, rtol=1e-6)
    np.testing.assert_allclose(surface_loss(logits, labels, phi, **kw), expected, rtol=1e-12)
    grad = jax.grad(lambda x: surface_loss(x, labels, phi, **kw))(logits)
    np.testing.assert_allclose(grad, ref.numeric_grad(lambda x: ref.surface(x, labels, phi, **kw), logits),
                               rtol=1e-6, atol=1e-9)


def test_void_masked_and_empty(rng):
    logits, labels, mask = ref.loss_case(rng, 3, void_fraction=0.3)
    grad = np.asarray(jax.grad(lambda x: surface_loss(x, labels, pixel_mask=mask))(logits))
    assert not grad[(labels == 255) | ~mask].any() and grad[(labels != 255) & mask].any()
    void = np.full_like(labels, 255)
    assert float(surface_loss(logits, void)) == 0.0
    assert not np.asarray(jax.grad(surface_loss)(logits, void)).any()
    assert not np.asarray(signed_distance_maps(void, 3)).any()
    jitted = jax.jit(lambda x, y: surface_loss(x, y, max_distance=4))
    np.testing.assert_allclose(jitted(logits, labels), surface_loss(logits, labels, max_distance=4), rtol=1e-12)


@pytest.mark.parametrize("kw,message", [
    ({"distance_maps": np.zeros((1, 4, 4, 2))}, r"distance_maps: expected shape \(1, 4, 4, 3\) \[B,H,W,C\]"),
    ({"max_distance": 0}, "max_distance: expected an integer >= 1, got 0"),
    ({"class_weights": (1.0, 1.0)}, r"class_weights: expected shape \(3,\)"),
    ({"pixel_mask": np.ones((1, 4, 4), np.uint8)}, "pixel_mask: expected a bool array"),
])
def test_bad_input_is_named(kw, message):
    with pytest.raises(InputError, match=message):
        surface_loss(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4), np.int32), **kw)


def test_bad_map_arguments():
    with pytest.raises(InputError, match="num_classes: expected an integer >= 2, got 1"):
        signed_distance_maps(np.zeros((1, 4, 4), np.int32), 1)
    with pytest.raises(InputError, match=r"labels: values \{5\}"):
        signed_distance_maps(np.full((1, 4, 4), 5, np.int32), 3)
    with pytest.raises(InputError, match="labels: expected rank 3"):
        signed_distance_maps(np.zeros((4, 4), np.int32), 3)
