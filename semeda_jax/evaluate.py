"""Evaluation of a segmentation state on a validation split: one jitted count step, totals kept on device.

The step turns a padded eval batch into exact counts (confusion matrix, trimap band/interior matrices,
per-image E-measure sums, Boundary IoU / boundary F counts) and two float32 scores per image (mIoU and Boundary
IoU, each a mean over the classes in the image's truth or prediction); a jitted add keeps the running totals on
device, exactly (`add_counts`: integer counts in two 32-bit words, float sums with their rounding error), and the
totals come to the host once per evaluation, so the result does not depend on the batch size or the number of
processes. Every process reads its share of each global eval batch (config.data.eval_batch_size is global, like
the training batch; `eval_batches`, shared with fusion.py); the step runs on the global batch sharded on the
`data` mesh axis, so the counts are already summed over processes (replicated) and only the per-image maps
(predictions, entropy) stay sharded, each process keeping its own rows, pulled while plot samples are still
wanted. The per-image scores stay on device too (replicated: 12 bytes an image, with its index in the split) and
come to the host with the totals, in the same pull; the `num_worst` images of lowest score are then predicted
once more (a second pass over those images only, read by every process) for the worst-image galleries, so no
prediction is kept for the whole split. A SIGTERM stops the pass at the next batch (preemption.check_batch).

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

from semeda_jax import inference, metrics, parallel, preemption
from semeda_jax.validation import IGNORE_LABEL, ConfigError, check_fields, is_int

COUNTS = ("cm", "band_cm", "interior_cm", "emeasure_sums", "emeasure_counts", *metrics.BOUNDARY_COUNT_KEYS)
PER_IMAGE = ("image_index", "image_miou", "image_boundary_iou")  # replicated [B] per batch, -1 / NaN for fillers
WORST = {"miou": "image_miou", "boundary_iou": "image_boundary_iou"}  # report["worst_images"] key -> score
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


def present_mean(intersection: jax.Array, union: jax.Array) -> jax.Array:
    """intersection, union int [B,C] -> float32 [B]: each image's mean IoU over its classes with union > 0
    (in its truth or prediction); NaN for an image with none (all void, a filler)."""
    present = union > 0
    iou = jnp.where(present, intersection / jnp.maximum(union, 1), 0.0).astype(jnp.float32)
    return jnp.sum(iou, axis=1) / jnp.where(present.any(axis=1), jnp.sum(present, axis=1), jnp.nan)


def eval_counts(variables, batch: dict, *, predict_fn, num_classes: int, widths: Sequence[int]) -> dict:
    """Counts of one eval batch at the labels' resolution (predictions are made at it, whatever the input
    scale), and the per-image outputs; filler examples (mask False) are all void and count nothing. `batch`:
    image, label, mask and the `step_inputs` keys (the split index and Boundary IoU sizes / widths per image)."""
    probs = predict_fn(variables, batch["image"], batch["label"].shape[1:3])
    predictions = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    labels = jnp.where(batch["mask"][:, None, None], batch["label"], IGNORE_LABEL)
    band_cm, interior_cm = metrics.trimap_confusion(labels, predictions, num_classes, tuple(widths))
    scores, present = metrics.emeasure_per_image(labels, predictions, num_classes)
    emeasure_sums, emeasure_counts = metrics.emeasure_totals(scores, present)
    image_cm = metrics.per_image_confusion_matrix(labels, predictions, num_classes)  # [B,C,C]
    image_tp = jnp.diagonal(image_cm, axis1=1, axis2=2)
    image_boundary = jax.vmap(lambda *image: metrics.boundary_counts(  # {key: [B,C]}, one image at a time
        image[0][None], image[1][None], num_classes, sizes=image[2][None], band_width=image[3][None],
        tolerance=image[4][None]))(labels, predictions, batch["boundary_sizes"], batch["boundary_band_width"],
                                   batch["boundary_tolerance"])
    return {"cm": jnp.sum(image_cm, axis=0, dtype=jnp.int32), "band_cm": band_cm, "interior_cm": interior_cm,
            "emeasure_sums": emeasure_sums, "emeasure_counts": emeasure_counts,
            **{key: jnp.sum(value, axis=0, dtype=jnp.int32) for key, value in image_boundary.items()},
            "image_index": batch["index"],
            "image_miou": present_mean(image_tp, image_cm.sum(1) + image_cm.sum(2) - image_tp),
            "image_boundary_iou": present_mean(image_boundary["iou_intersection"], image_boundary["iou_union"]),
            "predictions": predictions, "entropy": metrics.prediction_entropy(jnp.log(probs), normalize=True)}


def boundary_widths(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(config.eval.boundary_width, config.eval.boundary_tolerance) in pixels; 0 (or unset) = the default of
    each image's diagonal (metrics.boundary_band_width: 2%, boundary_tolerance: 0.8%)."""
    return int(config.eval.get("boundary_width") or 0), int(config.eval.get("boundary_tolerance") or 0)


def step_input_specs(batch_size: int, label_size: Sequence[int], image_size: Sequence[int]) -> dict:
    """{key: jax.ShapeDtypeStruct} of the eval batch eval_counts reads (`step_inputs` makes it from the data,
    compile_report lowers the step on it): image f32 [B,SH,SW,3] at `image_size` (the labels' size times the
    input scale), label i32 [B,PH,PW] at `label_size`, mask bool [B], and per image its index in the split, its
    true label size (height, width) and its Boundary IoU band width and tolerance in pixels (int32)."""
    def spec(shape, dtype):
        return jax.ShapeDtypeStruct((batch_size, *shape), dtype)

    return {"image": spec((*image_size, 3), jnp.float32), "label": spec(tuple(label_size), jnp.int32),
            "mask": spec((), jnp.bool_), "index": spec((), jnp.int32), "boundary_sizes": spec((2,), jnp.int32),
            "boundary_band_width": spec((), jnp.int32), "boundary_tolerance": spec((), jnp.int32)}


def step_inputs(batch: dict, index_of: Mapping[str, int], boundary_pixels: tuple[int, int] = (0, 0)) -> dict:
    """A NumPy eval batch -> the host arrays of `step_input_specs` (keys and dtypes from there): image, label,
    mask, the index of each image in the split (`index_of` id -> index; -1 for fillers) and the Boundary IoU
    inputs: each image's true label size (height, width) (predictions are made at the labels' resolution, so it
    is also the prediction's), its band width and tolerance in pixels (`boundary_pixels`; 0 = from the
    diagonal)."""
    sizes = np.stack([batch["height"], batch["width"]], -1)
    width, tolerance = (np.full(len(sizes), fixed) if fixed else default(sizes) for fixed, default in
                        zip(boundary_pixels, (metrics.boundary_band_width, metrics.boundary_tolerance)))
    values = {**{key: batch[key] for key in ("image", "label", "mask")},
              "index": [index_of.get(i.decode(), -1) for i in batch["id"]], "boundary_sizes": sizes,
              "boundary_band_width": width, "boundary_tolerance": tolerance}
    specs = step_input_specs(len(sizes), batch["label"].shape[1:3], batch["image"].shape[1:3])
    return {key: np.asarray(values[key], spec.dtype) for key, spec in specs.items()}


def sample_image(image: np.ndarray, label_size: Sequence[int], data_config) -> np.ndarray:
    """A padded, normalised eval image [SH,SW,3] -> uint8 RGB at the labels' padded size (PH, PW) for the plots,
    resized (bilinear) like the logits when the input scale is not 1."""
    from semeda_jax.data import pipeline  # TensorFlow is imported where data is read, not with the eval step

    image = pipeline.denormalize(image, data_config.mean, data_config.std)
    if image.shape[:2] == tuple(label_size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(label_size)[::-1], Image.BILINEAR))


WHEN_ZERO = {"boundary_width": "2% of the image diagonal", "boundary_tolerance": "0.8% of the image diagonal",
             "num_worst_images": "no worst-image galleries"}
# config.eval.f1_groups -> the class groups whose merged F1 the report adds ("" = none).
F1_GROUPS = {"": {}, "helen": metrics.HELEN_F1_GROUPS}
CONFIG_FIELDS = ("trimap_widths", "num_plot_images", "f1_groups", "boundary_width", "boundary_tolerance",
                 "num_worst_images", "inference", "crf", "learn_fusion")  # of config.eval


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.eval (stages.check_config): only CONFIG_FIELDS (inference, crf and learn_fusion are checked by
    inference.py, crf.py and fusion.py); boundary_width, boundary_tolerance and num_worst_images integers
    >= 0 (unset = 0); a known f1_groups."""
    check_fields(config.eval, CONFIG_FIELDS, "config.eval")
    for name in ("boundary_width", "boundary_tolerance", "num_worst_images"):
        value = config.eval.get(name)
        if value is not None and (not is_int(value) or value < 0):
            raise ConfigError(f"config.eval.{name}: expected an integer >= 0 (0 = {WHEN_ZERO[name]}), got {value!r}")
    if config.eval.get("f1_groups", "") not in F1_GROUPS:
        raise ConfigError(f"config.eval.f1_groups: unknown {config.eval.f1_groups!r}; valid: {sorted(F1_GROUPS)}")


def summarize(totals: dict, widths: Sequence[int], class_names: Sequence[str] | None = None,
              f1_groups: Mapping[str, Sequence[int]] | None = None,
              boundary_pixels: tuple[int, int] = (0, 0)) -> dict:
    """Accumulated counts -> the report: mIoU, per-class IoU/F1, accuracies, E-measure, trimap curves, Boundary
    IoU and boundary F (means and per class, with the band width and tolerance `boundary_pixels`, 0 = from the
    diagonal), and the merged F1 of `f1_groups` (e.g. HELEN's brows / eyes / nose / mouth / overall) when
    given."""
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
    for name, score in (("boundary_iou", metrics.boundary_iou), ("boundary_fscore", metrics.boundary_fscore)):
        per_class, mean = score(totals)
        report[name] = float(mean)
        report[f"{name}_per_class"] = {n: float(v) for n, v in zip(names, per_class)}
    report["boundary"] = {"width": boundary_pixels[0] or "2% of diagonal",
                          "tolerance": boundary_pixels[1] or "0.8% of diagonal"}
    report["confusion_matrix"] = np.asarray(totals["cm"]).tolist()
    return report


def worst_images(scores: Sequence[dict], ids: Sequence[str], count: int) -> dict:
    """The per-image outputs of every batch (PER_IMAGE, on the host) -> {"miou": [{"id", "miou"}, ...],
    "boundary_iou": [{"id", "boundary_iou"}, ...]}: the `count` images with the lowest score, lowest first
    (ties in split order); fillers and images without a score (all void) are left out."""
    merged = {key: np.concatenate([np.asarray(s[key]) for s in scores]) for key in PER_IMAGE}
    real = merged["image_index"] >= 0
    index = merged["image_index"][real]
    worst = {}
    for name, key in WORST.items():
        value = merged[key][real].astype(np.float64)
        order = [i for i in np.lexsort((index, value)) if np.isfinite(value[i])][:count]
        worst[name] = [{"id": ids[index[i]], name: float(value[i])} for i in order]
    return worst


@functools.lru_cache(maxsize=4)
def jit_eval_counts(apply_fn, spec: inference.InferenceSpec, output_stride: int, num_classes: int,
                    widths: tuple[int, ...], mesh) -> Callable:
    """eval_counts of `spec`'s predictions jitted for `mesh` (counts and per-image scores replicated, per-image
    maps [B,H,W] sharded as the batch's labels); cached, so the periodic evaluations of one training run compile
    it once. The batch's shardings are its arrays' (parallel.global_batch)."""
    per_image = parallel.batch_sharding(mesh, 3)
    predict_fn = inference.build_predict_fn(spec, apply_fn, output_stride=output_stride)
    return jax.jit(functools.partial(eval_counts, predict_fn=predict_fn, num_classes=num_classes, widths=widths),
                   out_shardings={**{key: parallel.replicated(mesh) for key in COUNTS + PER_IMAGE},
                                  "predictions": per_image, "entropy": per_image})


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a + b rounded, its rounding error), exactly a + b together (Knuth's branch-free TwoSum)."""
    total = a + b
    b_part = total - a
    return total, (a - (total - b_part)) + (b - b_part)


@functools.partial(jax.jit, donate_argnums=0)
def add_counts(totals: dict | None, counts: dict) -> dict:
    """Running totals + one batch's COUNTS, on device and exact: an integer count (>= 0, < 2^31, int32 per
    batch) as uint32 words (low, high) with a carry when `low` wraps, i.e. a 64-bit sum; a float sum as (sum,
    compensation) by TwoSum, i.e. about twice the float's precision. `totals` None: the first batch's."""
    def add(total, count):
        if jnp.issubdtype(count.dtype, jnp.integer):
            count = count.astype(jnp.uint32)
            if total is None:
                return count, jnp.zeros_like(count)
            low = total[0] + count
            return low, total[1] + (low < total[0]).astype(jnp.uint32)
        if total is None:
            return count, jnp.zeros_like(count)
        value, error = _two_sum(total[0], count)
        return value, total[1] + error

    return {key: add(None if totals is None else totals[key], counts[key]) for key in COUNTS}


def host_totals(totals: dict) -> dict:
    """add_counts' totals pulled to the host -> {key: int64 counts / float64 sums}."""
    def value(key):
        first, second = (np.asarray(part) for part in totals[key])
        if np.issubdtype(first.dtype, np.integer):
            return (second.astype(np.int64) << 32) + first.astype(np.int64)
        return first.astype(np.float64) + second.astype(np.float64)

    return {key: value(key) for key in COUNTS}


class _Subset:
    """`reader` restricted to `ids` (what eval_dataset reads of it: ids, paths, decode_label)."""

    def __init__(self, reader, ids: Sequence[str]):
        self.reader, self.ids = reader, list(ids)

    def __getattr__(self, name):
        return getattr(self.reader, name)


def eval_batches(reader, config: ml_collections.ConfigDict, mesh, stage: str, *, ids: Sequence[str] | None = None,
                 inputs: Callable[[dict], dict] = lambda batch: {k: batch[k] for k in ("image", "label", "mask")}):
    """The eval stream of `reader`'s split (data/pipeline.eval_dataset of config.data; its files checked once per
    reader) -> (this process's NumPy batch, the global device batch of `inputs(batch)`, default {"image",
    "label", "mask"}, sharded by parallel.global_batch); Preempted(stage=stage) before the next batch once any
    process got SIGTERM. With `ids`, only those images, each read by every process (so that every process holds
    them all; the split's files were checked)."""
    from semeda_jax.data import pipeline  # TensorFlow is imported where data is read, not with the eval step

    shard = (jax.process_index(), jax.process_count()) if ids is None else (0, 1)
    dataset = pipeline.eval_dataset(reader if ids is None else _Subset(reader, ids),
                                    pad_size=config.data.eval_pad_size,
                                    batch_size=parallel.local_eval_batch_size(config.data.eval_batch_size, mesh),
                                    mean=config.data.mean, std=config.data.std, process_index=shard[0],
                                    process_count=shard[1], input_scale=config.data.input_scale, check=ids is None)
    for batch in dataset.as_numpy_iterator():
        preemption.check_batch(stage)
        yield batch, parallel.global_batch(inputs(batch), mesh)


def evaluate(state, reader, config: ml_collections.ConfigDict, *, num_samples: int = 0, num_worst: int = 0,
             class_names: Sequence[str] | None = None, spec: inference.InferenceSpec | None = None,
             stage: str = "eval") -> dict:
    """Evaluation of `state` (apply_fn, params, batch_stats) on `reader`'s split with the inference `spec`
    (default config.eval.inference) -> report dict; with `num_samples`, also the first `num_samples` images as
    report["samples"] (image, label, prediction, entropy arrays for the plots); with `num_worst`, the
    `num_worst` images of lowest mIoU and of lowest Boundary IoU as report["worst_images"] (ids and scores) and
    their plot arrays as report["worst_panels"] {id: arrays}. `stage` names the pass in Preempted."""
    widths, boundary_pixels = tuple(config.eval.trimap_widths), boundary_widths(config)
    mesh = parallel.make_mesh(config)
    spec = inference.spec_for(config) if spec is None else spec
    step = jit_eval_counts(state.apply_fn, spec, int(config.model.output_stride), config.dataset.num_classes,
                           widths, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    index_of = {image_id: n for n, image_id in enumerate(reader.ids)}
    inputs = functools.partial(step_inputs, index_of=index_of, boundary_pixels=boundary_pixels)

    def outputs(ids=None):
        """(NumPy batch, step outputs) of the split, or of the images `ids` only."""
        for batch, device_batch in eval_batches(reader, config, mesh, stage, ids=ids, inputs=inputs):
            yield batch, step(variables, device_batch)

    totals, samples, scores = None, [], []
    for batch, out in outputs():
        totals = add_counts(totals, {key: out[key] for key in COUNTS})
        if num_worst:
            scores.append({key: out[key] for key in PER_IMAGE})
        wanted = np.flatnonzero(batch["mask"])[:max(num_samples - len(samples), 0)]
        samples += plot_arrays(batch, out, wanted, config.data)
    totals, scores = jax.device_get((totals, scores))
    report = summarize(host_totals(totals), widths, class_names, F1_GROUPS[config.eval.get("f1_groups", "")],
                       boundary_pixels)
    if num_samples:
        report["samples"] = samples
    if num_worst:
        report["worst_images"] = worst_images(scores, reader.ids, num_worst)
        shown = list(dict.fromkeys(entry["id"] for entries in report["worst_images"].values() for entry in entries))
        report["worst_panels"] = {panel["id"]: panel for batch, out in (outputs(shown) if shown else ())
                                  for panel in plot_arrays(batch, out, np.flatnonzero(batch["mask"]), config.data)}
    return report


def plot_arrays(batch: dict, out: dict, rows: Sequence[int], data_config) -> list[dict]:
    """The plot arrays of this process's `rows` of a batch, cropped to each image's size: [{"id", "image" uint8
    [H,W,3], "label", "prediction" int [H,W], "entropy" float [H,W]}] (pulls the rows' batch only when any)."""
    if not len(rows):
        return []
    maps = {key: parallel.host_rows(out[key]) for key in ("predictions", "entropy")}
    panels = []
    for i in rows:
        h, w = int(batch["height"][i]), int(batch["width"][i])
        panels.append({"id": batch["id"][i].decode(),
                       "image": sample_image(batch["image"][i], batch["label"].shape[1:3], data_config)[:h, :w],
                       "label": batch["label"][i, :h, :w], "prediction": maps["predictions"][i, :h, :w],
                       "entropy": maps["entropy"][i, :h, :w]})
    return panels
