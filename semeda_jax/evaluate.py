"""Evaluation of a segmentation state on a validation split: one jitted count step, host accumulation.

The step turns a padded eval batch into exact counts (confusion matrix, trimap band/interior matrices,
per-image E-measure sums); the host adds them up in int64/float64, so the result does not depend on the batch
size or the number of processes. Every process reads its share of each global eval batch
(config.data.eval_batch_size is global, like the training batch); the step runs on the global batch sharded on
the `data` mesh axis, so the counts come back already summed over processes (replicated) and only the
per-image outputs (predictions, entropy) stay sharded, each process keeping its own rows.

Predictions come from the inference seam (inference.py): two named evaluators, "periodic" (whole image, single
scale, no flip: the SEMEDA protocol; every config.train.eval_every steps, it picks the best checkpoint) and
"full" (config.eval.inference: the eval stage, and once more at the end of training when it differs).
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from semeda_jax import inference, metrics, parallel
from semeda_jax.validation import IGNORE_LABEL, ConfigError, check_fields

COUNTS = ("cm", "band_cm", "interior_cm", "emeasure_sums", "emeasure_counts")
PERIODIC = inference.InferenceSpec()  # whole image, one scale, no flip


def evaluators(config: ml_collections.ConfigDict) -> dict[str, tuple[inference.InferenceSpec, int]]:
    """{name: (inference spec, cadence in steps; 0 = at the end of training only)}; "full" only when its
    inference differs from the periodic one and needs no learned fusion weights (those are fitted after
    training, by the learn_fusion stage; the eval stage then runs the full inference)."""
    full = inference.spec_for(config)
    named = {"periodic": (PERIODIC, int(config.train.eval_every))}
    if full != PERIODIC and full.fusion != "learned":
        named["full"] = (full, 0)
    return named


def eval_counts(variables, batch: dict, *, predict_fn, num_classes: int, widths: Sequence[int]) -> dict:
    """Counts of one eval batch at the labels' resolution (predictions are made at it, whatever the input
    scale); filler examples (mask False) are all void and count nothing."""
    probs = predict_fn(variables, batch["image"], batch["label"].shape[1:3])
    predictions = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    labels = jnp.where(batch["mask"][:, None, None], batch["label"], IGNORE_LABEL)
    band_cm, interior_cm = metrics.trimap_confusion(labels, predictions, num_classes, tuple(widths))
    scores, present = metrics.emeasure_per_image(labels, predictions, num_classes)
    emeasure_sums, emeasure_counts = metrics.emeasure_totals(scores, present)
    return {"cm": metrics.confusion_matrix(labels, predictions, num_classes), "band_cm": band_cm,
            "interior_cm": interior_cm, "emeasure_sums": emeasure_sums, "emeasure_counts": emeasure_counts,
            "predictions": predictions, "entropy": metrics.prediction_entropy(jnp.log(probs), normalize=True)}


def sample_image(image: np.ndarray, label_size: Sequence[int], data_config) -> np.ndarray:
    """A padded, normalised eval image [SH,SW,3] -> uint8 RGB at the labels' padded size (PH, PW) for the plots,
    resized (bilinear) like the logits when the input scale is not 1."""
    from semeda_jax.data import pipeline  # TensorFlow is imported where data is read, not with the eval step

    image = pipeline.denormalize(image, data_config.mean, data_config.std)
    if image.shape[:2] == tuple(label_size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(label_size)[::-1], Image.BILINEAR))


# config.eval.f1_groups -> the class groups whose merged F1 the report adds ("" = none).
F1_GROUPS = {"": {}, "helen": metrics.HELEN_F1_GROUPS}
CONFIG_FIELDS = ("trimap_widths", "num_plot_images", "f1_groups", "inference", "crf", "learn_fusion")  # of config.eval


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.eval (stages.check_config): only CONFIG_FIELDS (inference, crf and learn_fusion are checked by
    inference.py, crf.py and fusion.py); a known f1_groups."""
    check_fields(config.eval, CONFIG_FIELDS, "config.eval")
    if config.eval.get("f1_groups", "") not in F1_GROUPS:
        raise ConfigError(f"config.eval.f1_groups: unknown {config.eval.f1_groups!r}; valid: {sorted(F1_GROUPS)}")


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
def jit_eval_counts(apply_fn, spec: inference.InferenceSpec, output_stride: int, num_classes: int,
                    widths: tuple[int, ...], mesh) -> Callable:
    """eval_counts of `spec`'s predictions jitted for `mesh` (counts replicated, per-image maps batch-sharded);
    cached, so the periodic evaluations of one training run compile it once."""
    per_image = parallel.batch_sharding(mesh)
    predict_fn = inference.build_predict_fn(spec, apply_fn, output_stride=output_stride)
    return jax.jit(functools.partial(eval_counts, predict_fn=predict_fn, num_classes=num_classes, widths=widths),
                   out_shardings={**{key: parallel.replicated(mesh) for key in COUNTS},
                                  "predictions": per_image, "entropy": per_image})


def evaluate(state, reader, config: ml_collections.ConfigDict, *, num_samples: int = 0,
             class_names: Sequence[str] | None = None, spec: inference.InferenceSpec | None = None) -> dict:
    """Evaluation of `state` (apply_fn, params, batch_stats) on `reader`'s split with the inference `spec`
    (default config.eval.inference) -> report dict; with `num_samples`, also the first `num_samples` images as
    report["samples"] (image, label, prediction, entropy arrays for the plots)."""
    widths = tuple(config.eval.trimap_widths)
    mesh = parallel.make_mesh(config)
    spec = inference.spec_for(config) if spec is None else spec
    step = jit_eval_counts(state.apply_fn, spec, int(config.model.output_stride), config.dataset.num_classes,
                           widths, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    from semeda_jax.data import pipeline  # TensorFlow is imported where data is read, not with the eval step

    dataset = pipeline.eval_dataset(reader, pad_size=config.data.eval_pad_size,
                                    batch_size=parallel.local_eval_batch_size(config.data.eval_batch_size, mesh),
                                    mean=config.data.mean, std=config.data.std, process_index=jax.process_index(),
                                    process_count=jax.process_count(), input_scale=config.data.input_scale)
    totals, samples = {}, []
    for batch in dataset.as_numpy_iterator():
        out = step(variables, parallel.global_batch({k: batch[k] for k in ("image", "label", "mask")}, mesh))
        for key in COUNTS:
            value = np.asarray(jax.device_get(out[key]), np.float64 if key == "emeasure_sums" else np.int64)
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
