"""Datasets and host-side input pipelines (tf.data + NumPy; never imports jax-side code).

    reader = build_reader({"name": "synthetic", "cache_dir": "/tmp/data", "num_classes": 8}, "train")
    ds = train_dataset(reader, crop_size=(96, 96), batch_size=8, seed=0)

`DATASETS` maps a dataset name to `builder(config, split) -> reader`, where `config` is any mapping (dict,
ml_collections.ConfigDict) with the keys documented on each builder. The pipeline functions are imported
lazily so that the generator and the reader work without loading TensorFlow.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.palette import VOC_COLORMAP, colorize, colourise, read_label_png, voc_colormap, write_label_png
from semeda_jax.data.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from semeda_jax.data.synthetic import (ensure_synthetic_voc, generate_scene, synthetic_class_names, void_band,
                                       write_synthetic_voc)
from semeda_jax.data.voc import VOC_CLASSES, VOCSegmentation, validate_label

_PIPELINE = ("train_dataset", "eval_dataset", "denormalize", "num_eval_batches", "shard_ids", "DEFAULT_MEAN",
             "DEFAULT_STD")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "semeda_jax")


def __getattr__(name: str) -> Any:  # lazy: `from semeda_jax.data import train_dataset` imports TensorFlow
    if name in _PIPELINE:
        from semeda_jax.data import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get(config: Mapping, key: str, default: Any = None) -> Any:
    try:
        value = config[key]
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def build_synthetic(config: Mapping, split: str) -> VOCSegmentation:
    """Keys: root (explicit folder) or cache_dir (default ~/.cache/semeda_jax; a parameter-hash sub-folder),
    num_train, num_val, image_size, num_classes, void_width, seed (write_synthetic_voc's defaults)."""
    params = {k: _get(config, k) for k in ("num_train", "num_val", "image_size", "num_classes", "void_width",
                                           "seed")}
    params = {k: v for k, v in params.items() if v is not None}
    if _get(config, "root") is not None:
        root = write_synthetic_voc(_get(config, "root"), **params)
    else:
        root = ensure_synthetic_voc(_get(config, "cache_dir", DEFAULT_CACHE_DIR), **params)
    num_classes = int(params.get("num_classes", SYNTHETIC_DEFAULTS["num_classes"]))
    return VOCSegmentation(root, split, num_classes, class_names=synthetic_class_names(num_classes))


def build_voc(config: Mapping, split: str) -> VOCSegmentation:
    """Keys: root (.../VOCdevkit/VOC2012, required), num_classes (21), label_dir ("SegmentationClass";
    "SegmentationClassAug" for SBD-augmented labels)."""
    root = _get(config, "root")
    if root is None:
        raise DatasetError("dataset 'voc' needs config key 'root' (the VOC2012 folder holding JPEGImages/)")
    return VOCSegmentation(root, split, int(_get(config, "num_classes", 21)),
                           label_dir=_get(config, "label_dir", "SegmentationClass"))


DATASETS: dict[str, Callable[[Mapping, str], VOCSegmentation]] = {
    "synthetic": build_synthetic,
    "voc": build_voc,
}


def get_dataset_builder(name: str) -> Callable[[Mapping, str], VOCSegmentation]:
    """DATASETS[name], or a KeyError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}") from None


def build_reader(config: Mapping, split: str):
    """The reader of `config["name"]` for `split` (e.g. "train", "val")."""
    return get_dataset_builder(_get(config, "name"))(config, split)


__all__ = [
    "IGNORE_LABEL", "DatasetError", "VOC_COLORMAP", "voc_colormap", "colorize", "colourise", "read_label_png",
    "write_label_png", "generate_scene", "write_synthetic_voc", "ensure_synthetic_voc", "synthetic_class_names",
    "void_band", "VOC_CLASSES", "VOCSegmentation", "validate_label", "DATASETS", "get_dataset_builder",
    "build_reader", "build_synthetic", "build_voc", *_PIPELINE,
]
