"""Cityscapes (Cordts et al., CVPR 2016): fine or coarse labelIds, mapped to the 19 train ids at decode time.

    <root>/
      leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png          split: train, val, test, train_extra
      gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      8-bit grayscale labelIds 0..33
      gtCoarse/{train,train_extra,val}/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png

`annotation` ("gtFine", default, or "gtCoarse") picks the label folder and the split picks the image folder; a
split "a+b" joins folders, e.g. "train+train_extra" with gtCoarse for RelationNet's coarse stage (2,975 + 19,998
images). Ids are "<split>/<city>/<city>_<seq>_<frame>", sorted. Labels stay labelIds on disk (the official
files; no *_labelTrainIds.png preprocessing) and `decode_label` maps them with LABEL_TO_TRAIN_ID, the table of
cityscapesScripts' labels.py: 19 ids become train ids 0..18 and every other id (unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel,
polegroup, caravan, trailer, license plate) becomes 255.
"""
from __future__ import annotations

import os

import numpy as np

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.palette import read_label_png
from semeda_jax.data.reader import SegmentationReader, shown_values

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")

# labelId -> trainId of the evaluated classes (cityscapesScripts helpers/labels.py); all other ids -> 255.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
MAX_LABEL_ID = 33
ANNOTATIONS = ("gtFine", "gtCoarse")


def _lookup_table() -> np.ndarray:
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table


LABEL_TO_TRAIN_ID = _lookup_table()  # uint8 [256]: trainid = LABEL_TO_TRAIN_ID[labelid]

IMAGE_SUFFIX = "_leftImg8bit.png"


class CityscapesSegmentation(SegmentationReader):
    """One split of Cityscapes with `annotation` labels (module docstring); 19 classes, void 255."""

    def __init__(self, root: str | os.PathLike, split: str, annotation: str = "gtFine"):
        if annotation not in ANNOTATIONS:
            raise DatasetError(f"cityscapes: annotation must be one of {ANNOTATIONS}, got {annotation!r}")
        super().__init__(root, split, len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES)
        self.annotation = annotation

    def expected_layout(self) -> str:
        return (f"expected layout: {self.root}/ holding leftImg8bit/<split>/<city>/<name>{IMAGE_SUFFIX} and "
                f"{self.annotation}/<split>/<city>/<name>_{self.annotation}_labelIds.png (8-bit grayscale "
                f"labelIds) for split(s) {self.split.split('+')}")

    def _read_ids(self) -> list[str]:
        self._require_root()
        ids = []
        for part in self.split.split("+"):
            folder = self.root / "leftImg8bit" / part
            if not folder.is_dir():
                raise self._error(f"image folder {folder} does not exist")
            for city in sorted(os.listdir(folder)):
                if (folder / city).is_dir():
                    ids += [f"{part}/{city}/{name[:-len(IMAGE_SUFFIX)]}" for name in os.listdir(folder / city)
                            if name.endswith(IMAGE_SUFFIX)]
        return sorted(ids)

    def image_path(self, image_id: str) -> str:
        return str(self.root / "leftImg8bit" / f"{image_id}{IMAGE_SUFFIX}")

    def label_path(self, image_id: str) -> str:
        return str(self.root / self.annotation / f"{image_id}_{self.annotation}_labelIds.png")

    def decode_label(self, path: str | os.PathLike) -> np.ndarray:
        """labelIds PNG -> train ids uint8 [H,W] in [0, 19) or 255; DatasetError naming the file for values
        above 33 (not a labelIds map: a *_labelTrainIds.png, *_instanceIds.png or colour file)."""
        label_ids = read_label_png(path)
        counts = np.bincount(label_ids.ravel(), minlength=256)
        bad = np.nonzero(counts[MAX_LABEL_ID + 1:])[0] + MAX_LABEL_ID + 1
        if bad.size:
            raise DatasetError(f"{path}: values {{{shown_values(bad.tolist())}}} are not Cityscapes labelIds "
                               f"(expected 0..{MAX_LABEL_ID}: a *_{self.annotation}_labelIds.png, not labelTrainIds, "
                               f"instanceIds or colour)")
        return LABEL_TO_TRAIN_ID[label_ids]
