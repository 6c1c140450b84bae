"""Datasets and host-side input pipelines (tf.data + NumPy; never imports jax-side code).

    reader = build_reader({"name": "synthetic", "cache_dir": "/tmp/data", "num_classes": 8}, "train")
    reader = build_reader({"name": "voc", "root": ".../VOC2012", "sbd_root": ".../dataset"}, "train_aug")
    ds = train_dataset(reader, crop_size=(96, 96), batch_size=8, seed=0)

`DATASETS` maps a dataset name ("synthetic", "voc", "cityscapes", "helen", "ade20k", "coco_stuff",
"pascal_context", "tfds") to `builder(config, split) ->
reader` (a reader.SegmentationReader), where `config` is any mapping (dict, ml_collections.ConfigDict) with the
keys documented on each builder and declared by it (`dataset_fields`, which stages.check_dataset holds a config
to); `build_reader` also runs the reader's existence check. The pipeline functions are imported lazily so that
the generators and the readers work without loading TensorFlow.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from semeda_jax.data.ade20k import ADE20K_CLASSES, ADE20K_COLORMAP, ADE20KSegmentation
from semeda_jax.data.cityscapes import CITYSCAPES_CLASSES, LABEL_TO_TRAIN_ID, CityscapesSegmentation
from semeda_jax.data.coco_stuff import COCO_STUFF_CLASSES, COCOStuffSegmentation
from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.helen import HELEN_CLASSES, HelenSegmentation
from semeda_jax.data.palette import VOC_COLORMAP, colorize, read_label_png, voc_colormap, write_label_png
from semeda_jax.data.pascal_context import PASCAL_CONTEXT_CLASSES, PascalContextSegmentation
from semeda_jax.data.reader import SegmentationReader, validate_label
from semeda_jax.data.sbd import convert_sbd_labels, read_sbd_mat
from semeda_jax.data.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from semeda_jax.data.synthetic import (ensure_synthetic_voc, generate_scene, synthetic_class_names, void_band,
                                       write_synthetic_voc)
from semeda_jax.data.tfds_reader import TFDSSegmentation
from semeda_jax.data.voc import VOC_CLASSES, VOCSegmentation
from semeda_jax.data.voc_aug import VOCAugSegmentation, train_aug_ids

_PIPELINE = ("train_dataset", "eval_dataset", "denormalize", "num_eval_batches", "scaled_size", "shard_ids",
             "DEFAULT_MEAN", "DEFAULT_STD")
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


def _reads(*keys: str) -> Callable:
    """Declares the config keys a builder reads (dataset_fields: with COMMON_FIELDS, the valid ones)."""
    def declare(builder: Callable) -> Callable:
        builder.fields = keys
        return builder
    return declare


@_reads("root", "cache_dir", "num_train", "num_val", "image_size", "num_classes", "void_width", "seed")
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


def _root(config: Mapping, name: str, what: str) -> str:
    root = _get(config, "root")
    if root is None:
        raise DatasetError(f"dataset {name!r} needs config key 'root' ({what})")
    return root


def _fixed_num_classes(config: Mapping, name: str, num_classes: int) -> None:
    given = _get(config, "num_classes")
    if given is not None and int(given) != num_classes:
        raise DatasetError(f"dataset {name!r} has {num_classes} classes; config key num_classes is {given}")


@_reads("root", "num_classes", "label_dir", "sbd_root", "cache_dir")
def build_voc(config: Mapping, split: str) -> SegmentationReader:
    """Keys: root (.../VOCdevkit/VOC2012, required), num_classes (21), label_dir ("SegmentationClass");
    sbd_root (.../benchmark_RELEASE/dataset) and cache_dir (~/.cache/semeda_jax, for the converted SBD labels)
    for split "train_aug" (VOC + SBD, voc_aug.py). Without sbd_root, "train_aug" reads a ready-made
    ImageSets/Segmentation/train_aug.txt (with label_dir="SegmentationClassAug")."""
    root = _root(config, "voc", "the VOC2012 folder holding JPEGImages/")
    num_classes = int(_get(config, "num_classes", 21))
    reader = VOCSegmentation(root, split, num_classes, label_dir=_get(config, "label_dir", "SegmentationClass"))
    sbd_root = _get(config, "sbd_root")
    if split == VOCAugSegmentation.split_name and sbd_root is not None:
        return VOCAugSegmentation(root, sbd_root, _get(config, "cache_dir", DEFAULT_CACHE_DIR), num_classes,
                                  class_names=reader.class_names)
    if split == VOCAugSegmentation.split_name and not reader.list_path().is_file():
        raise DatasetError(f"dataset 'voc', split 'train_aug': set config key sbd_root to the SBD folder "
                           f"(.../benchmark_RELEASE/dataset holding cls/ and img/); {root} has no ready-made "
                           f"{reader.list_path()}")
    return reader


@_reads("root", "annotation", "num_classes")
def build_cityscapes(config: Mapping, split: str) -> CityscapesSegmentation:
    """Keys: root (the folder holding leftImg8bit/, required), annotation ("gtFine" | "gtCoarse"), num_classes
    (19 if set). Splits: train, val, test, train_extra, or "a+b" (cityscapes.py)."""
    _fixed_num_classes(config, "cityscapes", len(CITYSCAPES_CLASSES))
    return CityscapesSegmentation(_root(config, "cityscapes", "the folder holding leftImg8bit/ and gtFine/"),
                                  split, annotation=_get(config, "annotation", "gtFine"))


@_reads("root", "num_classes")
def build_helen(config: Mapping, split: str) -> HelenSegmentation:
    """Keys: root (the folder holding images/ and labels/, required), num_classes (11 if set). Splits: train,
    test, val, or any list file name (helen.py)."""
    _fixed_num_classes(config, "helen", len(HELEN_CLASSES))
    return HelenSegmentation(_root(config, "helen", "the folder holding images/ and labels/"), split)


@_reads("root", "num_classes")
def build_ade20k(config: Mapping, split: str) -> ADE20KSegmentation:
    """Keys: root (ADEChallengeData2016, holding images/ and annotations/, required), num_classes (150 if set).
    Splits: training, validation (ade20k.py)."""
    _fixed_num_classes(config, "ade20k", len(ADE20K_CLASSES))
    return ADE20KSegmentation(_root(config, "ade20k", "the ADEChallengeData2016 folder holding images/"), split)


@_reads("root", "label_format", "num_classes")
def build_coco_stuff(config: Mapping, split: str) -> COCOStuffSegmentation:
    """Keys: root (the folder holding images/ and annotations/, required), label_format ("auto" |
    "stuffthingmaps" | "trainids"), num_classes (171 if set). Splits: train2017, val2017 (coco_stuff.py)."""
    _fixed_num_classes(config, "coco_stuff", len(COCO_STUFF_CLASSES))
    return COCOStuffSegmentation(_root(config, "coco_stuff", "the folder holding images/ and annotations/"), split,
                                 label_format=_get(config, "label_format", "auto"))


@_reads("root", "num_classes")
def build_pascal_context(config: Mapping, split: str) -> PascalContextSegmentation:
    """Keys: root (.../VOCdevkit/VOC2010 holding JPEGImages/ and SegmentationClassContext/, required),
    num_classes (60: background a class, default; 59: background void). Splits: train, val (pascal_context.py)."""
    root = _root(config, "pascal_context", "the VOC2010 folder holding JPEGImages/ and SegmentationClassContext/")
    return PascalContextSegmentation(root, split, int(_get(config, "num_classes", 60)))


@_reads("tfds_name", "num_classes", "data_dir", "image_key", "label_key", "label_offset", "void_values",
        "class_names", "cache_dir")
def build_tfds(config: Mapping, split: str) -> TFDSSegmentation:
    """Keys: tfds_name (required), num_classes (required), data_dir (TFDS's default if unset), image_key
    ("image"), label_key ("segmentation_mask"), label_offset (0), void_values ((255,)), class_names (unset =
    none), cache_dir (~/.cache/semeda_jax, for the export). Splits: TFDS split names, slices too (tfds_reader.py)."""
    name = _get(config, "tfds_name")
    if name is None:
        raise DatasetError("dataset 'tfds' needs config key 'tfds_name' (a TFDS dataset name, e.g. scene_parse150)")
    if _get(config, "num_classes") is None:
        raise DatasetError(f"dataset 'tfds' ({name}) needs config key 'num_classes'")
    return TFDSSegmentation(name, split, int(_get(config, "num_classes")),
                            _get(config, "cache_dir", DEFAULT_CACHE_DIR), data_dir=_get(config, "data_dir"),
                            image_key=_get(config, "image_key", "image"),
                            label_key=_get(config, "label_key", "segmentation_mask"),
                            label_offset=int(_get(config, "label_offset", 0)),
                            void_values=tuple(_get(config, "void_values", (IGNORE_LABEL,))),
                            class_names=_get(config, "class_names"))



DATASETS: dict[str, Callable[[Mapping, str], SegmentationReader]] = {
    "synthetic": build_synthetic,
    "voc": build_voc,
    "cityscapes": build_cityscapes,
    "helen": build_helen,
    "ade20k": build_ade20k,
    "coco_stuff": build_coco_stuff,
    "pascal_context": build_pascal_context,
    "tfds": build_tfds,
}


def get_dataset_builder(name: str) -> Callable[[Mapping, str], SegmentationReader]:
    """DATASETS[name], or a KeyError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}") from None


COMMON_FIELDS = ("name", "num_classes", "train_split", "val_split")  # read for every dataset (the stages, the model)


def dataset_fields(name: str) -> tuple[str, ...]:
    """The config.dataset keys some code reads for dataset `name` (COMMON_FIELDS + its builder's)."""
    return tuple(dict.fromkeys((*COMMON_FIELDS, *get_dataset_builder(name).fields)))


def build_reader(config: Mapping, split: str, check: bool = True) -> SegmentationReader:
    """The reader of `config["name"]` for `split` (e.g. "train", "val").

    With `check` (the default) it runs `reader.check()`, so a missing root, list, image or label fails here,
    before any compilation, with a DatasetError naming the root, the file and the expected layout (the VOC +
    SBD "train_aug" check also converts the SBD labels the first time).
    """
    reader = get_dataset_builder(_get(config, "name"))(config, split)
    return reader.check() if check else reader


__all__ = [
    "IGNORE_LABEL", "DatasetError", "VOC_COLORMAP", "voc_colormap", "colorize", "read_label_png", "write_label_png",
    "generate_scene", "write_synthetic_voc", "ensure_synthetic_voc", "synthetic_class_names", "void_band",
    "VOC_CLASSES", "VOCSegmentation", "validate_label", "DATASETS", "get_dataset_builder", "build_reader",
    "dataset_fields", "build_synthetic", "build_voc", "build_cityscapes", "build_helen",
    "SegmentationReader", "VOCAugSegmentation", "train_aug_ids", "convert_sbd_labels", "read_sbd_mat",
    "CITYSCAPES_CLASSES", "LABEL_TO_TRAIN_ID", "CityscapesSegmentation", "HELEN_CLASSES", "HelenSegmentation",
    "ADE20K_CLASSES", "ADE20K_COLORMAP", "ADE20KSegmentation", "COCO_STUFF_CLASSES", "COCOStuffSegmentation",
    "PASCAL_CONTEXT_CLASSES", "PascalContextSegmentation", "TFDSSegmentation", "build_ade20k", "build_coco_stuff",
    "build_pascal_context", "build_tfds", *_PIPELINE,
]

