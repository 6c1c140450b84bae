"""Any TensorFlow Datasets (TFDS) dataset with an image and a class-index mask, by name.

    build_reader({"name": "tfds", "tfds_name": "scene_parse150", "image_key": "image", "label_key": "annotation",
                  "label_offset": -1, "void_values": (0, 255), "num_classes": 150}, "train")

Read order (the decision): a split is exported ONCE to files, then read like a folder dataset. The export reads
the prepared TFDS split (`as_dataset`, shuffle_files=False) and writes every example under
`<cache_dir>/tfds/<name>/<version>/<split>-<hash>/`: images/<tfds_id>.<jpg|png> (the encoded bytes as stored, no
re-encoding), labels/<tfds_id>.png (the mask's raw values, 8-bit grayscale) and, last, index.json. The ids are
the examples' tfds_id ("<file>__<index>", TFDS's own stable name) sorted, so the order does not depend on file
interleaving and every process of a multi-host run derives the same list. From there the tf.data pipeline is
the folder readers' own (pipeline.py, unchanged): the same augmentation, padding and per-process sharding, and a
training stream that is a pure function of (seed, step), resumed exactly with start_step. The cost is one pass
over the split and its size on disk, once; later runs read index.json only. Every file is written to a
temporary name and renamed, so an interrupted export leaves no partial file and is redone.

Labels: `decode_label` maps a raw value v to v + label_offset; `void_values` (raw) become 255; a value landing
outside [0, num_classes) is an error naming the file. A mask feature of shape [H,W], [H,W,1] or [H,W,3] with
equal channels (how TFDS stores an 8-bit PNG as Image) is accepted. TensorFlow Datasets is imported on first use.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.palette import read_label_png, write_label_png
from semeda_jax.data.reader import SegmentationReader, map_label, shift_table

INDEX_FILE = "index.json"
JPEG_MAGIC = b"\xff\xd8"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _write_atomic(path: Path, write) -> None:
    """`write(temporary path)`, then rename it to `path` (a reader never sees a partial file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _mask_2d(mask: np.ndarray, where: str) -> np.ndarray:
    """[H,W], [H,W,1] or [H,W,3] with equal channels, integer 0..255 -> uint8 [H,W]; DatasetError otherwise."""
    if mask.ndim == 3 and mask.shape[-1] in (1, 3) and (mask == mask[..., :1]).all():
        mask = mask[..., 0]
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise DatasetError(f"{where}: expected a class-index mask [H,W] (or [H,W,1|3] with equal channels), got "
                           f"shape {mask.shape} dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DatasetError(f"{where}: mask values [{mask.min()}, {mask.max()}] do not fit in 8 bits")
    return mask.astype(np.uint8)


class TFDSSegmentation(SegmentationReader):
    """One split of TFDS dataset `tfds_name`, exported once to `cache_dir` (module docstring)."""

    def __init__(self, tfds_name: str, split: str, num_classes: int, cache_dir: str | os.PathLike, *,
                 data_dir: str | None = None, image_key: str = "image", label_key: str = "segmentation_mask",
                 label_offset: int = 0, void_values: Sequence[int] = (IGNORE_LABEL,),
                 class_names: Sequence[str] | None = None):
        super().__init__(Path(cache_dir).expanduser() / "tfds" / tfds_name, split, num_classes, class_names)
        self.tfds_name, self.data_dir = tfds_name, data_dir
        self.image_key, self.label_key = image_key, label_key
        self.label_offset, self.void_values = int(label_offset), tuple(int(v) for v in void_values)
        self.table = shift_table(self.num_classes, self.label_offset, self.void_values)
        self.folder: Path | None = None  # the export of this split, known once the builder is read
        self._images: dict[str, str] = {}

    def expected_layout(self) -> str:
        return (f"expected: the dataset prepared (`tfds build {self.tfds_name}`) with a split {self.split!r} and "
                f"features {self.image_key!r} (Image) and {self.label_key!r} (class-index mask)")

    def _error(self, what: str) -> DatasetError:
        where = f" in {self.data_dir}" if self.data_dir else ""
        return DatasetError(f"TFDS dataset {self.tfds_name!r}{where} (split {self.split!r}): {what}; "
                            f"{self.expected_layout()}")

    def _builder(self):
        import tensorflow_datasets as tfds

        try:
            return tfds.builder(self.tfds_name, data_dir=self.data_dir)
        except Exception as e:  # noqa: BLE001 -- DatasetNotFoundError, and registration errors of its module
            raise DatasetError(f"tfds_name {self.tfds_name!r}: not a TFDS dataset ({_first_line(e)})") from None

    def _read_ids(self) -> list[str]:
        builder = self._builder()
        key = hashlib.sha1(f"{builder.data_dir}|{self.split}".encode()).hexdigest()[:10]
        safe_split = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.split)
        self.folder = self.root / str(builder.info.version) / f"{safe_split}-{key}"
        index = self.folder / INDEX_FILE
        if not index.is_file():
            self._export(builder)
        self._images = json.loads(index.read_text())["images"]
        return sorted(self._images)

    def _export(self, builder) -> None:
        import tensorflow_datasets as tfds

        features = builder.info.features
        for key in (self.image_key, self.label_key):
            if key not in features:
                raise self._error(f"feature {key!r} not found; the features are {sorted(features.keys())}")
        if not isinstance(features[self.image_key], tfds.features.Image):
            raise self._error(f"feature {self.image_key!r} is a {type(features[self.image_key]).__name__}, not an "
                              f"Image")
        try:
            ds = builder.as_dataset(split=self.split, shuffle_files=False,
                                    decoders={self.image_key: tfds.decode.SkipDecoding()},
                                    read_config=tfds.ReadConfig(add_tfds_id=True))
        except AssertionError:  # TFDS's "could not find data" of an unprepared dataset
            raise DatasetError(
                f"TFDS dataset {self.tfds_name!r} is not prepared in {builder.data_dir}: run `tfds build "
                f"{self.tfds_name} --data_dir={builder.data_dir_root}` (add "
                f"--manual_dir=<folder with the downloaded files> for a dataset that needs a manual download)"
            ) from None
        except (ValueError, KeyError) as e:  # an unknown split name or a bad slice
            raise self._error(_first_line(e)) from None
        for folder in ("images", "labels"):
            (self.folder / folder).mkdir(parents=True, exist_ok=True)
        print(f"[data] exporting TFDS {self.tfds_name}:{self.split} to {self.folder} (once)", flush=True)
        images = {}
        for example in ds.as_numpy_iterator():
            image_id = example["tfds_id"].decode()
            encoded = example[self.image_key]
            images[image_id] = image_id + (".jpg" if encoded[:2] == JPEG_MAGIC else ".png")
            label = _mask_2d(example[self.label_key], f"TFDS {self.tfds_name}:{self.split} {image_id}")
            _write_atomic(self.folder / "images" / images[image_id], lambda tmp: Path(tmp).write_bytes(encoded))
            _write_atomic(self.folder / "labels" / f"{image_id}.png", lambda tmp: write_label_png(tmp, label))
        if not images:
            raise self._error("the split has no examples")
        _write_atomic(self.folder / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(
            {"tfds_name": self.tfds_name, "split": self.split, "version": str(builder.info.version),
             "images": images})))

    def image_path(self, image_id: str) -> str:
        return str(self.folder / "images" / self._images[image_id])

    def label_path(self, image_id: str) -> str:
        return str(self.folder / "labels" / f"{image_id}.png")

    def decode_label(self, path: str | os.PathLike) -> np.ndarray:
        """Raw mask values -> classes uint8 [H,W] (offset, void); DatasetError naming the file otherwise."""
        return map_label(read_label_png(path), self.table, path,
                         f"raw values v with v {self.label_offset:+d} in [0, {self.num_classes}), or void "
                         f"{list(self.void_values)}")
