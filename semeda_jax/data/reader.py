"""The reader interface every dataset implements, and the label checks they share.

A reader describes one split of one dataset on disk: its `ids`, `image_path(id)` and `label_path(id)` (strings
the tf.data pipeline reads), `num_classes`, `class_names`, and `decode_label(path) -> uint8 [H,W]`, the hook
that turns a label file into class indices (0..C-1, void 255). The pipeline calls that hook inside
`tf.numpy_function`, so a dataset whose files hold other codes (Cityscapes labelIds) maps them there, once,
with no second code path. Construction does no I/O; `check()` verifies that every file exists (stat calls only,
cheap enough to run before any compilation); `load(id)` returns the decoded arrays for tests and plots.

Label codes that need a mapping go through a 256-entry table (`code_table`, `shift_table`) and `map_label`, which
names the file and every code the format does not define. `SplitFolderSegmentation` is the layout of the
datasets that list a split by its image folder (ADE20K, COCO-Stuff).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.palette import read_label_png


def shown_values(values: Sequence[int]) -> str:
    """'1, 2, 3' (the first ten values, then ', ...'): how errors list bad label values."""
    return ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")


def validate_label(label: np.ndarray, num_classes: int, path: str | os.PathLike) -> np.ndarray:
    """Raise DatasetError naming `path` and the bad values unless uint8 `label` holds only [0, C) and 255."""
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
    bad = [v for v in range(num_classes, 256) if v != IGNORE_LABEL and counts[v]]
    if bad:
        shown = shown_values(bad)
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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 [H,W,3] of a JPEG/PNG file; DatasetError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e})") from None


def read_id_list(path: Path) -> list[str]:
    """Ids of a split list, one per line: `<id>`, `<id> <anything>` or `<index> , <id>` (HELEN's own lists)."""
    ids = []
    for line in path.read_text().splitlines():
        if line.strip():
            ids.append(line.rsplit(",", 1)[-1].strip() if "," in line else line.split()[0])
    return ids


class SegmentationReader:
    """Base of the readers: the ids, file paths, label decoding and (image, label) arrays of one split.

    Subclasses implement `_read_ids()` (raising `self._error(...)` for a missing root or list),
    `image_path(id)`, `label_path(id)` and `expected_layout()` (one line), and override `decode_label` when
    their label files do not hold class indices directly.
    """

    def __init__(self, root: str | os.PathLike, split: str, num_classes: int,
                 class_names: Sequence[str] | None = None):
        self.root = Path(root).expanduser()
        self.split = split
        self.num_classes = int(num_classes)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries, num_classes is {self.num_classes}")
        self.class_names = tuple(class_names) if class_names is not None else None
        self._ids: list[str] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"num_classes={self.num_classes})")

    def _read_ids(self) -> list[str]:
        raise NotImplementedError

    def image_path(self, image_id: str) -> str:
        raise NotImplementedError

    def label_path(self, image_id: str) -> str:
        raise NotImplementedError

    def expected_layout(self) -> str:
        raise NotImplementedError

    def _error(self, what: str) -> DatasetError:
        """A DatasetError of one line: the dataset root and split, what is wrong, and the layout expected."""
        return DatasetError(f"dataset at {self.root} (split {self.split!r}): {what}; {self.expected_layout()}")

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise self._error(f"root folder {self.root} does not exist")

    @property
    def ids(self) -> list[str]:
        """The split's ids (read once)."""
        if self._ids is None:
            self._ids = self._read_ids()
        return self._ids

    def __len__(self) -> int:
        return len(self.ids)

    def required_files(self, image_id: str) -> list[tuple[tuple[str, ...], str]]:
        """[(candidate paths, kind)]: `check()` wants one existing file of each kind (default: image, label)."""
        return [((self.image_path(image_id),), "image"), ((self.label_path(image_id),), "label")]

    def check(self) -> "SegmentationReader":
        """Fail fast with DatasetError on a missing root, split list, image or label (stat calls only)."""
        ids = self.ids
        if not ids:
            raise self._error("the split has no ids")
        for image_id in ids:
            for paths, kind in self.required_files(image_id):
                if not any(os.path.isfile(p) for p in paths):
                    raise self._error(f"id {image_id!r} has no {kind} file {' or '.join(paths)}")
        return self

    def decode_label(self, path: str | os.PathLike) -> np.ndarray:
        """A label file -> class indices uint8 [H,W] in [0, C) or 255; DatasetError naming the file otherwise."""
        return validate_label(read_label_png(path), self.num_classes, path)

    def load_label(self, image_id: str) -> np.ndarray:
        return self.decode_label(self.label_path(image_id))

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H,W,3], label uint8 [H,W]); DatasetError naming the file on bad values or sizes."""
        path = self.image_path(image_id)
        image = read_image(path)
        label = self.load_label(image_id)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{self.label_path(image_id)}: label size {label.shape} differs from the image "
                               f"{path} size {image.shape[:2]}")
        return image, label

    def find_bad_file(self) -> str | None:
        """The DatasetError message of the first id whose image or label does not decode (Pillow) or whose
        sizes differ; None when every file reads. Decodes the whole split: for naming the file after the
        input pipeline failed, not for every run."""
        for image_id in self.ids:
            try:
                self.load(image_id)
            except DatasetError as error:
                return str(error)
        return None

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) read from the image header only."""
        return image_hw(self.image_path(image_id))


INVALID_CODE = -1  # a code_table entry: the format defines no such code


def code_table(classes: Mapping[int, int], void: Sequence[int] = (IGNORE_LABEL,)) -> np.ndarray:
    """int16 [256]: code -> class for `classes`, -> 255 for the `void` codes, INVALID_CODE for any other code."""
    table = np.full(256, INVALID_CODE, np.int16)
    table[list(void)] = IGNORE_LABEL
    for code, index in classes.items():
        table[code] = index
    return table


def shift_table(num_classes: int, offset: int = 0, void: Sequence[int] = (IGNORE_LABEL,)) -> np.ndarray:
    """code_table of `code + offset` for every code landing in [0, num_classes) (the `void` codes -> 255).
    offset=-1, void=(0, 255) is mmseg's reduce_zero_label (ADE20K, Pascal Context 59): 0 -> 255, k -> k - 1."""
    classes = {code: code + offset for code in range(256) if 0 <= code + offset < num_classes and code not in void}
    return code_table(classes, void)


def map_label(codes: np.ndarray, table: np.ndarray, path: str | os.PathLike, expected: str) -> np.ndarray:
    """table[codes] -> class indices uint8 [H,W] (void 255); DatasetError naming `path` and the codes the table
    marks INVALID_CODE, with `expected` (what the file should hold) in the message."""
    codes = np.asarray(codes, dtype=np.uint8)
    bad = np.flatnonzero((np.bincount(codes.ravel(), minlength=256) > 0) & (table == INVALID_CODE))
    if bad.size:
        raise DatasetError(f"{path}: label values {{{shown_values(bad.tolist())}}} are out of range (expected "
                           f"{expected})")
    return table.astype(np.uint8)[codes]


class SplitFolderSegmentation(SegmentationReader):
    """A split listed by its image folder: `root/images/<split>/<id><image_ext>` and
    `root/annotations/<split>/<id><label_suffix>`; the ids are the sorted image names. Subclasses set
    `image_ext`, `label_suffix` and `label_contents` (what the label files hold, for the layout line)."""

    image_ext = ".jpg"
    label_suffix = ".png"
    label_contents = "class-index PNG"

    def expected_layout(self) -> str:
        return (f"expected layout: {self.root}/ holding images/{self.split}/<id>{self.image_ext} and "
                f"annotations/{self.split}/<id>{self.label_suffix} ({self.label_contents})")

    def _read_ids(self) -> list[str]:
        self._require_root()
        folder = self.root / "images" / self.split
        if not folder.is_dir():
            raise self._error(f"image folder {folder} does not exist")
        return sorted(name[:-len(self.image_ext)] for name in os.listdir(folder) if name.endswith(self.image_ext))

    def image_path(self, image_id: str) -> str:
        return str(self.root / "images" / self.split / f"{image_id}{self.image_ext}")

    def label_path(self, image_id: str) -> str:
        return str(self.root / "annotations" / self.split / f"{image_id}{self.label_suffix}")
