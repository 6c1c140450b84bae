"""A deterministic procedural segmentation dataset in the VOC on-disk layout.

Each scene is a textured background (class 0) with 3-7 objects of classes 1..C-1 painted in depth order (later
objects occlude earlier ones). Every class has its own shape family (ellipse, rectangle, triangle, star, ring,
thin bar, crescent, cross, hexagon, blob; cycled when C-1 > 10), its own texture and its own colour, but classes
come in pairs with close mean colours, instance colours are jittered and the background colour is drawn from the
same range, so colour alone does not separate the classes. Objects have random size (log-uniform, down to a few
pixels), position, rotation and aspect; object borders are blurred into what lies behind (fuzzy colour at the
boundary), thin parts (star tips, rings, bars) and small objects are common, flat "clutter" blobs labelled as
background are scattered in, and Gaussian pixel noise is added last. Finally a void band (255) of `void_width`
pixels is drawn around every label change, like VOC's hand-drawn contours.

`write_synthetic_voc` writes the genuine VOC layout (see voc.py), so the same reader and pipeline serve real VOC
and this data:
    root/JPEGImages/<id>.jpg                    (quality 95, 4:4:4 chroma)
    root/SegmentationClass/<id>.png             (palette PNG, VOC colours)
    root/ImageSets/Segmentation/{train,val}.txt
    root/synthetic.json                         (manifest: generator version + parameters + class names)
Image i of a split depends only on (seed, split, i), so growing `num_train` keeps the existing images.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.palette import write_label_png

# Bump when the generator's output changes: it is part of the manifest and of the cache hash, so stale caches
# are regenerated instead of silently reused.
GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
SPLITS = ("train", "val")

SHAPE_FAMILIES = ("ellipse", "rectangle", "triangle", "star", "ring", "bar", "crescent", "cross", "hexagon",
                  "blob")
TEXTURES = ("flat", "stripes", "checker", "spots", "noise")

DEFAULTS = dict(num_train=2000, num_val=300, image_size=(128, 128), num_classes=8, void_width=4, seed=0)


def synthetic_class_names(num_classes: int) -> list[str]:
    """["background", "ellipse", "rectangle", ...]; families repeat as "ellipse_2", ... beyond 10 objects."""
    _check_num_classes(num_classes)
    names = ["background"]
    for k in range(1, num_classes):
        family, cycle = SHAPE_FAMILIES[(k - 1) % len(SHAPE_FAMILIES)], (k - 1) // len(SHAPE_FAMILIES)
        names.append(family if cycle == 0 else f"{family}_{cycle + 1}")
    return names


def _check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= 255:
        raise ValueError(f"num_classes must lie in [2, 255], got {num_classes}")


def _class_style(k: int) -> dict:
    """The fixed look of object class k >= 1 (independent of the scene seed and of num_classes).

    Classes 2j-1 and 2j share a base colour (offset by ~20 per channel), so pairs differ by shape and texture.
    """
    pair = np.random.default_rng(np.random.SeedSequence([0x5E3EDA, (k + 1) // 2]))
    base = pair.uniform(50, 205, size=3)
    own = np.random.default_rng(np.random.SeedSequence([0x5E3EDA, 1000 + k]))
    direction = own.normal(size=3) + 1.0
    return dict(
        family=SHAPE_FAMILIES[(k - 1) % len(SHAPE_FAMILIES)],
        texture=TEXTURES[(3 * k + (k - 1) // len(SHAPE_FAMILIES)) % len(TEXTURES)],
        colour=np.clip(base + own.uniform(-22, 22, size=3), 20, 235),
        tex_amp=own.uniform(14, 30),
        tex_dir=direction / np.linalg.norm(direction),
        period=own.uniform(3.5, 8.0),
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int], channels: int):
    """Low-frequency noise in [-1, 1]-ish: a coarse random grid upsampled with cubic splines -> [H,W,channels]."""
    h, w = shape
    gh, gw = cells
    grid = rng.normal(size=(channels, gh, gw))
    yy = (np.arange(h) + 0.5) / h * (gh - 1)
    xx = (np.arange(w) + 0.5) / w * (gw - 1)
    cy, cx = np.meshgrid(yy, xx, indexing="ij")
    out = np.stack([ndimage.map_coordinates(g, [cy, cx], order=3, mode="nearest") for g in grid], axis=-1)
    return out


def _background(rng, h, w, yy, xx) -> np.ndarray:
    colour = rng.uniform(40, 215, size=3)
    image = colour + 28.0 * _smooth_noise(rng, (h, w), (4, 4), 3)
    theta, period = rng.uniform(0, np.pi), rng.uniform(8, 40)
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    image += rng.uniform(0, 22) * stripes[..., None] * rng.uniform(0.5, 1.0, size=3)
    image += (rng.uniform(-30, 30) * (yy / h - 0.5) + rng.uniform(-30, 30) * (xx / w - 0.5))[..., None]
    return image


def _shape_mask(family: str, rng, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in normalised object coordinates (the object roughly fills the unit disc)."""
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if family == "ellipse":
        return (u / rng.uniform(1.0, 1.8)) ** 2 + v ** 2 <= 1.0
    if family == "rectangle":
        a = rng.uniform(0.8, 1.6)
        return (np.abs(u) <= a * 0.8) & (np.abs(v) <= 0.8 / a)
    if family in ("triangle", "hexagon"):
        n = 3 if family == "triangle" else 6
        alphas = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
        support = np.max([u * np.cos(a) + v * np.sin(a) for a in alphas], axis=0)
        return support <= np.cos(np.pi / n)
    if family == "star":
        points = int(rng.integers(4, 7))
        return rho <= 0.35 + 0.65 * (0.5 + 0.5 * np.cos(points * phi)) ** 3
    if family == "ring":
        return (rho <= 1.0) & (rho >= 1.0 - rng.uniform(0.2, 0.4))
    if family == "cross":
        t = rng.uniform(0.15, 0.3)
        return ((np.abs(u) <= t) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= t) & (np.abs(u) <= 1.0))
    if family == "crescent":
        return (rho <= 1.0) & (np.hypot(u - rng.uniform(0.35, 0.6), v) > rng.uniform(0.75, 0.9))
    if family == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= rng.uniform(0.06, 0.14))
    if family == "blob":
        radius = np.full_like(phi, 0.8)
        for k in (2, 3, 4):
            radius += rng.uniform(-0.18, 0.18) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        return rho <= radius
    raise ValueError(f"unknown shape family {family!r}")


def _texture(kind: str, rng, lu: np.ndarray, lv: np.ndarray, period: float) -> np.ndarray:
    """A texture in object-local pixel coordinates (rotates with the object), values in about [-1, 1]."""
    p = period * rng.uniform(0.8, 1.25)
    if kind == "flat":
        return np.zeros_like(lu)
    if kind == "stripes":
        return np.sin(2 * np.pi * lu / p)
    if kind == "checker":
        return np.sign(np.sin(np.pi * lu / p) * np.sin(np.pi * lv / p))
    if kind == "spots":
        return 2.0 * (np.cos(2 * np.pi * lu / p) * np.cos(2 * np.pi * lv / p) > 0.4) - 1.0
    if kind == "noise":
        return np.clip(ndimage.gaussian_filter(rng.normal(size=lu.shape), 1.0) * 2.5, -1.5, 1.5)
    raise ValueError(f"unknown texture {kind!r}")


def void_band(label: np.ndarray, void_width: float) -> np.ndarray:
    """Bool [H,W]: pixels whose centre lies within void_width/2 of a label change (4-neighbour boundaries).

    The boundary runs between pixels, so the band is symmetric: void_width=4 marks 2 pixels on each side.
    """
    band = np.zeros(label.shape, dtype=bool)
    if void_width <= 0:
        return band
    dy = label[1:, :] != label[:-1, :]
    dx = label[:, 1:] != label[:, :-1]
    band[1:, :] |= dy
    band[:-1, :] |= dy
    band[:, 1:] |= dx
    band[:, :-1] |= dx
    if not band.any():
        return band
    dist = ndimage.distance_transform_edt(~band)  # 0 on pixels next to a change
    return dist + 0.5 <= void_width / 2.0


def generate_scene(rng: np.random.Generator, image_size: Sequence[int] = (128, 128), num_classes: int = 8,
                   void_width: float = 4, noise_std: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """One procedural scene -> (image uint8 [H,W,3], label uint8 [H,W] with values in [0, C) or 255).

    Deterministic given the generator's state. `void_width` (pixels, 0 = none) sets the 255 band around every
    label change; `noise_std` is the Gaussian pixel noise (0-255 scale).
    """
    _check_num_classes(num_classes)
    h, w = (int(s) for s in image_size)
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8x8, got {tuple(image_size)}")
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    image = _background(rng, h, w, yy, xx)
    label = np.zeros((h, w), dtype=np.uint8)
    side = min(h, w)

    # Flat clutter blobs: part of the background (label 0), coloured like anything.
    for _ in range(int(rng.integers(0, 3))):
        r = side * rng.uniform(0.05, 0.15)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        mask = _shape_mask("blob", rng, (xx - cx) / r, (yy - cy) / r)
        alpha = ndimage.gaussian_filter(mask.astype(np.float64), rng.uniform(0.8, 2.0))[..., None]
        image = (1 - alpha) * image + alpha * rng.uniform(30, 225, size=3)

    count = int(rng.integers(3, 8))
    classes = rng.integers(1, num_classes, size=count)
    radii = side * np.exp(rng.uniform(np.log(0.06), np.log(0.32), size=count))
    for i in np.argsort(-radii, kind="stable"):  # big objects first (behind), small ones on top
        k, r = int(classes[i]), float(radii[i])
        style = _class_style(k)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        theta = rng.uniform(0, 2 * np.pi)
        lu = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # object-local pixel coordinates
        lv = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        mask = _shape_mask(style["family"], rng, lu / r, lv / r)
        if not mask.any():
            continue
        colour = style["colour"] + rng.normal(0, 16, size=3)
        tex = _texture(style["texture"], rng, lu, lv, style["period"])
        shade = rng.uniform(-18, 18) * np.clip(lu / r, -1.5, 1.5)
        paint = colour + (style["tex_amp"] * tex)[..., None] * style["tex_dir"] + shade[..., None]
        alpha = ndimage.gaussian_filter(mask.astype(np.float64), rng.uniform(0.4, 1.3))
        alpha = np.maximum(alpha, 0.6 * mask)[..., None]  # fuzzy border, but the interior stays mostly paint
        image = (1 - alpha) * image + alpha * paint
        label[mask] = k

    image = image + rng.normal(0, noise_std, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    label[void_band(label, void_width)] = IGNORE_LABEL
    return image, label


# ------------------------------------------------------------------------------------------ writing to disk

def _params(num_train, num_val, image_size, num_classes, void_width, seed) -> dict:
    image_size = [int(s) for s in image_size]
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size}")
    _check_num_classes(int(num_classes))
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need num_train, num_val >= 0 and at least one image, got {num_train}, {num_val}")
    return dict(generator_version=GENERATOR_VERSION, num_train=int(num_train), num_val=int(num_val),
                image_size=image_size, num_classes=int(num_classes), void_width=float(void_width), seed=int(seed))


def _split_ids(params: dict) -> dict[str, list[str]]:
    return {split: [f"{split}_{i:06d}" for i in range(params[f"num_{split}"])] for split in SPLITS}


def _is_complete(root: Path, params: dict) -> bool:
    """True iff root holds a manifest with exactly `params` and every listed file (existence only)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    for split, ids in _split_ids(params).items():
        try:
            listed = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        except OSError:
            return False
        if listed != ids:
            return False
        for i in ids:
            if not ((root / "JPEGImages" / f"{i}.jpg").is_file()
                    and (root / "SegmentationClass" / f"{i}.png").is_file()):
                return False
    return True


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def _generate_into(tmp: Path, params: dict, verbose: bool, shown_root: Path) -> None:
    """Write every file of the dataset into the (empty) folder `tmp`; progress every ~10% for >= 100 images."""
    (tmp / "JPEGImages").mkdir()
    (tmp / "SegmentationClass").mkdir()
    (tmp / "ImageSets" / "Segmentation").mkdir(parents=True)
    split_ids = _split_ids(params)
    total = sum(len(ids) for ids in split_ids.values())
    done, next_report = 0, 0.1
    for split, ids in split_ids.items():
        for index, image_id in enumerate(ids):
            image, label = generate_scene(_scene_rng(params["seed"], split, index), params["image_size"],
                                          params["num_classes"], params["void_width"])
            Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=95,
                                        subsampling=0)  # 4:4:4: keep the colour at object borders
            write_label_png(tmp / "SegmentationClass" / f"{image_id}.png", label)
            done += 1
            if verbose and total >= 100 and done / total >= next_report - 1e-9:
                print(f"[synthetic] {done}/{total} images ({100 * done // total}%) -> {shown_root}", flush=True)
                next_report += 0.1
        (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    manifest = dict(format="semeda_jax.synthetic_voc", params=params,
                    class_names=synthetic_class_names(params["num_classes"]),
                    splits={s: len(ids) for s, ids in split_ids.items()})
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # written last


def write_synthetic_voc(root: str | os.PathLike, *, num_train: int = DEFAULTS["num_train"],
                        num_val: int = DEFAULTS["num_val"], image_size: Sequence[int] = DEFAULTS["image_size"],
                        num_classes: int = DEFAULTS["num_classes"], void_width: float = DEFAULTS["void_width"],
                        seed: int = DEFAULTS["seed"], verbose: bool = True) -> Path:
    """Generate the synthetic dataset in the VOC layout at `root` and return `root` (a Path).

    Idempotent: if `root/synthetic.json` holds the same parameters and every listed file exists, nothing is
    written. Atomic: images are generated in a hidden sibling temp folder which is renamed to `root` when complete,
    so an interrupted run never leaves a half dataset (concurrent writers, e.g. several hosts, are safe: the first
    rename wins, the others discard their copy). A stale synthetic dataset at `root` (other parameters, or files
    missing) is replaced; a non-empty `root` without a manifest is refused (it may be real data).
    """
    root = Path(root).expanduser().absolute()
    params = _params(num_train, num_val, image_size, num_classes, void_width, seed)
    if _is_complete(root, params):
        return root
    if root.exists() and not (root / MANIFEST).exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"{root}: exists and is not a synthetic dataset (no {MANIFEST}); refusing to overwrite "
                           f"it. Choose another folder for the synthetic data.")
    root.parent.mkdir(parents=True, exist_ok=True)
    if verbose:
        n = params["num_train"] + params["num_val"]
        print(f"[synthetic] generating {n} images of {params['image_size']} with {params['num_classes']} classes "
              f"-> {root}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        _generate_into(tmp, params, verbose, root)
        if root.exists():  # stale synthetic data or an empty folder: move it aside, then swap in the new one
            try:
                os.rename(root, trash)
            except FileNotFoundError:
                pass  # another writer moved it first
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root, params):  # lost a race to a writer with other parameters
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
    return root


def synthetic_params_hash(**params) -> str:
    """A short stable hash of the (default-completed) generator parameters, used to name cache folders."""
    full = _params(**{**DEFAULTS, **params})
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:10]


def ensure_synthetic_voc(cache_root: str | os.PathLike, verbose: bool = True, **params) -> Path:
    """Generate (once) and return `cache_root/synthetic_<hash>`, the folder for these parameters.

    `params` are write_synthetic_voc's keywords (num_train, num_val, image_size, num_classes, void_width, seed);
    missing ones take DEFAULTS. Different parameters never share a folder.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"ensure_synthetic_voc: unknown parameters {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    full = {**DEFAULTS, **params}
    root = Path(cache_root).expanduser() / f"synthetic_{synthetic_params_hash(**full)}"
    return write_synthetic_voc(root, verbose=verbose, **full)
