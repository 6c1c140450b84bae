"""HELEN face parsing (Smith et al., CVPR 2013 labels): 11 classes, 2,000 training and 330 test images.

Two layouts are read, per id (they may even be mixed):

    <root>/                                  the common preprocessed layout
      images/<id>.jpg
      labels/<id>.png                        class-index PNG ("L" or "P"), values 0..10
      train.txt, test.txt [, val.txt]        one id per line (2,000 / 330 ids)

    <root>/                                  Smith et al.'s release (SmithCVPR2013_dataset_resized)
      images/<id>.jpg
      labels/<id>/<id>_lbl00.png .. _lbl10.png   one 8-bit soft probability map per class: label = argmax
      exemplars.txt, tuning.txt, testing.txt     "<index> , <id>" per line (2,000 / 230 / 100 ids)

A split names its list file(s) ("a+b" concatenates). Where `train.txt` / `test.txt` are absent, split "train"
reads exemplars.txt and "test" reads tuning.txt + testing.txt: the 330 = 230 + 100 test images of SEMEDA
(SPEC.md). Ids like "100032540_1" name the image and its label.
"""
from __future__ import annotations

import os

import numpy as np

from semeda_jax.data.errors import DatasetError
from semeda_jax.data.palette import read_label_png
from semeda_jax.data.voc import VOCSegmentation

HELEN_CLASSES = ("background", "face skin", "left eyebrow", "right eyebrow", "left eye", "right eye", "nose",
                 "upper lip", "inner mouth", "lower lip", "hair")
SMITH_SPLITS = {"train": "exemplars", "test": "tuning+testing"}  # used when <split>.txt is absent


class HelenSegmentation(VOCSegmentation):
    """One split of HELEN in either layout (module docstring); `decode_label` takes a PNG or a soft-map folder."""

    def __init__(self, root: str | os.PathLike, split: str):
        super().__init__(root, split, len(HELEN_CLASSES), label_dir="labels", image_dir="images",
                         image_ext=".jpg", list_dir=".", class_names=HELEN_CLASSES)

    def _list_parts(self) -> list[str]:
        if self.split in SMITH_SPLITS and not self.list_path(self.split).is_file():
            return SMITH_SPLITS[self.split].split("+")
        return super()._list_parts()

    def expected_layout(self) -> str:
        return (f"expected layout: {self.root}/ holding images/<id>.jpg, labels/<id>.png (class-index PNG, 0..10) "
                f"or labels/<id>/<id>_lbl00.png..<id>_lbl10.png (soft maps), and {self.split}.txt (one id per line"
                f"; for train/test also Smith's exemplars.txt / tuning.txt + testing.txt)")

    def _soft_map_path(self, image_id: str, k: int) -> str:
        return str(self.root / self.label_dir / image_id / f"{image_id}_lbl{k:02d}.png")

    def label_path(self, image_id: str) -> str:
        """labels/<id>.png, or the soft-map folder labels/<id> when there is no such PNG."""
        png = super().label_path(image_id)
        return png if os.path.isfile(png) or not os.path.isdir(png[:-len(".png")]) else png[:-len(".png")]

    def required_files(self, image_id: str) -> list[tuple[tuple[str, ...], str]]:
        labels = (super().label_path(image_id), self._soft_map_path(image_id, 0))
        return [((self.image_path(image_id),), "image"), (labels, "label")]

    def decode_label(self, path: str | os.PathLike) -> np.ndarray:
        """A class-index PNG, or a soft-map folder labels/<id> -> argmax over its 11 maps; uint8 [H,W] 0..10."""
        if not os.path.isdir(path):
            return super().decode_label(path)
        image_id = os.path.basename(os.path.normpath(path))
        maps = [read_label_png(os.path.join(path, f"{image_id}_lbl{k:02d}.png")) for k in range(self.num_classes)]
        if len({m.shape for m in maps}) != 1:
            raise DatasetError(f"{path}: the {self.num_classes} soft maps {image_id}_lbl00..10.png differ in size: "
                               f"{sorted({m.shape for m in maps})}")
        return np.argmax(np.stack(maps), axis=0).astype(np.uint8)
