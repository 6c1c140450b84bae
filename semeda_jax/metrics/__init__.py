"""Evaluation metrics (pure jnp counting, numpy float64 summaries): confusion-matrix scores (mIoU, accuracy,
F1, HELEN merged F1), per-image E-measure, trimap boundary / interior matrices, Boundary IoU and boundary
F-score, predictive entropy."""
from semeda_jax.metrics.boundary import (
    BOUNDARY_BAND_RATIO,
    BOUNDARY_COUNT_KEYS,
    BOUNDARY_TOLERANCE_RATIO,
    boundary_band_width,
    boundary_counts,
    boundary_fscore,
    boundary_iou,
    boundary_tolerance,
)
from semeda_jax.metrics.confusion import (
    HELEN_F1_GROUPS,
    confusion_matrix,
    mean_accuracy,
    mean_iou,
    merged_f1,
    per_class_f1,
    per_class_iou,
    per_image_confusion_matrix,
    pixel_accuracy,
    segmentation_summary,
    update_confusion_matrix,
)
from semeda_jax.metrics.emeasure import emeasure_dataset, emeasure_from_counts, emeasure_per_image, emeasure_totals
from semeda_jax.metrics.entropy import prediction_entropy
from semeda_jax.metrics.trimap import DEFAULT_TRIMAP_WIDTHS, trimap_bands, trimap_confusion, trimap_miou

__all__ = [
    "BOUNDARY_BAND_RATIO",
    "BOUNDARY_COUNT_KEYS",
    "BOUNDARY_TOLERANCE_RATIO",
    "DEFAULT_TRIMAP_WIDTHS",
    "HELEN_F1_GROUPS",
    "boundary_band_width",
    "boundary_counts",
    "boundary_fscore",
    "boundary_iou",
    "boundary_tolerance",
    "confusion_matrix",
    "emeasure_dataset",
    "emeasure_from_counts",
    "emeasure_per_image",
    "emeasure_totals",
    "mean_accuracy",
    "mean_iou",
    "merged_f1",
    "per_class_f1",
    "per_class_iou",
    "per_image_confusion_matrix",
    "pixel_accuracy",
    "prediction_entropy",
    "segmentation_summary",
    "trimap_bands",
    "trimap_confusion",
    "trimap_miou",
    "update_confusion_matrix",
]
