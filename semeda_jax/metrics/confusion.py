"""Confusion matrices and the scores derived from them (SPEC.md 1(b) "Evaluation protocols", 5.3).

Conventions: labels and predictions [B,H,W] int, void = 255 in the labels only (void truth pixels are not
counted, whatever was predicted there); predictions must lie in [0, C). A confusion matrix is [..., C, C] with
rows = truth and columns = prediction. Counting is exact int32 (`jnp.bincount` with a static length), so one
call is exact up to 2^31 - 1 pixels. For a whole dataset accumulate on the host in int64
(`total += np.asarray(cm, np.int64)`): `update_confusion_matrix` keeps the accumulator's dtype, and int32
overflows beyond 2^31 pixels (~1,000 Cityscapes images).

The scores (IoU, accuracy, F1) take a numpy or jnp matrix and are computed on the host in numpy float64: they
run once per evaluation on a C x C matrix, and float64 must not depend on `jax_enable_x64`. They accept any
leading dimensions ([..., C, C], e.g. one matrix per trimap width) and give NaN for a class with no support.
"""
from __future__ import annotations

import functools
import types
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.validation import (IGNORE_LABEL, InputError, check_class_map, check_labels, check_rank,
                                   check_same_shape)

# HELEN label ids (SPEC 1(b)): 2/3 brows, 4/5 eyes, 6 nose, 7/8/9 upper lip / inner mouth / lower lip.
HELEN_F1_GROUPS: Mapping[str, tuple[int, ...]] = types.MappingProxyType({
    "brows": (2, 3),
    "eyes": (4, 5),
    "nose": (6,),
    "mouth": (7, 8, 9),
    "overall": (2, 3, 4, 5, 6, 7, 8, 9),
})


def check_label_prediction_pair(labels, predictions, num_classes: int, ignore_label: int = IGNORE_LABEL) -> None:
    """Raise InputError unless labels/predictions are same-shape [B,H,W] int maps with values in range.

    Labels may hold `ignore_label`; predictions may not. Value checks run only on concrete arrays.
    """
    if int(num_classes) < 1:
        raise InputError(f"num_classes: expected a positive class count, got {num_classes}")
    check_rank("labels", labels, 3, "[B,H,W]")
    check_rank("predictions", predictions, 3, "[B,H,W]")
    check_same_shape(("labels", "predictions"), labels, predictions)
    check_labels("labels", labels, num_classes, ignore_label)
    check_class_map("predictions", predictions, num_classes, ignore_label=None)


def grouped_confusion(labels: jax.Array, predictions: jax.Array, groups: jax.Array, num_groups: int,
                      num_classes: int, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """One confusion matrix per pixel group: int32 [G, C, C] from `groups` int [...] in [0, G).

    Unchecked core shared by the per-image, dataset and trimap counts. Void truth pixels (and, under jit,
    any out-of-range label or prediction) add nothing; everything else is counted exactly in int32.
    """
    valid = ((labels != ignore_label) & (labels >= 0) & (labels < num_classes)
             & (predictions >= 0) & (predictions < num_classes))
    index = (groups * num_classes + labels) * num_classes + predictions
    index = jnp.where(valid, index, 0).reshape(-1)
    counts = jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32),
                          length=num_groups * num_classes * num_classes)
    return counts.reshape(num_groups, num_classes, num_classes)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label"))
def _per_image_confusion(labels, predictions, num_classes, ignore_label):
    batch_index = jnp.broadcast_to(jnp.arange(labels.shape[0])[:, None, None], labels.shape)
    return grouped_confusion(labels, predictions, batch_index, labels.shape[0], num_classes, ignore_label)


def per_image_confusion_matrix(labels, predictions, num_classes: int,
                               ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """labels, predictions [B,H,W] int -> int32 [B,C,C], one confusion matrix per image (void ignored)."""
    check_label_prediction_pair(labels, predictions, num_classes, ignore_label)
    return _per_image_confusion(jnp.asarray(labels), jnp.asarray(predictions), int(num_classes), ignore_label)


def confusion_matrix(labels, predictions, num_classes: int, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """labels, predictions [B,H,W] int -> int32 [C,C] pixel counts, rows = truth, cols = prediction.

    Void truth pixels are ignored. Exact while the batch has fewer than 2^31 pixels.
    """
    per_image = per_image_confusion_matrix(labels, predictions, num_classes, ignore_label)
    return jnp.sum(per_image, axis=0, dtype=jnp.int32)


def update_confusion_matrix(cm, labels, predictions, ignore_label: int = IGNORE_LABEL):
    """cm [C,C] + confusion_matrix(labels, predictions, C), in cm's dtype (C is read from cm).

    A jnp int32 accumulator overflows past 2^31 pixels; for a dataset, pass a numpy int64 matrix (the sum is
    then done on the host in int64) or enable x64 and use a jnp int64 one.
    """
    check_rank("cm", cm, 2, "[C,C]")
    if cm.shape[0] != cm.shape[1]:
        raise InputError(f"cm: expected a square [C,C] matrix, got shape {tuple(cm.shape)}")
    batch_cm = confusion_matrix(labels, predictions, cm.shape[0], ignore_label)
    if isinstance(cm, np.ndarray):
        return cm + np.asarray(batch_cm).astype(cm.dtype)
    return cm + batch_cm.astype(cm.dtype)


def _as_cm(cm) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise InputError(f"cm: expected [..., C, C] with square last two axes, got shape {cm.shape}")
    return cm


def _tp_fp_fn(cm: np.ndarray):
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    return tp, cm.sum(axis=-2) - tp, cm.sum(axis=-1) - tp


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (no warnings)."""
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _nanmean(x: np.ndarray):
    """Mean over the last axis ignoring NaN; NaN (no warning) when every entry is NaN."""
    count = np.sum(~np.isnan(x), axis=-1)
    mean = _ratio(np.nansum(x, axis=-1), count)
    return float(mean) if np.ndim(mean) == 0 else mean


def per_class_iou(cm) -> np.ndarray:
    """cm [..., C, C] -> float64 [..., C]: TP / (TP + FP + FN); NaN where the class is in neither map."""
    tp, fp, fn = _tp_fp_fn(_as_cm(cm))
    return _ratio(tp, tp + fp + fn)


def mean_iou(cm):
    """mIoU (SEMEDA Sec. 3.4): NaN-mean of `per_class_iou` over classes; float (or float64 [...] if batched)."""
    return _nanmean(per_class_iou(cm))


def pixel_accuracy(cm):
    """Correct valid pixels / valid pixels (trace / sum); NaN for an empty matrix."""
    cm = _as_cm(cm)
    acc = _ratio(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))
    return float(acc) if np.ndim(acc) == 0 else acc


def mean_accuracy(cm):
    """Mean class recall TP / (TP + FN) over the classes present in the truth."""
    tp, _, fn = _tp_fp_fn(_as_cm(cm))
    return _nanmean(_ratio(tp, tp + fn))


def per_class_f1(cm) -> np.ndarray:
    """cm [..., C, C] -> float64 [..., C]: F1 (Dice) 2TP / (2TP + FP + FN) = 2 IoU / (1 + IoU); NaN if empty.

    SEMEDA Tables 2-3 report exactly this, from the dataset-level matrix.
    """
    tp, fp, fn = _tp_fp_fn(_as_cm(cm))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def merged_f1(cm, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """F1 of each group of class ids merged into one binary foreground (HELEN face parts, SPEC 1(c) "F1").

    cm [C,C]; groups maps a name to class ids (e.g. `HELEN_F1_GROUPS`). TP = truth and prediction both in
    the group, FP = prediction in it but truth not, FN = the converse. NaN when the group is absent from both maps.
    """
    cm = _as_cm(cm)
    if cm.ndim != 2:
        raise InputError(f"cm: expected one [C,C] matrix, got shape {cm.shape}")
    scores = {}
    for name, ids in groups.items():
        ids = np.asarray(ids)
        if ids.size == 0 or np.any((ids < 0) | (ids >= cm.shape[0])):
            raise InputError(
                f"groups[{name!r}]: class ids {ids.tolist()} must be non-empty and in [0, {cm.shape[0]})")
        member = np.zeros(cm.shape[0], dtype=bool)
        member[ids] = True
        tp = cm[np.ix_(member, member)].sum()
        fp = cm[np.ix_(~member, member)].sum()
        fn = cm[np.ix_(member, ~member)].sum()
        scores[name] = float(_ratio(np.float64(2 * tp), np.float64(2 * tp + fp + fn)))
    return scores


def segmentation_summary(cm, class_names: Sequence[str] | None = None) -> dict:
    """All confusion-matrix scores of a [C,C] matrix as a JSON-ready dict (fractions in [0,1], NaN if absent).

    Keys: miou, pixel_acc, mean_acc, mean_f1 (NaN-mean over classes, as SEMEDA's F1 "mean"), iou and f1
    (dicts class name -> value; names default to "0", "1", ...).
    """
    cm = _as_cm(cm)
    names = [str(i) for i in range(cm.shape[-1])] if class_names is None else list(class_names)
    if len(names) != cm.shape[-1]:
        raise InputError(f"class_names: expected {cm.shape[-1]} names, got {len(names)}")
    iou, f1 = per_class_iou(cm), per_class_f1(cm)
    return {
        "miou": mean_iou(cm),
        "pixel_acc": pixel_accuracy(cm),
        "mean_acc": mean_accuracy(cm),
        "mean_f1": _nanmean(f1),
        "iou": dict(zip(names, iou.tolist())),
        "f1": dict(zip(names, f1.tolist())),
    }
