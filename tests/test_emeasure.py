"""E-measure against the literal per-pixel formula (MATLAB Emeasure.m) and hand-computed 4x4 maps."""
import jax
import numpy as np
import pytest

from semeda_jax.metrics import emeasure_dataset, emeasure_from_counts, emeasure_per_image, emeasure_totals
from semeda_jax.validation import InputError

VOID = 255
EPS = np.finfo(np.float64).eps


def reference_emeasure(fm, gt):
    """Emeasure.m on the valid pixels (float arrays); divides by 1 instead of N - 1 + eps when N <= 1."""
    if gt.sum() == 0:
        phi = 1.0 - fm
    elif (1.0 - gt).sum() == 0:
        phi = fm
    else:
        a, b = gt - gt.mean(), fm - fm.mean()
        xi = 2.0 * a * b / (a * a + b * b + EPS)
        phi = (1.0 + xi) ** 2 / 4.0
    return phi.sum() / (fm.size - 1 + EPS if fm.size > 1 else 1.0)


def reference_per_image(labels, predictions, num_classes):
    scores = np.zeros((len(labels), num_classes))
    present = np.zeros((len(labels), num_classes), bool)
    for b in range(len(labels)):
        valid = labels[b] != VOID
        for c in range(num_classes):
            gt = (labels[b][valid] == c).astype(np.float64)
            scores[b, c] = reference_emeasure((predictions[b][valid] == c).astype(np.float64), gt)
            present[b, c] = gt.any()
    return scores, present


def noisy_maps(rng, num_classes, shape, void_fraction):
    """Blocky labels (so some classes are absent per image), predictions = labels with 30% noise."""
    coarse = rng.integers(0, num_classes, (shape[0], shape[1] // 4 + 1, shape[2] // 4 + 1))
    labels = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :shape[1], :shape[2]]
    predictions = np.where(rng.random(shape) < 0.3, rng.integers(0, num_classes, shape), labels)
    labels[rng.random(shape) < void_fraction] = VOID
    return labels, predictions


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_matches_literal_formula(rng, num_classes):
    for _ in range(2):
        shape = tuple(rng.integers(2, 4, 1)) + tuple(rng.integers(4, 30, 2))
        labels, predictions = noisy_maps(rng, num_classes, shape, rng.random() * 0.4)
        labels[0] = VOID  # no valid pixel at all
        labels[1] = VOID
        labels[1, 0, 0] = predictions[1, 0, 0]  # a single, correctly predicted valid pixel
        scores, present = emeasure_per_image(labels, predictions, num_classes)
        ref_scores, ref_present = reference_per_image(labels, predictions, num_classes)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(present, ref_present)
        assert np.all(np.isfinite(scores))


# Two-class 4x4 maps; the expected E for class 1 and class 0 worked out by hand (N = valid pixels).
T, F = 1, 0
TOP_ROW = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
HAND_CASES = [
    # Top row is class 1; predicted 2 of it plus 2 pixels of row 2. mean(GT) = mean(FM) = 1/4.
    # TP: a = b = 3/4 -> xi = 1, Phi = 1 (2 px); TN: a = b = -1/4 -> Phi = 1 (10 px);
    # FN: a = 3/4, b = -1/4 -> xi = -0.375 / 0.625 = -0.6, Phi = 0.4^2 / 4 = 0.04 (2 px); FP likewise (2 px).
    # E = (2 + 10 + 4 * 0.04) / 15 = 12.16 / 15 for class 1; class 0 flips both signs, same value.
    (TOP_ROW, np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]), 12.16 / 15, 12.16 / 15, T),
    # Perfect prediction: Phi = 1 everywhere, E = 16 / 15 (the MATLAB N - 1 denominator exceeds 1).
    (TOP_ROW, TOP_ROW, 16 / 15, 16 / 15, T),
    # Inverted prediction: every pixel has xi = -1, Phi = 0.
    (TOP_ROW, 1 - TOP_ROW, 0.0, 0.0, T),
    # Class 1 absent from the truth, predicted on 3 px: GT all 0 -> Phi = 1 - FM, E = 13 / 15;
    # class 0 is the whole truth: GT all 1 -> Phi = FM, E = 13 / 15.
    (np.zeros((4, 4), int), np.pad(np.ones((1, 3), int), ((0, 3), (0, 1))), 13 / 15, 13 / 15, F),
    # Left half class 1, prediction all 0: for class 1 FM is constant (b = 0) so xi = 0, Phi = 1/4, E = 4 / 15;
    # for class 0 FM is constant 1, same.
    (np.repeat([[1, 1, 0, 0]], 4, 0), np.zeros((4, 4), int), 4 / 15, 4 / 15, T),
]


@pytest.mark.parametrize("labels, predictions, class1, class0, present1", HAND_CASES)
def test_hand_computed_4x4(labels, predictions, class1, class0, present1):
    scores, present = emeasure_per_image(labels[None], predictions[None], 2)
    np.testing.assert_allclose(scores[0], [class0, class1], rtol=1e-13, atol=1e-15)  # eps: xi = -1 + 1e-16
    np.testing.assert_array_equal(present[0], [True, bool(present1)])


def test_hand_computed_with_void():
    # First hand case with the bottom row void: N = 12, TP 2, FN 2, FP 2, TN 6, mean(GT) = mean(FM) = 1/3.
    # TP, TN: Phi = 1; FN: a = 2/3, b = -1/3 -> xi = (-4/9) / (5/9) = -0.8, Phi = 0.2^2 / 4 = 0.01; FP same.
    # E = (2 + 6 + 0.04) / 11.
    labels, predictions = HAND_CASES[0][0].copy(), HAND_CASES[0][1]
    labels[3] = VOID
    scores, _ = emeasure_per_image(labels[None], predictions[None], 2)
    assert float(scores[0, 1]) == pytest.approx(8.04 / 11, rel=1e-13)
    assert float(emeasure_from_counts(2, 2, 2, 6)) == pytest.approx(8.04 / 11, rel=1e-13)


def test_one_and_zero_valid_pixels():
    # One valid pixel of class 1 predicted as 0: class 1 Phi = FM = 0; class 0 (GT all 0) Phi = 1 - FM = 0;
    # class 2 (GT all 0, FM 0) Phi = 1. Denominator 1. An all-void image scores 0 and has nothing present.
    labels = np.full((2, 3, 3), VOID)
    labels[0, 1, 1] = 1
    scores, present = emeasure_per_image(labels, np.zeros_like(labels), 3)
    np.testing.assert_array_equal(scores, [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(present, [[False, True, False], [False, False, False]])


def test_dataset_accumulation(rng):
    num_classes = 6
    sums, counts = np.zeros(num_classes), np.zeros(num_classes, np.int64)
    all_scores, all_present = [], []
    for _ in range(3):
        labels, predictions = noisy_maps(rng, num_classes, (2, 12, 16), 0.1)
        labels[labels == 5] = 4  # class 5 never in the truth
        scores, present = emeasure_per_image(labels, predictions, num_classes)
        batch_sums, batch_counts = emeasure_totals(scores, present)
        sums, counts = sums + np.asarray(batch_sums), counts + np.asarray(batch_counts)
        ref = reference_per_image(labels, predictions, num_classes)
        all_scores.append(ref[0])
        all_present.append(ref[1])
    all_scores, all_present = np.concatenate(all_scores), np.concatenate(all_present)
    expected = [np.mean(all_scores[all_present[:, c], c]) if all_present[:, c].any() else np.nan
                for c in range(num_classes)]
    per_class, mean = emeasure_dataset(sums, counts)
    np.testing.assert_allclose(per_class, expected, rtol=1e-12)
    assert np.isnan(per_class[5]) and counts[5] == 0
    assert mean == pytest.approx(np.mean(expected[:5]), rel=1e-12)


def test_under_jit(rng):
    labels, predictions = noisy_maps(rng, 5, (2, 9, 14), 0.2)
    scores, present = jax.jit(emeasure_per_image, static_argnums=2)(labels, predictions, 5)
    ref_scores, ref_present = reference_per_image(labels, predictions, 5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-12)
    np.testing.assert_array_equal(present, ref_present)


@pytest.mark.parametrize("call, match", [
    (lambda: emeasure_per_image(np.zeros((4, 4), int), np.zeros((4, 4), int), 2), "labels: expected rank 3"),
    (lambda: emeasure_per_image(np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int), 2), "shapes must match"),
    (lambda: emeasure_per_image(np.full((1, 2, 2), 2), np.zeros((1, 2, 2), int), 2), r"labels: values \{2\}"),
    (lambda: emeasure_totals(np.zeros((2, 3)), np.zeros((2, 4), bool)), "scores .*present"),
    (lambda: emeasure_totals(np.zeros(3), np.zeros(3, bool)), "scores: expected rank 2"),
    (lambda: emeasure_dataset(np.zeros(3), np.zeros(4)), "sums and counts"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(InputError, match=match):
        call()
