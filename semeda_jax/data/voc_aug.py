"""Pascal VOC 2012 + SBD "train_aug": the standard 10,582-image training set of VOC segmentation papers.

    <voc_root>/  (.../VOCdevkit/VOC2012)       JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                                                ImageSets/Segmentation/{train,val}.txt (1,464 / 1,449 ids)
    <sbd_root>/  (.../benchmark_RELEASE/dataset) img/<id>.jpg, cls/<id>.mat, train.txt, val.txt (sbd.py)

ids = sorted((SBD train | SBD val | VOC train) - VOC val): 8,498 + 2,857 SBD ids and the VOC train ids SBD lacks,
with every id of the VOC val set removed so training never sees an evaluation image.

Label precedence: an id with its own VOC PNG (`SegmentationClass/<id>.png`) uses it; the others use SBD's
`GTcls.Segmentation`, converted once to PNG by sbd.py. VOC's PNGs are the official annotations and carry the
255 void band along object contours that evaluation also ignores; SBD's maps have no void and were drawn by
other annotators. Images come from VOC's JPEGImages, else from SBD's img/ (the same photographs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from semeda_jax.data.reader import SegmentationReader, read_id_list
from semeda_jax.data.sbd import convert_sbd_labels, sbd_cache_folder
from semeda_jax.data.voc import VOC_CLASSES


def train_aug_ids(voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str],
                  sbd_val: Iterable[str]) -> list[str]:
    """(SBD train | SBD val | VOC train) - VOC val, deduplicated and sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _stems(folder: Path, suffix: str) -> set[str]:
    """Names (without `suffix`) of the files in `folder` ending in `suffix`; empty if the folder is missing."""
    try:
        return {name[:-len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)}
    except FileNotFoundError:
        return set()


class VOCAugSegmentation(SegmentationReader):
    """The "train_aug" split of VOC 2012 + SBD (module docstring), read like VOC.

    `check()` verifies every id's image and label source, then converts the SBD labels the split needs into
    `cache_dir` (the first time: about 9k files; afterwards two stat calls per id).
    """

    split_name = "train_aug"

    def __init__(self, voc_root: str | os.PathLike, sbd_root: str | os.PathLike, cache_dir: str | os.PathLike,
                 num_classes: int = 21, class_names: Sequence[str] | None = VOC_CLASSES, verbose: bool = True):
        super().__init__(voc_root, self.split_name, num_classes, class_names)
        self.sbd_root = Path(sbd_root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser()
        self.sbd_png_dir = sbd_cache_folder(self.sbd_root, self.cache_dir)
        self.verbose = verbose
        self._voc_labels: set[str] = set()
        self._voc_images: set[str] = set()

    def expected_layout(self) -> str:
        return (f"expected layout: {self.root}/ holding JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
                f"ImageSets/Segmentation/{{train,val}}.txt, and {self.sbd_root}/ (SBD benchmark_RELEASE/dataset) "
                f"holding img/<id>.jpg, cls/<id>.mat (struct GTcls) and {{train,val}}.txt")

    def _read_ids(self) -> list[str]:
        self._require_root()
        if not self.sbd_root.is_dir():
            raise self._error(f"SBD folder {self.sbd_root} does not exist")
        lists = {}
        for name, path in (("voc_train", self.root / "ImageSets/Segmentation/train.txt"),
                           ("voc_val", self.root / "ImageSets/Segmentation/val.txt"),
                           ("sbd_train", self.sbd_root / "train.txt"), ("sbd_val", self.sbd_root / "val.txt")):
            if not path.is_file():
                raise self._error(f"split list {path} is missing")
            lists[name] = read_id_list(path)
        self._voc_labels = _stems(self.root / "SegmentationClass", ".png")
        self._voc_images = _stems(self.root / "JPEGImages", ".jpg")
        return train_aug_ids(**lists)

    def _listing(self) -> tuple[set[str], set[str]]:
        """(stems of SegmentationClass/*.png, stems of JPEGImages/*.jpg), listed once with the ids."""
        _ = self.ids
        return self._voc_labels, self._voc_images

    def has_voc_label(self, image_id: str) -> bool:
        """Whether `image_id` takes VOC's own PNG (else SBD's converted label)."""
        return image_id in self._listing()[0]

    def image_path(self, image_id: str) -> str:
        if image_id in self._listing()[1]:
            return str(self.root / "JPEGImages" / f"{image_id}.jpg")
        return str(self.sbd_root / "img" / f"{image_id}.jpg")

    def label_path(self, image_id: str) -> str:
        if self.has_voc_label(image_id):
            return str(self.root / "SegmentationClass" / f"{image_id}.png")
        return str(self.sbd_png_dir / f"{image_id}.png")

    def required_files(self, image_id: str) -> list[tuple[tuple[str, ...], str]]:
        label = (self.label_path(image_id) if self.has_voc_label(image_id)
                 else str(self.sbd_root / "cls" / f"{image_id}.mat"))
        images = (str(self.root / "JPEGImages" / f"{image_id}.jpg"), str(self.sbd_root / "img" / f"{image_id}.jpg"))
        return [(images, "image"), ((label,), "label")]

    def check(self) -> "VOCAugSegmentation":
        super().check()
        convert_sbd_labels(self.sbd_root, [i for i in self.ids if not self.has_voc_label(i)], self.cache_dir,
                           self.num_classes, verbose=self.verbose)
        return self
