"""COCO-Stuff 164k (Caesar et al., CVPR 2018): 171 classes (80 things + 91 stuff), 118k training and 5k val images.

    <root>/
      images/{train2017,val2017}/<12 digits>.jpg
      annotations/{train2017,val2017}/<12 digits>.png                 the released stuffthingmaps: 8-bit
                                                                      grayscale codes 0..181, 255 unlabeled
      annotations/{train2017,val2017}/<12 digits>_labelTrainIds.png   or mmseg's conversion: 0..170, 255

The released maps number the 182 COCO categories (code = COCO category id - 1); 11 thing codes were never used
(street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush), so the 171 that
occur become classes 0..170 in code order (mmseg's table) and the 11 unused codes are void, as in mmseg. Codes
182..254 are an error naming the file. `label_format` picks the files: "stuffthingmaps", "trainids", or "auto"
(default): trainids when the split's first image has a *_labelTrainIds.png, else the released maps.
"""
from __future__ import annotations

import os

import numpy as np

from semeda_jax.data.errors import DatasetError
from semeda_jax.data.palette import read_label_png
from semeda_jax.data.reader import SplitFolderSegmentation, code_table, map_label, shift_table

THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood")
COCO_STUFF_CLASSES = THINGS + STUFF
# COCO category ids (1-based) that no annotation uses; the stuffthingmaps code is the id - 1.
UNUSED_CATEGORY_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
STUFFTHINGMAP_CODES = tuple(c for c in range(182) if c + 1 not in UNUSED_CATEGORY_IDS)  # class k's code
STUFFTHINGMAP_TABLE = code_table({code: k for k, code in enumerate(STUFFTHINGMAP_CODES)},
                                 void=(*(c - 1 for c in UNUSED_CATEGORY_IDS), 255))
TRAIN_ID_TABLE = shift_table(len(COCO_STUFF_CLASSES))
LABEL_FORMATS = {"stuffthingmaps": (".png", "8-bit grayscale codes 0..181, 255 unlabeled"),
                 "trainids": ("_labelTrainIds.png", "8-bit grayscale train ids 0..170, 255 void")}


class COCOStuffSegmentation(SplitFolderSegmentation):
    """One split of COCO-Stuff 164k with the released maps or mmseg's train ids (module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str, label_format: str = "auto"):
        if label_format not in (*LABEL_FORMATS, "auto"):
            raise DatasetError(f"coco_stuff: label_format must be one of {[*LABEL_FORMATS, 'auto']}, "
                               f"got {label_format!r}")
        super().__init__(root, split, len(COCO_STUFF_CLASSES), COCO_STUFF_CLASSES)
        self.label_format = label_format

    @property
    def label_suffix(self) -> str:
        if self.label_format == "auto":  # resolved with the ids; until then the layout line names both
            return "{.png | _labelTrainIds.png}"
        return LABEL_FORMATS[self.label_format][0]

    @property
    def label_contents(self) -> str:
        if self.label_format == "auto":
            return "; ".join(contents for _, contents in LABEL_FORMATS.values())
        return LABEL_FORMATS[self.label_format][1]

    def _read_ids(self) -> list[str]:
        ids = super()._read_ids()
        if self.label_format == "auto" and ids:
            trainids = self.root / "annotations" / self.split / f"{ids[0]}{LABEL_FORMATS['trainids'][0]}"
            self.label_format = "trainids" if trainids.is_file() else "stuffthingmaps"
        return ids

    def decode_label(self, path: str | os.PathLike) -> np.ndarray:
        """Released codes (0..181, 255) or train ids (0..170, 255) -> classes uint8 [H,W]; DatasetError naming
        the file for any other code."""
        if self.label_format == "trainids":
            return map_label(read_label_png(path), TRAIN_ID_TABLE, path, "mmseg train ids 0..170 and 255")
        return map_label(read_label_png(path), STUFFTHINGMAP_TABLE, path,
                         "COCO-Stuff stuffthingmaps codes 0..181 and 255 unlabeled")
