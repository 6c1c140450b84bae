"""Reader of the Pascal VOC segmentation layout (real VOC 2012 train/val, and the synthetic data).

    <root>/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png           palette ("P") or grayscale ("L") PNG of class indices, 255 = void
      ImageSets/Segmentation/<split>.txt   one id per line

For VOC 2012 `root` is `.../VOCdevkit/VOC2012`. The SBD-augmented training set ("train_aug") is built from VOC
and SBD by voc_aug.py; a ready-made one (`SegmentationClassAug/` + `train_aug.txt`) reads with
`label_dir="SegmentationClassAug"`. A split "a+b" is the concatenation of the lists a.txt and b.txt.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from semeda_jax.data.reader import SegmentationReader, image_hw, read_id_list, validate_label

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

__all__ = ["VOC_CLASSES", "VOCSegmentation", "image_hw", "validate_label"]


class VOCSegmentation(SegmentationReader):
    """One split of a list-based layout: `root/list_dir/<split>.txt`, `root/image_dir/<id><image_ext>`,
    `root/label_dir/<id>.png` (class-index PNGs). Also serves HELEN (helen.py) with other folder names.

    `load(id)` -> (image uint8 [H,W,3], label uint8 [H,W]) and validates the label values.
    """

    def __init__(self, root: str | os.PathLike, split: str, num_classes: int = 21, *,
                 label_dir: str = "SegmentationClass", image_dir: str = "JPEGImages", image_ext: str = ".jpg",
                 list_dir: str = "ImageSets/Segmentation", class_names: Sequence[str] | None = None):
        if class_names is None and int(num_classes) == len(VOC_CLASSES):
            class_names = VOC_CLASSES
        super().__init__(root, split, num_classes, class_names)
        self.label_dir, self.image_dir, self.image_ext, self.list_dir = label_dir, image_dir, image_ext, list_dir

    def list_path(self, split: str | None = None) -> Path:
        """The list file of `split` (default: this reader's; one part of an "a+b" split)."""
        return self.root / self.list_dir / f"{split or self.split}.txt"

    def _list_parts(self) -> list[str]:
        """The list files (names without .txt) this split concatenates."""
        return self.split.split("+")

    def expected_layout(self) -> str:
        lists = ", ".join(str(Path(self.list_dir) / f"{part}.txt") for part in self._list_parts())
        return (f"expected layout: {self.root}/ holding {self.image_dir}/<id>{self.image_ext}, "
                f"{self.label_dir}/<id>.png (palette or grayscale PNG of class indices, 255 = void) and "
                f"{lists} (one id per line)")

    def _read_ids(self) -> list[str]:
        self._require_root()
        ids = []
        for part in self._list_parts():
            path = self.list_path(part)
            if not path.is_file():
                raise self._error(f"split list {path} is missing")
            ids += read_id_list(path)
        return ids

    def image_path(self, image_id: str) -> str:
        return str(self.root / self.image_dir / f"{image_id}{self.image_ext}")

    def label_path(self, image_id: str) -> str:
        return str(self.root / self.label_dir / f"{image_id}.png")
