"""The export stage's artifacts: the eval-time model (config.eval.inference: mode, views and fusion, CRF
post-processing, exactly what eval and predict run) with its weights, for serving without this package.

    WORKDIR/export/model.jax_exported  jax.export (StableHLO, `jax.export.deserialize`), for config.export.platforms:
                                       normalised images float32 [b,SH,SW,3] -> probabilities float32 [b,H,W,C]
    WORKDIR/export/saved_model/        TensorFlow SavedModel (jax2tf), the same model on the same platforms:
                                       "serving_default": RGB uint8 [b,h,w,3] (h <= H, w <= W) ->
                                           {"probabilities": float32 [b,h,w,C], "mask": int32 [b,h,w]}
                                       "normalized": normalised float32 [b,SH,SW,3] -> {"probabilities": [b,H,W,C]}
    WORKDIR/export/manifest.json       shapes, dtypes, mean / std, input scale, class names, inference settings,
                                       platforms, versions

The batch size b is symbolic (any b >= 1 with one artifact); the size is fixed, because the networks do not
trace with a symbolic height and width: (H, W) = config.export.pad_size (unset: config.data.eval_pad_size) and
(SH, SW) = its size at config.data.input_scale. A caller of the float entry points prepares images as the eval
stage does: an RGB image of (h, w) <= (H, W) resized by the input scale (bilinear, antialiased), normalised
((x - mean) / std on 0-255), padded bottom / right with 0 (the mean colour) to (SH, SW); its probabilities are
[:, :h, :w] of the output. "serving_default" does all of that in the graph (with the eval pipeline's own resize
and normalisation), so a client sends raw RGB and gets results at its images' size. Both artifacts hold the
weights as constants (fine below protobuf's 2 GB) and the model in eval mode (batch norm uses its statistics,
so an image's output does not depend on the others in the batch).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from semeda_jax.data import pipeline
from semeda_jax.validation import ConfigError, check_fields, check_pair

CONFIG_FIELDS = ("pad_size", "platforms")  # of config.export
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
JAX_FILE, SAVED_MODEL_DIR, MANIFEST_FILE = "model.jax_exported", "saved_model", "manifest.json"


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.export (stages.check_config): only CONFIG_FIELDS; pad_size unset or (H, W) >= 1; platforms a
    non-empty list of distinct names of PLATFORMS."""
    check_fields(config.export, CONFIG_FIELDS, "config.export")
    if config.export.pad_size is not None:
        check_pair(config, "export.pad_size")
    platforms = tuple(config.export.platforms)
    if not platforms or len(set(platforms)) != len(platforms) or not set(platforms) <= set(PLATFORMS):
        raise ConfigError(f"config.export.platforms: expected distinct names of {list(PLATFORMS)}, got "
                          f"{platforms!r}")


def sizes(config: ml_collections.ConfigDict) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W) of the probabilities, (SH, SW) of the network's input): config.export.pad_size (unset:
    config.data.eval_pad_size) and its size at config.data.input_scale."""
    pad_size = tuple(int(n) for n in (config.export.pad_size or config.data.eval_pad_size))
    return pad_size, pipeline.scaled_size(pad_size, config.data.input_scale)


def model_fn(predict_fn: Callable, variables, pad_size: Sequence[int]) -> Callable[[jax.Array], jax.Array]:
    """images [b,SH,SW,3] -> probabilities [b,H,W,C] float32 of `predict_fn(variables, images, size)` (the
    inference seam) with the weights as host constants."""
    variables = jax.device_get(variables)
    return lambda images: predict_fn(variables, images, tuple(pad_size))


def export_jax(fn: Callable, input_size: Sequence[int], platforms: Sequence[str]) -> jax.export.Exported:
    """jax.export of `fn` on float32 [b,SH,SW,3] with a symbolic batch b, lowered for `platforms`."""
    shape = jax.export.symbolic_shape(f"b, {input_size[0]}, {input_size[1]}, 3")
    return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(jax.ShapeDtypeStruct(shape, jnp.float32))


def write_saved_model(fn: Callable, path: str, *, pad_size: Sequence[int], input_size: Sequence[int],
                      input_scale: float, mean: Sequence[float], std: Sequence[float],
                      platforms: Sequence[str]) -> None:
    """`fn` through jax2tf (symbolic batch, no gradient) as a SavedModel at `path` with the signatures of the
    module docstring ("serving_default" prepares the images as eval_dataset does)."""
    import tensorflow as tf
    from jax.experimental import jax2tf  # loaded only when this stage runs

    model = jax2tf.convert(fn, polymorphic_shapes=[f"(b, {input_size[0]}, {input_size[1]}, 3)"],
                           with_gradient=False, native_serialization_platforms=tuple(platforms))

    def normalized(images):
        return {"probabilities": model(images)}

    def serve(images):
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        fits = tf.logical_and(height <= pad_size[0], width <= pad_size[1])
        with tf.control_dependencies([tf.debugging.Assert(fits, [
                f"images larger than the export size {tuple(pad_size)} (config.export.pad_size): (h, w) =",
                height, width])]):
            pixels = tf.cast(images, tf.float32)
        scaled_h, scaled_w = height, width
        if input_scale != 1.0:
            scale = tf.constant(input_scale, tf.float64)
            scaled_h, scaled_w = pipeline.scaled_dim(height, scale), pipeline.scaled_dim(width, scale)
            pixels = tf.image.resize(pixels, [scaled_h, scaled_w], method="bilinear", antialias=True)
        pixels = tf.pad(pipeline.normalize(pixels, mean, std),
                        [[0, 0], [0, input_size[0] - scaled_h], [0, input_size[1] - scaled_w], [0, 0]])
        probabilities = model(tf.ensure_shape(pixels, [None, *input_size, 3]))[:, :height, :width]
        return {"probabilities": probabilities, "mask": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    module = tf.Module()
    module.serve = tf.function(serve, autograph=False,
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    module.normalized = tf.function(normalized, autograph=False, input_signature=[
        tf.TensorSpec([None, *input_size, 3], tf.float32, name="images")])
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve, "normalized": module.normalized})


def manifest(config: ml_collections.ConfigDict, spec, class_names: Sequence[str] | None) -> dict:
    """The JSON record of an export (JSON values): what a caller needs to prepare the input and read the output."""
    import tensorflow as tf

    pad_size, input_size = sizes(config)
    num_classes = int(config.dataset.num_classes)
    settings = dataclasses.asdict(spec)
    settings["postprocess_options"] = dict(spec.postprocess_options)
    record = {
        "format": "semeda_jax.export",
        "files": {"jax_exported": JAX_FILE, "saved_model": SAVED_MODEL_DIR},
        "platforms": list(config.export.platforms),
        "input": {"shape": ["b", *input_size, 3], "dtype": "float32", "layout": "NHWC, RGB",
                  "mean": list(config.data.mean), "std": list(config.data.std), "input_scale": config.data.input_scale,
                  "prepare": "RGB 0-255 image (h, w) <= pad_size, resized by input_scale (bilinear, antialiased), "
                             "(x - mean) / std, padded bottom / right with 0 to the input shape"},
        "output": {"name": "probabilities", "shape": ["b", *pad_size, num_classes], "dtype": "float32",
                   "meaning": "softmax over classes; an image (h, w) is [:, :h, :w]"},
        "pad_size": list(pad_size),
        "serving_default": {"inputs": {"images": ["b", "h", "w", 3, "uint8"]},
                            "outputs": {"probabilities": ["b", "h", "w", num_classes, "float32"],
                                        "mask": ["b", "h", "w", "int32"]}},
        "num_classes": num_classes,
        "class_names": None if class_names is None else list(class_names),
        "model": config.model.name,
        "inference": settings,
        "versions": {"jax": jax.__version__, "tensorflow": tf.__version__},
    }
    return json.loads(json.dumps(record))  # the values as the file holds them (tuples as lists)


def export_model(predict_fn: Callable, variables, config: ml_collections.ConfigDict, spec, out_dir: str, *,
                 class_names: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Write the artifacts of the module docstring for `predict_fn(variables, images, size)` (the inference of
    `spec`, config.eval.inference's) into `out_dir`, replacing an earlier export only once all are written
    (built in `out_dir`.partial); returns the manifest."""
    pad_size, input_size = sizes(config)
    platforms = tuple(config.export.platforms)
    fn = model_fn(predict_fn, variables, pad_size)
    staging = out_dir.rstrip(os.sep) + ".partial"
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's
    os.makedirs(staging)
    try:
        exported = export_jax(fn, input_size, platforms)
        with open(os.path.join(staging, JAX_FILE), "wb") as f:
            f.write(exported.serialize())
        log(f"[export] jax.export for {platforms}: [b,{input_size[0]},{input_size[1]},3] -> "
            f"{exported.out_avals[0].str_short()}")
        write_saved_model(fn, os.path.join(staging, SAVED_MODEL_DIR), pad_size=pad_size, input_size=input_size,
                          input_scale=float(config.data.input_scale), mean=config.data.mean, std=config.data.std,
                          platforms=platforms)
        record = manifest(config, spec, class_names)
        with open(os.path.join(staging, MANIFEST_FILE), "w") as f:
            json.dump(record, f, indent=1)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a failure: the earlier export stays as it was
    log(f"[export] {JAX_FILE}, {SAVED_MODEL_DIR}/ (TF SavedModel) and {MANIFEST_FILE} in {out_dir}")
    return record
