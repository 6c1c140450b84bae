"""SBD class labels (Hariharan et al., ICCV 2011): MATLAB `cls/<id>.mat` -> class-index PNG, converted once.

    <sbd_root>/                 (= .../benchmark_RELEASE/dataset)
      img/<id>.jpg              the VOC images (the same files as VOC2012/JPEGImages/<id>.jpg)
      cls/<id>.mat              struct GTcls: Segmentation uint8 [H,W] class map 0..20 (no void),
                                Boundaries (20x1 cell of sparse edge maps), CategoriesPresent (class ids)
      train.txt, val.txt        8,498 / 2,857 ids

The tf.data pipeline reads PNGs, so each needed .mat is converted once into
`<cache_dir>/sbd_cls_<hash of the absolute sbd_root>/<id>.png` (palette PNG, VOC colours). A converted PNG
carries its source's modification time (to the nanosecond) and counts as up to date while the two are equal, so
a rebuild costs two stat calls per id, and an edited .mat, or a foreign file at the PNG's name, is converted
again. Each PNG is written to a hidden temporary file in
the same folder and renamed into place, so a conversion killed midway never leaves a partial `<id>.png`
(concurrent conversions of the same file are harmless: each rename is atomic and the contents are equal).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.io

from semeda_jax.data.errors import DatasetError
from semeda_jax.data.palette import write_label_png
from semeda_jax.data.reader import validate_label

def sbd_cache_folder(sbd_root: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """`<cache_dir>/sbd_cls_<10 hex digits of sha1(absolute sbd_root)>`: one folder per SBD copy."""
    key = hashlib.sha1(os.path.realpath(os.path.expanduser(sbd_root)).encode()).hexdigest()[:10]
    return Path(cache_dir).expanduser() / f"sbd_cls_{key}"


def read_sbd_mat(path: str | os.PathLike, num_classes: int = 21) -> np.ndarray:
    """GTcls.Segmentation of an SBD cls .mat -> uint8 [H,W]; DatasetError naming the file if it is not one."""
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: SBD label file not found") from None
    except Exception as e:  # noqa: BLE001 -- scipy raises ValueError, TypeError, MatReadError... on bad files
        raise DatasetError(f"{path}: cannot read the MATLAB file ({type(e).__name__}: {e})") from None
    expected = "a MATLAB struct 'GTcls' whose field 'Segmentation' is a 2-D integer class map (SBD cls/ layout)"
    struct = mat.get("GTcls")
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or "Segmentation" not in struct.dtype.names:
        raise DatasetError(f"{path}: expected {expected}; found variables {sorted(k for k in mat if k[0] != '_')}")
    segmentation = np.asarray(struct["Segmentation"].ravel()[0])
    if segmentation.ndim != 2 or not np.issubdtype(segmentation.dtype, np.integer):
        raise DatasetError(f"{path}: expected {expected}; GTcls.Segmentation has shape {segmentation.shape} "
                           f"and dtype {segmentation.dtype}")
    if segmentation.min(initial=0) < 0 or segmentation.max(initial=0) > 255:
        raise DatasetError(f"{path}: GTcls.Segmentation values [{segmentation.min()}, {segmentation.max()}] "
                           f"do not fit the class range [0, {num_classes})")
    return validate_label(segmentation.astype(np.uint8), num_classes, path)


def _up_to_date(png: Path, source_mtime_ns: int) -> bool:
    try:
        return png.stat().st_mtime_ns == source_mtime_ns
    except FileNotFoundError:
        return False


def convert_sbd_labels(sbd_root: str | os.PathLike, ids: Iterable[str], cache_dir: str | os.PathLike,
                       num_classes: int = 21, verbose: bool = True) -> Path:
    """Convert `sbd_root/cls/<id>.mat` of every id to `<folder>/<id>.png` unless up to date; -> the folder.

    DatasetError naming the file for a missing or malformed .mat. Prints one line when it converts anything.
    """
    sbd_root = Path(sbd_root).expanduser()
    folder = sbd_cache_folder(sbd_root, cache_dir)
    todo = []
    for image_id in ids:
        mat = sbd_root / "cls" / f"{image_id}.mat"
        try:
            mtime_ns = mat.stat().st_mtime_ns
        except FileNotFoundError:
            raise DatasetError(f"{mat}: SBD label file not found (id {image_id!r})") from None
        if not _up_to_date(folder / f"{image_id}.png", mtime_ns):
            todo.append((image_id, mat, mtime_ns))
    if not todo:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if verbose:
        print(f"[data] converting {len(todo)} SBD .mat labels to PNG in {folder} (once)", flush=True)
    for image_id, mat, mtime_ns in todo:
        label = read_sbd_mat(mat, num_classes)
        fd, tmp = tempfile.mkstemp(prefix=f".{image_id}.png.tmp-", dir=folder)
        os.close(fd)
        try:
            write_label_png(tmp, label)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, folder / f"{image_id}.png")
        except BaseException:
            os.unlink(tmp)
            raise
    return folder
