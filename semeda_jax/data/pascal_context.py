"""Pascal Context (Mottaghi et al., CVPR 2014): VOC 2010 images with whole-scene labels, 4,998 train / 5,105 val.

    <root>/                                   = .../VOCdevkit/VOC2010
      JPEGImages/<id>.jpg
      SegmentationClassContext/<id>.png       8-bit class indices 0..59 (0 = background), as users convert
                                              the release's trainval_merged.json (mmseg's pascal_context.py)
      ImageSets/SegmentationContext/{train,val}.txt

Two benchmarks read the same files: 60 classes, background a class (num_classes 60, the default), and 59
classes with background void (num_classes 59: mmseg's reduce_zero_label, code 0 -> 255, k -> k - 1).
"""
from __future__ import annotations

import os

import numpy as np

from semeda_jax.data.errors import DatasetError
from semeda_jax.data.palette import read_label_png
from semeda_jax.data.reader import map_label, shift_table
from semeda_jax.data.voc import VOCSegmentation

PASCAL_CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain",
    "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood")
# num_classes -> (code table, what the codes mean)
BENCHMARKS = {60: (shift_table(60), "codes 0..59 (0 = background) and 255"),
              59: (shift_table(59, offset=-1, void=(0, 255)), "codes 0 (background, void) and 1..59")}


class PascalContextSegmentation(VOCSegmentation):
    """One split of Pascal Context in VOC 2010's layout, 60 or 59 classes (module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str, num_classes: int = 60):
        if int(num_classes) not in BENCHMARKS:
            raise DatasetError(f"pascal_context: num_classes must be 60 (background a class) or 59 (background "
                               f"void), got {num_classes}")
        names = PASCAL_CONTEXT_CLASSES[len(PASCAL_CONTEXT_CLASSES) - int(num_classes):]
        super().__init__(root, split, num_classes, label_dir="SegmentationClassContext",
                         list_dir="ImageSets/SegmentationContext", class_names=names)

    def decode_label(self, path: str | os.PathLike) -> np.ndarray:
        """Codes 0..59 -> classes uint8 [H,W] of the 60- or 59-class benchmark; DatasetError naming the file for
        codes above 59."""
        table, expected = BENCHMARKS[self.num_classes]
        return map_label(read_label_png(path), table, path, f"Pascal Context {expected}")
