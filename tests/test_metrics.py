"""Confusion-matrix metrics, HELEN merged F1 and entropy against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from semeda_jax.metrics import (HELEN_F1_GROUPS, confusion_matrix, mean_accuracy, mean_iou, merged_f1,
                                per_class_f1, per_class_iou, per_image_confusion_matrix, pixel_accuracy,
                                prediction_entropy, segmentation_summary, update_confusion_matrix)
from semeda_jax.validation import InputError

VOID = 255


def random_maps(rng, num_classes, shape, void_fraction=0.2, absent=()):
    """Random labels with void and predictions; class ids in `absent` never occur in the truth."""
    labels = rng.integers(0, num_classes, shape)
    for c in absent:
        labels[labels == c] = (c + 1) % num_classes
    labels[rng.random(shape) < void_fraction] = VOID
    return labels, rng.integers(0, num_classes, shape)


def reference_confusion(labels, predictions, num_classes):
    cm = np.zeros((num_classes, num_classes), np.int64)
    valid = labels != VOID
    np.add.at(cm, (labels[valid], predictions[valid]), 1)
    return cm


def reference_scores(labels, predictions, num_classes):
    """Per-class IoU, F1, recall and pixel accuracy straight from the pixel arrays (explicit class loop)."""
    valid = labels != VOID
    iou, f1, recall = (np.full(num_classes, np.nan) for _ in range(3))
    for c in range(num_classes):
        gt, fm = (labels == c) & valid, (predictions == c) & valid
        tp, union = np.sum(gt & fm), np.sum(gt | fm)
        if union:
            iou[c] = tp / union
            f1[c] = 2 * tp / (gt.sum() + fm.sum())
        if gt.sum():
            recall[c] = tp / gt.sum()
    return iou, f1, recall, np.mean(labels[valid] == predictions[valid])


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_confusion_matrix_matches_add_at(rng, num_classes):
    for _ in range(3):
        shape = tuple(rng.integers(1, 4, 1)) + tuple(rng.integers(3, 40, 2))
        labels, predictions = random_maps(rng, num_classes, shape, void_fraction=rng.random() * 0.5)
        cm = confusion_matrix(labels, predictions, num_classes)
        assert cm.dtype == jnp.int32 and cm.shape == (num_classes, num_classes)
        np.testing.assert_array_equal(cm, reference_confusion(labels, predictions, num_classes))
        per_image = per_image_confusion_matrix(labels, predictions, num_classes)
        for b in range(shape[0]):
            expected = reference_confusion(labels[b], predictions[b], num_classes)
            np.testing.assert_array_equal(per_image[b], expected)


def test_confusion_matrix_under_jit(rng):
    labels, predictions = random_maps(rng, 5, (2, 17, 23))
    jitted = jax.jit(confusion_matrix, static_argnums=2)
    np.testing.assert_array_equal(jitted(labels, predictions, 5), reference_confusion(labels, predictions, 5))
    uint8_cm = confusion_matrix(labels.astype(np.uint8), predictions.astype(np.uint8), 5)  # PNG label dtype
    np.testing.assert_array_equal(uint8_cm, reference_confusion(labels, predictions, 5))


def test_confusion_matrix_exact_on_full_resolution(rng):
    labels = rng.integers(0, 19, (1, 1024, 2048))
    labels[rng.random(labels.shape) < 0.1] = VOID
    predictions = np.where(rng.random(labels.shape) < 0.7, labels % VOID, rng.integers(0, 19, labels.shape))
    valid = labels != VOID
    expected = np.bincount((labels[valid] * 19 + predictions[valid]).astype(np.int64), minlength=19 * 19)
    cm = confusion_matrix(labels, predictions, 19)
    np.testing.assert_array_equal(np.asarray(cm, np.int64).reshape(-1), expected)
    assert int(np.asarray(cm, np.int64).sum()) == int(valid.sum())


def test_update_confusion_matrix_adds_and_keeps_dtype(rng):
    total = np.zeros((5, 5), np.int64)
    device_total = jnp.zeros((5, 5), jnp.int32)
    expected = np.zeros((5, 5), np.int64)
    for _ in range(3):
        labels, predictions = random_maps(rng, 5, (2, 11, 13))
        total = update_confusion_matrix(total, labels, predictions)
        device_total = update_confusion_matrix(device_total, labels, predictions)
        expected += reference_confusion(labels, predictions, 5)
    assert isinstance(total, np.ndarray) and total.dtype == np.int64
    assert device_total.dtype == jnp.int32
    np.testing.assert_array_equal(total, expected)
    np.testing.assert_array_equal(device_total, expected)


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_scores_match_pixel_references(rng, num_classes):
    absent = (num_classes - 1,) if num_classes > 2 else ()
    labels, predictions = random_maps(rng, num_classes, (2, 24, 31), absent=absent)
    if num_classes > 2:  # one class in neither map: NaN IoU and F1, skipped by the means
        predictions[predictions == num_classes - 1] = 0
    iou, f1, recall, accuracy = reference_scores(labels, predictions, num_classes)
    cm = confusion_matrix(labels, predictions, num_classes)
    assert np.isnan(iou).sum() == len(absent)
    np.testing.assert_allclose(per_class_iou(cm), iou, rtol=1e-14)
    np.testing.assert_allclose(per_class_f1(cm), f1, rtol=1e-14)
    np.testing.assert_allclose(per_class_f1(cm), 2 * iou / (1 + iou), rtol=1e-12)
    assert mean_iou(cm) == pytest.approx(np.nanmean(iou), rel=1e-14)
    assert mean_accuracy(cm) == pytest.approx(np.nanmean(recall), rel=1e-14)
    assert pixel_accuracy(cm) == pytest.approx(accuracy, rel=1e-14)
    summary = segmentation_summary(cm, [f"class{c}" for c in range(num_classes)])
    assert summary["miou"] == pytest.approx(np.nanmean(iou), rel=1e-14)
    assert summary["mean_f1"] == pytest.approx(np.nanmean(f1), rel=1e-14)
    assert summary["f1"]["class0"] == pytest.approx(f1[0], rel=1e-14)
    assert summary["iou"][f"class{num_classes - 2}"] == pytest.approx(iou[num_classes - 2], rel=1e-14)


def test_scores_hand_computed():
    # truth 0 0 1 1 / prediction 0 1 1 1: cm [[1,1],[0,2]]; IoU0 = 1/2, IoU1 = 2/3; F1 = 2/3, 4/5;
    # recall 1/2, 1; accuracy 3/4.
    cm = np.array([[1, 1], [0, 2]])
    np.testing.assert_allclose(per_class_iou(cm), [1 / 2, 2 / 3])
    np.testing.assert_allclose(per_class_f1(cm), [2 / 3, 4 / 5])
    assert mean_iou(cm) == pytest.approx(7 / 12)
    assert mean_accuracy(cm) == pytest.approx(3 / 4)
    assert pixel_accuracy(cm) == pytest.approx(3 / 4)
    stacked = np.stack([cm, np.zeros((2, 2))])  # batched matrices; an empty one scores NaN
    np.testing.assert_allclose(mean_iou(stacked), [7 / 12, np.nan])


def test_merged_f1_matches_hand_merged_reference(rng):
    labels, predictions = random_maps(rng, 11, (3, 20, 25))
    cm = confusion_matrix(labels, predictions, 11)
    scores = merged_f1(cm, HELEN_F1_GROUPS)
    valid = labels != VOID
    for name, ids in HELEN_F1_GROUPS.items():
        gt, fm = np.isin(labels, ids) & valid, np.isin(predictions, ids) & valid
        expected = 2 * np.sum(gt & fm) / (np.sum(gt) + np.sum(fm))
        assert scores[name] == pytest.approx(expected, rel=1e-14), name
    assert HELEN_F1_GROUPS == {"brows": (2, 3), "eyes": (4, 5), "nose": (6,), "mouth": (7, 8, 9),
                               "overall": (2, 3, 4, 5, 6, 7, 8, 9)}


def test_merged_f1_counts_confusion_inside_a_group_as_correct():
    # truth: 2 pixels of l-brow (2); prediction: r-brow (3) and skin (1). brows: TP 1, FN 1 -> F1 2/3;
    # per class F1 of class 2 is 0.
    cm = np.zeros((11, 11))
    cm[2, 3] = cm[2, 1] = 1
    assert merged_f1(cm, {"brows": [2, 3]})["brows"] == pytest.approx(2 / 3)
    assert per_class_f1(cm)[2] == 0.0
    assert np.isnan(merged_f1(cm, {"nose": [6]})["nose"])


def test_prediction_entropy_matches_numpy(rng):
    logits = rng.normal(size=(2, 5, 7, 6)) * 3
    logits[0, 0, 0] = [1e4, -1e4, 0, 5e3, 1e4, 3]  # large logits stay finite: two tied winners -> log 2
    probs = softmax(logits, axis=-1)
    expected = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), axis=-1)
    entropy = prediction_entropy(logits)
    np.testing.assert_allclose(entropy, expected, rtol=1e-12, atol=1e-14)
    assert float(entropy[0, 0, 0]) == pytest.approx(np.log(2), rel=1e-12)
    np.testing.assert_allclose(prediction_entropy(logits, normalize=True), expected / np.log(6), rtol=1e-12,
                               atol=1e-14)
    uniform = prediction_entropy(np.zeros((1, 1, 1, 4)), normalize=True)
    assert float(uniform[0, 0, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("call, match", [
    (lambda l, p: confusion_matrix(l[0], p, 5), "labels: expected rank 3"),
    (lambda l, p: confusion_matrix(l, p[..., None], 5), "predictions: expected rank 3"),
    (lambda l, p: confusion_matrix(l, p[:, :-1], 5), r"shapes must match: labels \(2, 6, 7\), predictions"),
    (lambda l, p: confusion_matrix(np.where(l == 1, 7, l), p, 5), r"labels: values \{7\}"),
    (lambda l, p: confusion_matrix(l, np.where(p == 1, VOID, p), 5), r"predictions: values \{255\}"),
    (lambda l, p: confusion_matrix(l, p.astype(float), 5), "predictions: expected an integer"),
    (lambda l, p: confusion_matrix(l, p, 0), "num_classes"),
    (lambda l, p: update_confusion_matrix(np.zeros((5, 4)), l, p), "cm: expected a square"),
    (lambda l, p: merged_f1(np.zeros((5, 5)), {"eyes": [4, 5]}), r"groups\['eyes'\]"),
    (lambda l, p: per_class_iou(np.zeros(5)), "cm: expected"),
    (lambda l, p: segmentation_summary(np.zeros((5, 5)), ["a"]), "class_names"),
    (lambda l, p: prediction_entropy(np.zeros((2, 3, 4))), "logits: expected rank 4"),
    (lambda l, p: prediction_entropy(np.zeros((2, 3, 4, 1))), "logits: expected at least 2"),
])
def test_bad_input_raises(rng, call, match):
    labels, predictions = random_maps(rng, 5, (2, 6, 7), void_fraction=0.0)
    with pytest.raises(InputError, match=match):
        call(labels, predictions)
