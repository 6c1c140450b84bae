"""Reader of the Pascal VOC segmentation layout (real VOC 2012, VOC+SBD "aug" labels, and the synthetic data).

    <root>/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png           palette ("P") or grayscale ("L") PNG of class indices, 255 = void
      ImageSets/Segmentation/<split>.txt   one id per line

For VOC 2012 `root` is `.../VOCdevkit/VOC2012`; for the SBD-augmented training set pass
`label_dir="SegmentationClassAug"` and put `train_aug.txt` in the list folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.palette import read_label_png

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def validate_label(label: np.ndarray, num_classes: int, path: str | os.PathLike) -> np.ndarray:
    """Raise DatasetError naming `path` and the bad values unless uint8 `label` holds only [0, C) and 255."""
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
    bad = [v for v in range(num_classes, 256) if v != IGNORE_LABEL and counts[v]]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise DatasetError(
            f"{path}: label values {{{shown}}} are outside [0, {num_classes}) and not the void label "
            f"{IGNORE_LABEL} (is num_classes={num_classes} right for this dataset?)")
    return label


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header only (no decoding); DatasetError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e})") from None
    return h, w


class VOCSegmentation:
    """The ids, file paths and (image, label) arrays of one split of a VOC-layout dataset.

    Construction does no I/O; `check()` verifies the layout (existence only, cheap enough to run before any
    compilation) and raises DatasetError naming the root, the missing file and the expected tree.
    `load(id)` -> (image uint8 [H,W,3], label uint8 [H,W]) and validates the label values.
    """

    def __init__(self, root: str | os.PathLike, split: str, num_classes: int = 21, *,
                 label_dir: str = "SegmentationClass", image_dir: str = "JPEGImages", image_ext: str = ".jpg",
                 list_dir: str = "ImageSets/Segmentation", class_names: Sequence[str] | None = None):
        self.root = Path(root).expanduser()
        self.split = split
        self.num_classes = int(num_classes)
        self.label_dir, self.image_dir, self.image_ext, self.list_dir = label_dir, image_dir, image_ext, list_dir
        if class_names is None and self.num_classes == len(VOC_CLASSES):
            class_names = VOC_CLASSES
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries, num_classes is {self.num_classes}")
        self.class_names = tuple(class_names) if class_names is not None else None
        self._ids: list[str] | None = None

    def __repr__(self) -> str:
        return f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, num_classes={self.num_classes})"

    @property
    def list_path(self) -> Path:
        return self.root / self.list_dir / f"{self.split}.txt"

    def expected_layout(self) -> str:
        return (f"expected layout:\n"
                f"  {self.root}/\n"
                f"    {self.image_dir}/<id>{self.image_ext}\n"
                f"    {self.label_dir}/<id>.png   (palette or grayscale PNG of class indices, 255 = void)\n"
                f"    {self.list_dir}/{self.split}.txt   (one id per line)")

    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"dataset at {self.root} (split {self.split!r}): {what}\n{self.expected_layout()}")

    @property
    def ids(self) -> list[str]:
        """The split's ids in list order (read once)."""
        if self._ids is None:
            if not self.root.is_dir():
                raise self._error(f"root folder {self.root} does not exist")
            try:
                text = self.list_path.read_text()
            except OSError:
                raise self._error(f"split list {self.list_path} is missing") from None
            self._ids = [line.split()[0] for line in text.splitlines() if line.strip()]
        return self._ids

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> str:
        return str(self.root / self.image_dir / f"{image_id}{self.image_ext}")

    def label_path(self, image_id: str) -> str:
        return str(self.root / self.label_dir / f"{image_id}.png")

    def check(self) -> "VOCSegmentation":
        """Fail fast with DatasetError on a missing root, split list, image or label; returns self."""
        ids = self.ids
        if not ids:
            raise self._error(f"split list {self.list_path} is empty")
        for image_id in ids:
            for path, kind in ((self.image_path(image_id), "image"), (self.label_path(image_id), "label")):
                if not os.path.isfile(path):
                    raise self._error(f"id {image_id!r} listed in {self.list_path} has no {kind} file {path}")
        return self

    def load_label(self, image_id: str) -> np.ndarray:
        path = self.label_path(image_id)
        return validate_label(read_label_png(path), self.num_classes, path)

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H,W,3], label uint8 [H,W]); DatasetError naming the file on bad values or sizes."""
        path = self.image_path(image_id)
        try:
            with Image.open(path) as im:
                image = np.array(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise DatasetError(f"{path}: cannot read the image ({e})") from None
        label = self.load_label(image_id)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{self.label_path(image_id)}: label size {label.shape} differs from the image "
                               f"{path} size {image.shape[:2]}")
        return image, label

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) read from the image header only."""
        return image_hw(self.image_path(image_id))
