"""Ground-truth semantic edges (SEMEDA 3.3) against a brute-force loop and hand-computed maps."""
import numpy as np
import pytest

import references as ref
from semeda_jax.edges import semantic_edges


def test_hand_computed_two_regions():
    labels = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [0, 0, 0, 0],
                       [0, 0, 0, 0]])
    # Row 0: columns 1,2 touch the other class; row 1: every pixel but the left border touches 1 or 0;
    # row 2: columns 1..3 see a 1 diagonally or above; row 3 sees only zeros.
    expected = np.array([[0, 1, 1, 0],
                         [0, 1, 1, 1],
                         [0, 1, 1, 1],
                         [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(np.asarray(semantic_edges(labels)), expected)


def test_uniform_map_has_no_edges_even_at_the_border():
    assert not np.asarray(semantic_edges(np.full((2, 5, 7), 3))).any()


def test_voc_void_band_outlines_the_object():
    # VOC style: object 1 in a 255 band over background 0. Void counts as a label of its own, so the object's
    # outer ring and the background next to the band are edges, although 0 and 1 never touch.
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 255
    labels[2:5, 2:5] = 1
    edges = np.asarray(semantic_edges(labels))
    ring = np.zeros((7, 7), bool)
    ring[2:5, 2:5] = True
    ring[3, 3] = False
    np.testing.assert_array_equal(edges[2:5, 2:5], ring[2:5, 2:5])  # object pixels next to void
    assert edges[0, :].all() and edges[:, 0].all()  # background touching the band
    np.testing.assert_array_equal(edges, ref.semantic_edges(labels[None])[0])


def test_sbd_boundary_without_band_marks_both_sides():
    labels = np.zeros((6, 6), np.int32)
    labels[:, 3:] = 2
    edges = np.asarray(semantic_edges(labels))
    expected = np.zeros((6, 6), bool)
    expected[:, 2:4] = True
    np.testing.assert_array_equal(edges, expected)


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_random_maps_match_brute_force(rng, num_classes):
    labels = ref.random_labels(rng, (2, 13, 17), num_classes)
    np.testing.assert_array_equal(np.asarray(semantic_edges(labels)), ref.semantic_edges(labels))
