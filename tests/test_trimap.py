"""Trimap band / interior confusion matrices against SciPy chessboard distances and hand-built bands."""
import jax
import numpy as np
import pytest
from scipy import ndimage

from semeda_jax.metrics import confusion_matrix, trimap_bands, trimap_confusion, trimap_miou
from semeda_jax.validation import InputError

VOID = 255


def reference_edges(labels):
    """[H,W] -> bool [H,W]: some in-image 8-neighbour carries another label (255 is a label), by loops."""
    height, width = labels.shape
    edges = np.zeros(labels.shape, bool)
    for i in range(height):
        for j in range(width):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ni, nj = i + di, j + dj
                    if 0 <= ni < height and 0 <= nj < width and labels[ni, nj] != labels[i, j]:
                        edges[i, j] = True
    return edges


def reference_trimap(labels, predictions, num_classes, widths):
    """Band = chessboard distance to the nearest GT edge < w (scipy), counted with np.histogram2d."""
    band_cm = np.zeros((len(widths), num_classes, num_classes), np.int64)
    interior_cm = np.zeros_like(band_cm)
    bins = np.arange(num_classes + 1) - 0.5
    for b in range(len(labels)):
        edges = reference_edges(labels[b])
        distance = (ndimage.distance_transform_cdt(~edges, metric="chessboard") if edges.any()
                    else np.full(edges.shape, np.inf))
        valid = labels[b] != VOID
        for k, width in enumerate(widths):
            for out, region in ((band_cm, distance < width), (interior_cm, distance >= width)):
                mask = region & valid
                out[k] += np.histogram2d(labels[b][mask], predictions[b][mask], bins=(bins, bins))[0].astype(int)
    return band_cm, interior_cm


def blocky_maps(rng, num_classes, shape, block, void_fraction):
    coarse = rng.integers(0, num_classes, (shape[0], shape[1] // block + 1, shape[2] // block + 1))
    labels = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)[:, :shape[1], :shape[2]]
    predictions = np.where(rng.random(shape) < 0.25, rng.integers(0, num_classes, shape), labels)
    labels[rng.random(shape) < void_fraction] = VOID
    return labels, predictions


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_matches_scipy_chessboard_reference(rng, num_classes):
    widths = (1, 2, 3, 5, 10)
    for block in (3, 7):
        shape = (2,) + tuple(rng.integers(12, 40, 2))
        labels, predictions = blocky_maps(rng, num_classes, shape, block, rng.random() * 0.1)
        band_cm, interior_cm = trimap_confusion(labels, predictions, num_classes, widths)
        ref_band, ref_interior = reference_trimap(labels, predictions, num_classes, widths)
        np.testing.assert_array_equal(band_cm, ref_band)
        np.testing.assert_array_equal(interior_cm, ref_interior)
        total = np.asarray(confusion_matrix(labels, predictions, num_classes))
        np.testing.assert_array_equal(np.asarray(band_cm) + np.asarray(interior_cm),
                                      np.broadcast_to(total, band_cm.shape))
        assert np.all(np.diff(np.asarray(band_cm).sum(axis=(1, 2))) >= 0)  # bands grow with the width


def test_bands_match_square_dilation(rng):
    labels, _ = blocky_maps(rng, 4, (2, 23, 31), 5, 0.05)
    widths = (1, 2, 4, 7, 40)
    bands = np.asarray(trimap_bands(labels, widths))
    for b in range(2):
        edges = reference_edges(labels[b])
        for k, width in enumerate(widths):
            expected = ndimage.binary_dilation(edges, structure=np.ones((2 * width - 1, 2 * width - 1), bool))
            np.testing.assert_array_equal(bands[k, b], expected, err_msg=f"width {width}")


def test_band_hand_computed_square():
    # One class-1 pixel in the middle of a 7x7 class-0 map: the edges are the 3x3 block around it (the pixel
    # and its 8 neighbours); width 2 is the 5x5 block, width 3 the whole 7x7 map.
    labels = np.zeros((1, 7, 7), int)
    labels[0, 3, 3] = 1
    bands = np.asarray(trimap_bands(labels, (1, 2, 3)))[:, 0]
    for k, radius in enumerate((1, 2, 3)):
        expected = np.zeros((7, 7), bool)
        expected[3 - radius:4 + radius, 3 - radius:4 + radius] = True
        np.testing.assert_array_equal(bands[k], expected)


def test_confusion_hand_computed_with_void():
    # Columns 0-2 class 0, columns 3-5 class 1, pixel (0,0) void; everything predicted 0.
    # Edges: columns 2-3, plus the void pixel and its neighbours (0,1), (1,0), (1,1).
    # width 1: class 0 band = col 2 (4) + 3 void neighbours = 7, interior 11 - 7 = 4; class 1 band = col 3 (4).
    # width 2: class 0 band = cols 1-2 (8) + (1,0), (2,0) = 10, interior (3,0) = 1; class 1 band cols 3-4 (8).
    # width 3: every valid pixel is in the band (11 of class 0, 12 of class 1).
    labels = np.repeat([[0, 0, 0, 1, 1, 1]], 4, axis=0)[None]
    labels[0, 0, 0] = VOID
    band_cm, interior_cm = trimap_confusion(labels, np.zeros_like(labels), 2, (1, 2, 3))
    np.testing.assert_array_equal(band_cm, [[[7, 0], [4, 0]], [[10, 0], [8, 0]], [[11, 0], [12, 0]]])
    np.testing.assert_array_equal(interior_cm, [[[4, 0], [8, 0]], [[1, 0], [4, 0]], [[0, 0], [0, 0]]])


def test_map_without_edges_is_all_interior():
    labels = np.full((1, 5, 6), 2)
    predictions = np.arange(30).reshape(1, 5, 6) % 3
    band_cm, interior_cm = trimap_confusion(labels, predictions, 3, (1, 40))
    assert np.asarray(band_cm).sum() == 0
    np.testing.assert_array_equal(interior_cm[1], [[0, 0, 0], [0, 0, 0], [10, 10, 10]])


def test_miou_curves_and_jit(rng):
    labels, predictions = blocky_maps(rng, 5, (2, 19, 27), 4, 0.1)
    widths = (1, 3, 12)  # no interior is left at width 12: NaN
    band_cm, interior_cm = jax.jit(trimap_confusion, static_argnums=(2, 3))(labels, predictions, 5, widths)
    ref_band, ref_interior = reference_trimap(labels, predictions, 5, widths)
    np.testing.assert_array_equal(band_cm, ref_band)
    for curve, ref in zip(trimap_miou(band_cm, interior_cm), (ref_band, ref_interior)):
        expected = []
        for k in range(len(widths)):
            tp = np.diag(ref[k]).astype(float)
            union = ref[k].sum(0) + ref[k].sum(1) - tp
            expected.append(np.mean(tp[union > 0] / union[union > 0]) if union.any() else np.nan)
        np.testing.assert_allclose(curve, expected, rtol=1e-14)
        assert np.isfinite(expected[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (2, 1)}, "widths: expected strictly increasing"),
    ({"widths": (0, 1)}, "widths: expected strictly increasing"),
    ({"widths": ()}, "widths: expected strictly increasing"),
    ({"labels": np.zeros((4, 4), int)}, "labels: expected rank 3"),
    ({"predictions": np.zeros((1, 4, 5), int)}, "shapes must match"),
    ({"predictions": np.full((1, 4, 4), 3)}, r"predictions: values \{3\}"),
])
def test_bad_input_raises(kwargs, match):
    args = {"labels": np.zeros((1, 4, 4), int), "predictions": np.zeros((1, 4, 4), int), "num_classes": 3,
            "widths": (1, 2)}
    with pytest.raises(InputError, match=match):
        trimap_confusion(**{**args, **kwargs})
