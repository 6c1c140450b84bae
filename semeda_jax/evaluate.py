"""Evaluation of a segmentation state on a validation split: one jitted count step, host accumulation.

The step turns a padded eval batch into exact counts (confusion matrix, trimap band/interior matrices,
per-image E-measure sums); the host adds them up in int64/float64, so the result does not depend on the batch
size or the number of processes. Every process reads its share of each global eval batch
(config.data.eval_batch_size is global, like the training batch); the step runs on the global batch sharded on
the `data` mesh axis, so the counts come back already summed over processes (replicated) and only the
per-image outputs (predictions, entropy) stay sharded, each process keeping its own rows. Single scale, no flip
(the SEMEDA protocol).
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from semeda_jax import metrics, parallel
from semeda_jax.data import pipeline
from semeda_jax.models import upsample_logits
from semeda_jax.validation import IGNORE_LABEL

COUNTS = ("cm", "band_cm", "interior_cm", "emeasure_sums", "emeasure_counts")


def predict_logits(apply_fn, variables, images: jax.Array, size: Sequence[int] | None = None) -> jax.Array:
    """images [B,H,W,3] -> logits [B,h,w,C] float32 (eval-mode batch norm), upsampled to `size` (h, w), by
    default the input resolution (H, W)."""
    logits = apply_fn(variables, images, train=False).astype(jnp.float32)
    return upsample_logits(logits, images.shape[1:3] if size is None else size)


def eval_counts(variables, batch: dict, *, apply_fn, num_classes: int, widths: Sequence[int]) -> dict:
    """Counts of one eval batch at the labels' resolution (the logits are upsampled to it, whatever the input
    scale); filler examples (mask False) are all void and count nothing."""
    logits = predict_logits(apply_fn, variables, batch["image"], batch["label"].shape[1:3])
    predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    labels = jnp.where(batch["mask"][:, None, None], batch["label"], IGNORE_LABEL)
    band_cm, interior_cm = metrics.trimap_confusion(labels, predictions, num_classes, tuple(widths))
    scores, present = metrics.emeasure_per_image(labels, predictions, num_classes)
    emeasure_sums, emeasure_counts = metrics.emeasure_totals(scores, present)
    return {"cm": metrics.confusion_matrix(labels, predictions, num_classes), "band_cm": band_cm,
            "interior_cm": interior_cm, "emeasure_sums": emeasure_sums, "emeasure_counts": emeasure_counts,
            "predictions": predictions, "entropy": metrics.prediction_entropy(logits, normalize=True)}


def sample_image(image: np.ndarray, label_size: Sequence[int], data_config) -> np.ndarray:
    """A padded, normalised eval image [SH,SW,3] -> uint8 RGB at the labels' padded size (PH, PW) for the plots,
    resized (bilinear) like the logits when the input scale is not 1."""
    image = pipeline.denormalize(image, data_config.mean, data_config.std)
    if image.shape[:2] == tuple(label_size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(label_size)[::-1], Image.BILINEAR))


# config.eval.f1_groups -> the class groups whose merged F1 the report adds ("" = none).
F1_GROUPS = {"": {}, "helen": metrics.HELEN_F1_GROUPS}


def summarize(totals: dict, widths: Sequence[int], class_names: Sequence[str] | None = None,
              f1_groups: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Accumulated counts -> the report: mIoU, per-class IoU/F1, accuracies, E-measure, trimap curves, and the
    merged F1 of `f1_groups` (e.g. HELEN's brows / eyes / nose / mouth / overall) when given."""
    report = metrics.segmentation_summary(totals["cm"], class_names)
    if f1_groups:
        report["merged_f1"] = metrics.merged_f1(totals["cm"], f1_groups)
    per_class_e, mean_e = metrics.emeasure_dataset(totals["emeasure_sums"], totals["emeasure_counts"])
    names = class_names or [str(c) for c in range(len(per_class_e))]
    report["emeasure"] = float(mean_e)
    report["emeasure_per_class"] = {n: float(v) for n, v in zip(names, per_class_e)}
    boundary, interior = metrics.trimap_miou(totals["band_cm"], totals["interior_cm"])
    report["trimap"] = {"widths": [int(w) for w in widths], "boundary_miou": [float(v) for v in boundary],
                        "interior_miou": [float(v) for v in interior]}
    report["confusion_matrix"] = np.asarray(totals["cm"]).tolist()
    return report


@functools.lru_cache(maxsize=4)
def jit_eval_counts(apply_fn, num_classes: int, widths: tuple[int, ...], mesh) -> Callable:
    """eval_counts jitted for `mesh` (counts replicated, per-image maps batch-sharded); cached, so the periodic
    evaluations of one training run compile it once."""
    per_image = parallel.batch_sharding(mesh)
    return jax.jit(functools.partial(eval_counts, apply_fn=apply_fn, num_classes=num_classes, widths=widths),
                   out_shardings={**{key: parallel.replicated(mesh) for key in COUNTS},
                                  "predictions": per_image, "entropy": per_image})


def evaluate(state, reader, config: ml_collections.ConfigDict, *, num_samples: int = 0,
             class_names: Sequence[str] | None = None) -> dict:
    """Full evaluation of `state` on `reader`'s split -> report dict; with `num_samples`, also the first
    `num_samples` images as report["samples"] (image, label, prediction, entropy arrays for the plots)."""
    widths = tuple(config.eval.trimap_widths)
    mesh = parallel.make_mesh(config)
    step = jit_eval_counts(state.apply_fn, config.dataset.num_classes, widths, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    dataset = pipeline.eval_dataset(reader, pad_size=config.data.eval_pad_size,
                                    batch_size=parallel.local_eval_batch_size(config.data.eval_batch_size, mesh),
                                    mean=config.data.mean, std=config.data.std, process_index=jax.process_index(),
                                    process_count=jax.process_count(), input_scale=config.data.input_scale)
    totals, samples = {}, []
    for batch in dataset.as_numpy_iterator():
        out = step(variables, parallel.global_batch({k: batch[k] for k in ("image", "label", "mask")}, mesh))
        for key in COUNTS:
            value = np.asarray(out[key], np.float64 if key == "emeasure_sums" else np.int64)
            totals[key] = totals.get(key, 0) + value
        if len(samples) < num_samples:
            out = {key: parallel.host_rows(out[key]) for key in ("predictions", "entropy")}
        for i in np.flatnonzero(batch["mask"])[:max(num_samples - len(samples), 0)]:
            h, w = int(batch["height"][i]), int(batch["width"][i])
            samples.append({"id": batch["id"][i].decode(),
                            "image": sample_image(batch["image"][i], batch["label"].shape[1:3], config.data)[:h, :w],
                            "label": batch["label"][i, :h, :w], "prediction": out["predictions"][i, :h, :w],
                            "entropy": out["entropy"][i, :h, :w]})
    report = summarize(totals, widths, class_names, F1_GROUPS[config.eval.get("f1_groups", "")])
    if num_samples:
        report["samples"] = samples
    return report
