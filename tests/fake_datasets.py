"""Miniature datasets in the genuine on-disk formats, and the arrays a correct reader must return.

    write_fake_voc_sbd(root)    VOC2012 (JPEGs, palette PNGs with 255 void borders, ImageSets) + SBD (img/,
                                cls/*.mat written with scipy.io.savemat as struct GTcls, train/val lists)
    write_fake_cityscapes(root) leftImg8bit PNGs, gtFine / gtCoarse 8-bit labelIds PNGs using all ids 0..33
    write_fake_helen(root)      images/*.jpg + labels/*.png index maps + train/test lists; `soft_maps=True`
                                writes Smith et al.'s release instead (labels/<id>/<id>_lbl00..10.png, argmax)
    write_fake_ade20k(root)     ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/*.png with
                                codes 0 (other) .. 150
    write_fake_coco_stuff(root) images/{train2017,val2017}/*.jpg + stuffthingmaps codes 0..181 / 255, or
                                (`train_ids=True`) mmseg's *_labelTrainIds.png beside them
    write_fake_pascal_context(root) VOC2010 JPEGImages/, SegmentationClassContext/*.png codes 0..59,
                                ImageSets/SegmentationContext/{train,val}.txt

Each returns a dict: "dataset" (config.dataset keys that read it), "splits" ({split: ids in reader order}),
"labels" ({id: uint8 [H,W] class map a reader must decode with the default settings}), "images" ({id: uint8 [H,W,3] as Pillow decodes
the file written}), plus dataset-specific entries documented on each function. Images are tiny (about 24x32)
and smooth, so the JPEG ones decode within a few levels of the pixels generated; the label arrays are exact.
The expected train ids come from this file's own copy of the official Cityscapes table, not from the reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from semeda_jax.data import write_label_png

VOID = 255

# cityscapesScripts helpers/labels.py: trainId of labelId 0..33 (255 = ignored; license plate, id -1, too).
CITYSCAPES_OFFICIAL_TRAIN_ID = (255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255,
                                6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18)


def _image(seed: int, hw: tuple[int, int]) -> np.ndarray:
    """A smooth RGB image uint8 [H,W,3] (gradients with a per-seed colour), friendly to JPEG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float64)
    base = rng.uniform(40, 200, size=3)
    ramp = np.stack([x / hw[1], y / hw[0], (x + y) / sum(hw)], axis=-1) * rng.uniform(20, 50, size=3)
    return np.clip(base + ramp, 0, 255).astype(np.uint8)


def _save_image(path: Path, image: np.ndarray) -> np.ndarray:
    """Write JPEG (q95) or PNG by suffix; -> the pixels Pillow decodes from the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(image).save(path, format="PNG")
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def _boxes(seed: int, hw: tuple[int, int], classes: list[int], void: bool) -> np.ndarray:
    """Background 0 with one rectangle per class; `void` adds VOC's 1-px 255 contour around each rectangle."""
    rng = np.random.default_rng(seed)
    label = np.zeros(hw, np.uint8)
    for k in classes:
        top, left = rng.integers(0, hw[0] - 8), rng.integers(0, hw[1] - 8)
        bottom, right = top + rng.integers(5, 9), left + rng.integers(5, 9)
        if void:
            label[max(top - 1, 0):bottom + 1, max(left - 1, 0):right + 1] = VOID
        label[top:bottom, left:right] = k
    return label


def _write_list(path: Path, ids: list[str], fmt: str = "{id}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(fmt.format(index=i + 1, id=image_id) + "\n" for i, image_id in enumerate(ids)))


def write_sbd_mat(path: Path, segmentation: np.ndarray, num_classes: int = 21) -> None:
    """An SBD cls .mat: struct GTcls {Segmentation uint8 [H,W], Boundaries {20x1 sparse}, CategoriesPresent}."""
    boundaries = np.empty((num_classes - 1, 1), dtype=object)
    for k in range(1, num_classes):
        mask = segmentation == k
        edge = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[1:-1, 2:]
        boundaries[k - 1, 0] = scipy.sparse.csc_matrix(edge)
    present = np.array([[k] for k in np.unique(segmentation) if k != 0], np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation.astype(np.uint8), "Boundaries": boundaries,
                                      "CategoriesPresent": present}})


# VOC / SBD ids of the overlap cases (real ids look like these).
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000002"]   # 032 in SBD train, 039 in SBD val, 002 VOC only
VOC_VAL = ["2007_000033", "2007_000042"]                    # 033 also in SBD train: excluded from train_aug
SBD_TRAIN = ["2007_000032", "2007_000033", "2008_000100", "2008_000101"]
SBD_VAL = ["2007_000039", "2009_000200"]                    # 2009_000200: image only in SBD img/
TRAIN_AUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000100", "2008_000101", "2009_000200"]


def write_fake_voc_sbd(root: str | Path) -> dict:
    """root/VOCdevkit/VOC2012 and root/benchmark_RELEASE/dataset with the ids above.

    Extra entries: "voc_root", "sbd_root", "sbd_labels" ({id: GTcls.Segmentation}); "labels" follows the
    reader's precedence (VOC's PNG where the id has one, else SBD's map). Ids in both VOC and SBD get different
    labels in the two, so the precedence is observable.
    """
    root = Path(root)
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    images, labels, sbd_labels = {}, {}, {}
    all_ids = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for n, image_id in enumerate(all_ids):
        hw = (24, 32) if n % 2 == 0 else (22, 30)
        pixels = _image(n, hw)
        if image_id in SBD_TRAIN + SBD_VAL:
            decoded = _save_image(sbd / "img" / f"{image_id}.jpg", pixels)
            sbd_labels[image_id] = _boxes(100 + n, hw, [1 + n % 20, 15], void=False)
            write_sbd_mat(sbd / "cls" / f"{image_id}.mat", sbd_labels[image_id])
            labels[image_id] = sbd_labels[image_id]
        if image_id != "2009_000200":
            decoded = _save_image(voc / "JPEGImages" / f"{image_id}.jpg", pixels)
        if image_id in VOC_TRAIN + VOC_VAL:
            labels[image_id] = _boxes(200 + n, hw, [2 + n % 19, 7], void=True)
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            write_label_png(voc / "SegmentationClass" / f"{image_id}.png", labels[image_id])
        images[image_id] = decoded
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", VOC_TRAIN)
    _write_list(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_VAL)
    _write_list(sbd / "train.txt", SBD_TRAIN)
    _write_list(sbd / "val.txt", SBD_VAL)
    return {"dataset": {"name": "voc", "root": str(voc), "sbd_root": str(sbd), "cache_dir": str(root / "cache"),
                        "num_classes": 21},
            "voc_root": voc, "sbd_root": sbd,
            "splits": {"train": VOC_TRAIN, "val": VOC_VAL, "train_aug": TRAIN_AUG},
            "images": images, "labels": labels, "sbd_labels": sbd_labels}


CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"], "train_extra": ["augsburg"]}
ANNOTATED = {"gtFine": ("train", "val"), "gtCoarse": ("train", "train_extra")}


def write_fake_cityscapes(root: str | Path) -> dict:
    """root/{leftImg8bit, gtFine, gtCoarse}: 2 images per city; gtFine for train/val, gtCoarse for
    train/train_extra. Every labelIds map holds all ids 0..33 (so both mapped and ignored ids occur).

    "labels" holds the gtFine train ids (the default annotation); extra entries: "coarse_labels" ({id: gtCoarse
    train ids}, for annotation="gtCoarse") and "label_ids" ({annotation: {id: raw labelIds}}).
    """
    root = Path(root)
    images, label_ids = {}, {"gtFine": {}, "gtCoarse": {}}
    splits = {}
    n = 0
    for split, cities in CITIES.items():
        splits[split] = []
        for city in cities:
            for frame in (19, 1276):
                name = f"{city}_{n:06d}_{frame:06d}"
                image_id = f"{split}/{city}/{name}"
                hw = (24, 32) if n % 2 == 0 else (20, 36)
                images[image_id] = _save_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                                               _image(n, hw))
                for annotation in (a for a, labelled in ANNOTATED.items() if split in labelled):
                    ids = np.random.default_rng([n, len(annotation)]).permutation(np.arange(hw[0] * hw[1]) % 34)
                    ids = ids.reshape(hw).astype(np.uint8)
                    folder = root / annotation / split / city
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(ids).save(folder / f"{name}_{annotation}_labelIds.png")
                    label_ids[annotation][image_id] = ids
                splits[split].append(image_id)
                n += 1
        splits[split].sort()
    table = np.array(CITYSCAPES_OFFICIAL_TRAIN_ID, np.uint8)
    return {"dataset": {"name": "cityscapes", "root": str(root), "num_classes": 19},
            "splits": splits, "images": images, "label_ids": label_ids,
            "labels": {i: table[v] for i, v in label_ids["gtFine"].items()},
            "coarse_labels": {i: table[v] for i, v in label_ids["gtCoarse"].items()}}


HELEN_SPLITS = {"train": ["100032540_1", "10405146_1", "1100845547_1"], "test": ["114530171_1", "2236814888_2"]}


def write_fake_helen(root: str | Path, soft_maps: bool = False) -> dict:
    """root/images/<id>.jpg and labels: index PNGs + train.txt/test.txt, or (soft_maps) Smith's 11 soft maps
    per id + exemplars.txt/tuning.txt/testing.txt in his "<index> , <id>" format (test = tuning + testing)."""
    root = Path(root)
    images, labels = {}, {}
    ids = HELEN_SPLITS["train"] + HELEN_SPLITS["test"]
    for n, image_id in enumerate(ids):
        hw = (24, 32) if n % 2 == 0 else (28, 26)
        images[image_id] = _save_image(root / "images" / f"{image_id}.jpg", _image(n, hw))
        labels[image_id] = _boxes(300 + n, hw, [1, 10, 2 + n % 8], void=False)
        if soft_maps:
            rng = np.random.default_rng(400 + n)
            for k in range(11):
                soft = rng.integers(0, 150, hw).astype(np.uint8)
                soft[labels[image_id] == k] = 200
                (root / "labels" / image_id).mkdir(parents=True, exist_ok=True)
                Image.fromarray(soft).save(root / "labels" / image_id / f"{image_id}_lbl{k:02d}.png")
        else:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels[image_id]).save(root / "labels" / f"{image_id}.png")
    if soft_maps:
        _write_list(root / "exemplars.txt", HELEN_SPLITS["train"], "{index} , {id}")
        _write_list(root / "tuning.txt", HELEN_SPLITS["test"][:1], "{index} , {id}")
        _write_list(root / "testing.txt", HELEN_SPLITS["test"][1:], "{index} , {id}")
    else:
        for split, split_ids in HELEN_SPLITS.items():
            _write_list(root / f"{split}.txt", split_ids)
    return {"dataset": {"name": "helen", "root": str(root), "num_classes": 11},
            "splits": dict(HELEN_SPLITS), "images": images, "labels": labels}


def _codes(seed: int, hw: tuple[int, int], codes: list[int]) -> np.ndarray:
    """A label map of raw dataset codes: horizontal bands cycling through `codes` and one rectangle each of
    the first two (so every code occurs and the map is not a plain stripe pattern)."""
    rng = np.random.default_rng(seed)
    label = np.array([codes[(y // 3) % len(codes)] for y in range(hw[0])], np.uint8)[:, None].repeat(hw[1], 1)
    for code in codes[:2]:
        top, left = rng.integers(0, hw[0] - 6), rng.integers(0, hw[1] - 6)
        label[top:top + 5, left:left + 5] = code
    return label


def _write_gray_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)  # mode "L": 8-bit grayscale codes, as these datasets ship them


ADE20K_SPLITS = {"training": ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003",
                              "ADE_train_00000004"],
                 "validation": ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]}


def write_fake_ade20k(root: str | Path) -> dict:
    """root/images/<split>/<id>.jpg and root/annotations/<split>/<id>.png (grayscale codes 0..150: 0 "other"
    in every map, 150 and 1 too). "labels": the classes (code - 1, 0 -> 255); "codes": the raw maps."""
    root = Path(root)
    images, codes = {}, {}
    for n, (split, image_id) in enumerate((s, i) for s, ids in ADE20K_SPLITS.items() for i in ids):
        hw = (24, 32) if n % 2 == 0 else (28, 26)
        images[image_id] = _save_image(root / "images" / split / f"{image_id}.jpg", _image(500 + n, hw))
        codes[image_id] = _codes(600 + n, hw, [0, 150, 1, 1 + 37 * n % 149])
        _write_gray_png(root / "annotations" / split / f"{image_id}.png", codes[image_id])
    labels = {i: np.where(c == 0, VOID, c.astype(np.int16) - 1).astype(np.uint8) for i, c in codes.items()}
    return {"dataset": {"name": "ade20k", "root": str(root), "num_classes": 150},
            "splits": dict(ADE20K_SPLITS), "images": images, "labels": labels, "codes": codes}


# COCO-Stuff stuffthingmaps code (COCO category id - 1) -> class, for the codes the generator uses: things
# before and after the unused codes 11 (street sign) and 90 (hair brush), the first and last stuff codes.
COCO_STUFF_CODES = {0: 0, 10: 10, 12: 11, 89: 79, 91: 80, 181: 170}
COCO_STUFF_UNUSED_CODE = 11
COCO_STUFF_SPLITS = {"train2017": ["000000000009", "000000000025", "000000000030"],
                     "val2017": ["000000000139", "000000000285"]}


def write_fake_coco_stuff(root: str | Path, train_ids: bool = False) -> dict:
    """root/images/<split>/<id>.jpg and root/annotations/<split>/<id>.png (stuffthingmaps: codes of
    COCO_STUFF_CODES, 255 unlabeled, and the unused code 11); `train_ids` also writes <id>_labelTrainIds.png
    (mmseg's conversion) holding the same classes. "labels": the 171-class maps; "codes": the released maps."""
    root = Path(root)
    table = np.full(256, VOID, np.uint8)
    for code, index in COCO_STUFF_CODES.items():
        table[code] = index
    images, codes = {}, {}
    for n, (split, image_id) in enumerate((s, i) for s, ids in COCO_STUFF_SPLITS.items() for i in ids):
        hw = (24, 32) if n % 2 == 0 else (30, 24)
        images[image_id] = _save_image(root / "images" / split / f"{image_id}.jpg", _image(700 + n, hw))
        codes[image_id] = _codes(800 + n, hw, [*COCO_STUFF_CODES, VOID, COCO_STUFF_UNUSED_CODE])
        _write_gray_png(root / "annotations" / split / f"{image_id}.png", codes[image_id])
        if train_ids:
            _write_gray_png(root / "annotations" / split / f"{image_id}_labelTrainIds.png", table[codes[image_id]])
    return {"dataset": {"name": "coco_stuff", "root": str(root), "num_classes": 171},
            "splits": dict(COCO_STUFF_SPLITS), "images": images, "codes": codes,
            "labels": {i: table[c] for i, c in codes.items()}}


PASCAL_CONTEXT_SPLITS = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000008",
                                                                                     "2008_000015"]}


def write_fake_pascal_context(root: str | Path) -> dict:
    """root = VOC2010: JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png (codes 0..59, 0 = background in
    every map) and ImageSets/SegmentationContext/{train,val}.txt. "labels": the 60-class maps (= the codes);
    "labels59": the 59-class maps (0 -> 255, k -> k - 1)."""
    root = Path(root)
    images, codes = {}, {}
    for n, image_id in enumerate(PASCAL_CONTEXT_SPLITS["train"] + PASCAL_CONTEXT_SPLITS["val"]):
        hw = (24, 32) if n % 2 == 0 else (26, 30)
        images[image_id] = _save_image(root / "JPEGImages" / f"{image_id}.jpg", _image(900 + n, hw))
        codes[image_id] = _codes(950 + n, hw, [0, 59, 1, 2 + 11 * n % 57])
        _write_gray_png(root / "SegmentationClassContext" / f"{image_id}.png", codes[image_id])
    for split, ids in PASCAL_CONTEXT_SPLITS.items():
        _write_list(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", ids)
    return {"dataset": {"name": "pascal_context", "root": str(root), "num_classes": 60},
            "splits": dict(PASCAL_CONTEXT_SPLITS), "images": images, "labels": codes,
            "labels59": {i: np.where(c == 0, VOID, c.astype(np.int16) - 1).astype(np.uint8) for i, c in codes.items()}}


def smoke_config(data_root, **overrides):
    """configs/demo.py:smoke reading the synthetic dataset at `data_root`, with flattened overrides
    ("train.steps": 4)."""
    from configs import demo

    config = demo.get_config("smoke")
    config.dataset.root = data_root
    config.update_from_flattened_dict(overrides)
    return config
