"""Boundary IoU and boundary F-score counts against pixel-loop float64 references (tests/references.py) on random
blob maps with void and padding, hand-computed maps, and the float64 summaries."""
import functools

import jax
import numpy as np
import pytest

import references
from semeda_jax.metrics import (BOUNDARY_COUNT_KEYS, boundary_band_width, boundary_counts, boundary_fscore,
                                boundary_iou, boundary_tolerance, confusion_matrix, per_class_iou)
from semeda_jax.validation import InputError

VOID = references.VOID


def padded_batch(rng, num_classes, shape, void_fraction=0.05):
    """(labels, predictions, sizes): blob maps whose images fill random top-left [:h, :w] regions of the arrays,
    padded with void labels and arbitrary predictions as in eval; predictions are shifted, repainted labels."""
    labels = references.blob_labels(rng, shape, num_classes)
    predictions = np.roll(labels, tuple(rng.integers(-2, 3, 2)), axis=(1, 2))
    repaint = references.blob_labels(rng, shape, num_classes, 2)  # two new blobs on half of the images
    repainted = (repaint != repaint[:, :1, :1]) & (rng.random(shape[0]) < 0.5)[:, None, None]
    predictions = np.where(repainted, repaint, predictions)
    predictions = np.where(rng.random(shape) < 0.03, rng.integers(0, num_classes, shape), predictions)
    labels[rng.random(shape) < void_fraction] = VOID
    labels[:, shape[1] // 3, rng.integers(shape[2]):] = VOID  # a void strip, as VOC's object outlines
    sizes = np.stack([rng.integers(1, shape[1] + 1, shape[0]), rng.integers(1, shape[2] + 1, shape[0])], 1)
    sizes[0] = shape[1:]  # one image fills its array: objects cut by the array border itself
    rows, cols = np.mgrid[:shape[1], :shape[2]]
    outside = (rows >= sizes[:, 0, None, None]) | (cols >= sizes[:, 1, None, None])
    labels[outside] = VOID
    return labels, predictions.astype(np.int32), sizes


def assert_counts_equal(counts, expected):
    assert set(counts) == set(BOUNDARY_COUNT_KEYS)
    for key in BOUNDARY_COUNT_KEYS:
        assert counts[key].dtype == np.int32
        np.testing.assert_array_equal(counts[key], expected[key], err_msg=key)


@pytest.mark.parametrize("num_classes, band_width, tolerance", [
    (2, 1, 0), (5, 2, 1), (5, 3, 2), (4, 7, 3), (3, 40, 20),  # d = 40: wider than the images
])
def test_matches_pixel_loop_reference(rng, num_classes, band_width, tolerance):
    labels, predictions, sizes = padded_batch(rng, num_classes, (3, 19, 26))
    counts = boundary_counts(labels, predictions, num_classes, band_width=band_width, tolerance=tolerance,
                             sizes=sizes)
    expected = references.boundary_counts(labels, predictions, num_classes, [band_width] * 3, [tolerance] * 3,
                                          sizes)
    assert_counts_equal(counts, expected)
    for part, whole in (("iou_intersection", "iou_union"), ("pred_matched", "pred_contour")):
        assert np.any((0 < expected[part]) & (expected[part] < expected[whole]))  # partial overlaps occur


def test_per_image_widths_match_reference(rng):
    labels, predictions, sizes = padded_batch(rng, 4, (4, 23, 17), void_fraction=0.1)
    band_widths, tolerances = np.array([1, 4, 2, 3]), np.array([2, 0, 5, 1])
    counts = boundary_counts(labels, predictions, 4, band_width=band_widths, tolerance=tolerances, sizes=sizes)
    assert_counts_equal(counts, references.boundary_counts(labels, predictions, 4, band_widths, tolerances, sizes))


def test_wide_per_image_bands_match_reference(rng):
    # Widths whose strided windows need every doubling level and remainder bit (reach 2^m - 1, rest in [0, 2^m)).
    labels, predictions, sizes = padded_batch(rng, 3, (5, 40, 45))
    band_widths = np.array([5, 6, 13, 10, 21])
    counts = boundary_counts(labels, predictions, 3, band_width=band_widths, tolerance=1, sizes=sizes)
    expected = references.boundary_counts(labels, predictions, 3, band_widths, [1] * 5, sizes)
    for key in BOUNDARY_COUNT_KEYS[:2]:
        np.testing.assert_array_equal(counts[key], expected[key], err_msg=key)


def test_defaults_follow_each_image_diagonal(rng):
    # Cheng et al.'s d = int(round(0.02 * sqrt(h^2 + w^2))), at least 1; DAVIS's t = ceil(0.008 * norm((h, w))).
    sizes = np.array([[512, 512], [75, 100], [1024, 2048], [366, 500], [0, 0], [3, 4]])
    cheng = [max(1, int(round(0.02 * np.sqrt(h ** 2 + w ** 2)))) for h, w in sizes]
    davis = [int(np.ceil(0.008 * np.linalg.norm((h, w)))) for h, w in sizes]
    np.testing.assert_array_equal(boundary_band_width(sizes), cheng)
    np.testing.assert_array_equal(boundary_tolerance(sizes), davis)
    assert cheng[:3] == [14, 2, 46] and davis[:3] == [6, 1, 19]  # 0.02 * 125 = 2.5 rounds to even

    labels, predictions, sizes = padded_batch(rng, 3, (2, 150, 140), void_fraction=0.0)
    sizes[1] = (120, 90)  # diagonals 205 and 150: d = 4 and 3, t = 2 and 2
    counts = boundary_counts(labels, predictions, 3, sizes=sizes)
    explicit = boundary_counts(labels, predictions, 3, band_width=np.array([4, 3]), tolerance=2, sizes=sizes)
    assert_counts_equal(counts, explicit)
    whole = boundary_counts(labels[:1], predictions[:1], 3)  # sizes None: the array is the image
    assert_counts_equal(whole, boundary_counts(labels[:1], predictions[:1], 3, band_width=4, tolerance=2))


@pytest.mark.usefixtures("float32_jax")
def test_matches_reference_without_x64(rng):
    # Eval runs with x64 off: the counts stay exact int32.
    labels, predictions, sizes = padded_batch(rng, 3, (2, 18, 15))
    counts = boundary_counts(labels, predictions, 3, band_width=np.array([2, 1]), tolerance=2, sizes=sizes)
    assert_counts_equal(counts, references.boundary_counts(labels, predictions, 3, [2, 1], [2, 2], sizes))


def test_many_classes_span_several_bit_words(rng):
    # Contours are matched as bits of 32-class words: classes 31 / 32 and 63 / 64 sit on either side of a word.
    ids = np.array([31, 32, 63, 64, 69])
    labels = ids[references.blob_labels(rng, (3, 17, 20), 5, 12)]
    predictions = np.roll(labels, (1, -1), axis=(1, 2))
    labels[:, 5] = VOID
    sizes = np.array([[17, 20], [12, 20], [17, 9]])
    counts = boundary_counts(labels, predictions, 70, band_width=2, tolerance=np.array([1, 3, 0]), sizes=sizes)
    expected = references.boundary_counts(labels, predictions, 70, [2] * 3, [1, 3, 0], sizes)
    assert_counts_equal(counts, expected)
    assert np.all(expected["pred_matched"][ids] > 0)


def test_batch_counts_are_sums_of_image_counts(rng):
    labels, predictions, sizes = padded_batch(rng, 5, (4, 16, 21))
    widths = np.array([2, 1, 3, 2])
    batch = boundary_counts(labels, predictions, 5, band_width=widths, tolerance=2, sizes=sizes)
    singles = [boundary_counts(labels[b:b + 1], predictions[b:b + 1], 5, band_width=widths[b:b + 1], tolerance=2,
                               sizes=sizes[b:b + 1]) for b in range(4)]
    assert_counts_equal(batch, {key: sum(np.asarray(s[key]) for s in singles) for key in BOUNDARY_COUNT_KEYS})


def test_padding_does_not_change_counts(rng):
    # One image alone, then padded with void labels and arbitrary predictions beside an all-void filler.
    labels, predictions, _ = padded_batch(rng, 4, (1, 13, 18))
    labels[0, :, :] = references.blob_labels(rng, (1, 13, 18), 4)[0]
    alone = boundary_counts(labels, predictions, 4, band_width=2, tolerance=1)
    big_labels = np.full((2, 20, 31), VOID, np.int32)
    big_labels[0, :13, :18] = labels[0]
    big_predictions = rng.integers(0, 4, (2, 20, 31)).astype(np.int32)
    big_predictions[0, :13, :18] = predictions[0]
    padded = boundary_counts(big_labels, big_predictions, 4, band_width=2, tolerance=1,
                             sizes=np.array([[13, 18], [0, 0]]))
    assert_counts_equal(padded, alone)
    # Without sizes the void padding still acts as Cheng's frame, but it makes contours for the F-score.
    unsized = boundary_counts(big_labels, big_predictions, 4, band_width=2, tolerance=1)
    for key in BOUNDARY_COUNT_KEYS[:2]:
        np.testing.assert_array_equal(unsized[key], alone[key])
    assert np.sum(unsized["truth_contour"]) > np.sum(alone["truth_contour"])


def test_jit_matches_eager(rng):
    labels, predictions, sizes = padded_batch(rng, 5, (3, 17, 22))
    widths, tolerances = np.array([1, 3, 2]), np.array([2, 1, 0])

    @functools.partial(jax.jit, static_argnums=2)
    def counts_fn(labels, predictions, num_classes, widths, tolerances, sizes):
        return boundary_counts(labels, predictions, num_classes, band_width=widths, tolerance=tolerances,
                               sizes=sizes)

    eager = boundary_counts(labels, predictions, 5, band_width=widths, tolerance=tolerances, sizes=sizes)
    assert_counts_equal(counts_fn(labels, predictions, 5, widths, tolerances, sizes), eager)
    assert_counts_equal(counts_fn(labels, predictions, 5, widths + 1, tolerances + 1, sizes),
                        boundary_counts(labels, predictions, 5, band_width=widths + 1, tolerance=tolerances + 1,
                                        sizes=sizes))
    assert counts_fn._cache_size() == 1  # other widths and tolerances reuse the compiled step


def test_hand_computed_square():
    # A 2x2 block of class 1 in a 6x6 class-0 image. d = 1: the class-1 band is the block (4), the class-0 band
    # the 12-pixel ring around it plus the 20-pixel frame. Contours: the block (4) and the ring (12), no frame.
    labels = np.zeros((1, 6, 6), np.int32)
    labels[0, 2:4, 2:4] = 1
    counts = boundary_counts(labels, np.zeros_like(labels), 2, band_width=1, tolerance=0)
    assert_counts_equal(counts, {"iou_intersection": [20, 0], "iou_union": [32, 4], "pred_matched": [0, 0],
                                 "pred_contour": [0, 0], "truth_matched": [0, 0], "truth_contour": [12, 4]})
    np.testing.assert_allclose(boundary_iou(counts)[0], [20 / 32, 0.0])
    np.testing.assert_array_equal(boundary_fscore(counts)[0], [0.0, 0.0])  # no predicted contour: F = 0

    # Predicted block one column to the right: its contour (4) is 1 px from the truth block's contour.
    shifted = np.roll(labels, 1, axis=2)
    at = lambda tolerance: boundary_counts(labels, shifted, 2, band_width=1, tolerance=tolerance)
    exact, near = at(0), at(1)
    np.testing.assert_array_equal(exact["pred_matched"], [6, 2])  # class 1: column 3 is on both block contours
    np.testing.assert_array_equal(near["pred_matched"], [12, 4])
    np.testing.assert_array_equal(near["truth_matched"], [12, 4])
    np.testing.assert_array_equal(boundary_fscore(near)[0], [1.0, 1.0])


def test_void_is_cut_from_both_maps(rng):
    # A prediction right on every valid pixel scores 1 whatever it says under void (VOC-style void outlines
    # included); a class absent from both maps is NaN and left out of the means.
    labels, _, sizes = padded_batch(rng, 4, (3, 21, 24), void_fraction=0.2)
    labels[labels == 3] = 0
    predictions = np.where(labels == VOID, rng.integers(0, 4, labels.shape), labels).astype(np.int32)
    counts = boundary_counts(labels, predictions, 4, band_width=3, tolerance=0, sizes=sizes)
    for summary in (boundary_iou, boundary_fscore):
        per_class, mean = summary(counts)
        np.testing.assert_array_equal(per_class, [1.0, 1.0, 1.0, np.nan])
        assert mean == 1.0
    # Void where the truth is void, wherever the prediction: the counts do not see the prediction there.
    other = np.where(labels == VOID, (predictions + 1) % 4, predictions).astype(np.int32)
    assert_counts_equal(boundary_counts(labels, other, 4, band_width=3, tolerance=0, sizes=sizes), counts)


def test_band_wider_than_the_image_gives_plain_iou(rng):
    labels, predictions, sizes = padded_batch(rng, 5, (3, 14, 19))
    counts = boundary_counts(labels, predictions, 5, band_width=10 ** 6, tolerance=10 ** 6, sizes=sizes)
    np.testing.assert_allclose(boundary_iou(counts)[0],
                               per_class_iou(confusion_matrix(labels, predictions, 5)), rtol=0, atol=0)


def test_tiny_images_and_fillers():
    labels = np.array([[[1, VOID], [VOID, VOID]], [[VOID] * 2] * 2, [[0, 1], [1, 1]]], np.uint8)  # as decoded PNGs
    predictions = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 1]], [[0, 1], [1, 0]]], np.int64)
    sizes = np.array([[1, 1], [0, 0], [2, 2]])
    counts = boundary_counts(labels, predictions, 2, band_width=5, tolerance=3, sizes=sizes)
    expected = references.boundary_counts(labels, predictions, 2, [5] * 3, [3] * 3, sizes)
    assert_counts_equal(counts, expected)
    # 1x1 image: its pixel is its own band but has no contour; 2x2: class 0 (1 px, 1 px) matched both ways.
    np.testing.assert_array_equal(expected["iou_intersection"], [1, 3])
    np.testing.assert_array_equal(expected["truth_contour"], [1, 3])


@pytest.mark.parametrize("counts, iou, fscore", [
    # class 0: P = 3/4, R = 3/6 -> F = 0.6; class 1: predicted contour only -> 0; class 2: absent -> NaN.
    ({"iou_intersection": [2, 0, 0], "iou_union": [8, 5, 0], "pred_matched": [3, 0, 0],
      "pred_contour": [4, 7, 0], "truth_matched": [3, 0, 0], "truth_contour": [6, 0, 0]},
     ([0.25, 0.0, np.nan], 0.125), ([0.6, 0.0, np.nan], 0.3)),
    # every class absent: NaN means; a truth contour never matched: 0.
    ({"iou_intersection": [0, 0], "iou_union": [0, 0], "pred_matched": [0, 0], "pred_contour": [0, 0],
      "truth_matched": [0, 0], "truth_contour": [0, 0]}, ([np.nan, np.nan], np.nan), ([np.nan, np.nan], np.nan)),
    ({"iou_intersection": [0], "iou_union": [3], "pred_matched": [0], "pred_contour": [2], "truth_matched": [0],
      "truth_contour": [5]}, ([0.0], 0.0), ([0.0], 0.0)),
])
def test_summaries(counts, iou, fscore):
    counts = {key: np.asarray(value, np.int64) for key, value in counts.items()}
    for summary, (per_class, mean) in ((boundary_iou, iou), (boundary_fscore, fscore)):
        got_per_class, got_mean = summary(counts)
        assert got_per_class.dtype == np.float64
        np.testing.assert_allclose(got_per_class, per_class, rtol=1e-15)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-15)


@pytest.mark.parametrize("kwargs, match", [
    ({"band_width": 0}, "band_width: expected an integer >= 1"),
    ({"band_width": 1.5}, "band_width: expected an integer >= 1"),
    ({"band_width": np.array([1, 0])}, r"band_width: expected values >= 1"),
    ({"band_width": np.array([1, 2, 3])}, r"band_width: expected one value per image \(2\)"),
    ({"tolerance": -1}, "tolerance: expected an integer >= 0"),
    ({"tolerance": np.array([1.0, 2.0])}, "tolerance: expected integer pixel counts"),
    ({"sizes": np.array([[4, 5]])}, r"sizes: expected shape \(2, 2\)"),
    ({"sizes": np.array([[4, 5], [5, 5]])}, r"sizes: expected 0 <= \(height, width\) <= \(4, 5\)"),
    ({"labels": np.zeros((4, 5), np.int32)}, "labels: expected rank 3"),
    ({"predictions": np.full((2, 4, 5), 3)}, r"predictions: values \{3\}"),
    ({"labels": np.full((2, 4, 5), 7)}, r"labels: values \{7\}"),
    ({"num_classes": 0}, "num_classes: expected a positive class count"),
])
def test_bad_input_raises(kwargs, match):
    args = {"labels": np.zeros((2, 4, 5), np.int32), "predictions": np.zeros((2, 4, 5), np.int32),
            "num_classes": 3, "band_width": 1, "tolerance": 1}
    with pytest.raises(InputError, match=match):
        boundary_counts(**{**args, **kwargs})


def test_bad_counts_and_traced_defaults_raise():
    with pytest.raises(InputError, match=r"counts: missing keys \['iou_union'\]"):
        boundary_iou({"iou_intersection": np.zeros(3)})
    with pytest.raises(InputError, match="counts: expected \\[C\\] vectors"):
        boundary_iou({"iou_intersection": np.zeros(3), "iou_union": np.zeros(2)})
    with pytest.raises(InputError, match="sizes: expected \\[B,2\\]"):
        boundary_band_width(np.zeros(3))
    labels = np.zeros((1, 4, 4), np.int32)
    traced = jax.jit(lambda sizes: boundary_counts(labels, labels, 2, sizes=sizes)["iou_union"])
    with pytest.raises(InputError, match="band_width: pass it explicitly under jit"):
        traced(np.array([[4, 4]]))


def test_reference_follows_the_published_code(rng):
    # The pixel-loop references against the published recipes, written with scipy: Cheng et al. pad the mask
    # with one ring of zeros, erode it d times by a 3x3 square (nothing outside the padded array) and keep
    # mask minus erosion; DAVIS dilates the other map's contour by disk(t) = {y^2 + x^2 <= t^2}.
    from scipy import ndimage

    labels = references.blob_labels(rng, (4, 15, 22), 3)
    for mask in (labels == 1) | (labels == 2):
        contour = references.inner_contour(mask)
        for width in (1, 2, 5):
            eroded = ndimage.binary_erosion(np.pad(mask, 1), np.ones((3, 3)), iterations=width, border_value=1)
            np.testing.assert_array_equal(references.inner_band(mask, width), mask & ~eroded[1:-1, 1:-1])
        other = references.inner_contour(np.roll(mask, 2, axis=1))
        for tolerance in (0, 1, 3):
            yy, xx = np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1]
            near = ndimage.binary_dilation(other, yy ** 2 + xx ** 2 <= tolerance ** 2)
            assert references.matched_points(contour, other, tolerance) == np.sum(contour & near)
