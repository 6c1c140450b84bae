"""A deterministic procedural segmentation dataset in the VOC on-disk layout (generator version 2).

Design: interiors are easy, boundaries are hard.
  * Every object class k >= 1 has a fixed appearance signature that a small CNN separates from local evidence: a
    saturated colour (hue k * golden angle, so neighbouring class indices are far apart in hue) and a texture of
    its own (stripes, checker, spots, grain, cross-hatch, waves, concentric rings; cycled beyond 7 classes, when
    the hue differs). Instance colours are jittered a little and shaded. The background (class 0) and
    background "clutter" blobs are desaturated (grey-ish, any brightness) with low-frequency variation.
  * Every class has its own shape family (ellipse, rectangle, triangle, star, ring, thin bar, crescent, cross,
    hexagon, blob; cycled when C-1 > 10) with fine structure: concavities (star, crescent, cross), thin parts of
    3-8 pixels at 128 px (bars, ring walls, cross arms, star tips) and holes (rings, some blobs). Many objects are
    placed against an earlier one, so objects of different classes touch and occlude each other (later objects
    in front) and class-to-class boundaries are common, not only object/background ones.
  * Edges are anti-aliased (3x3 supersampled coverage, the label is coverage >= 1/2) and feathered (a Gaussian
    of 0.3-1.2 px at 128 px per object), the whole image is blurred (0.7-1.3 px) and Gaussian pixel noise
    (std 4-10) is added last, so the last pixel or two of every boundary is ambiguous.
  * A void band (255) of `void_width` pixels (default 1, VOC's ~5 px contour at 500 px scaled to 128 px: the
    greater-label pixel of every changing pair; 2 = one pixel on each side; 0 = no void, SBD style) is drawn
    across every label change, but never over all visible pixels of an object: an object the band would swallow
    keeps its innermost pixels.
  * Class frequencies are balanced: a scene holds one object of every class (of 8-12 objects; classes in
    random order) plus extra objects drawn with weights that undo the differences in mean area between shape
    families, so every class holds several % of the valid pixels of any split; the manifest records the
    per-class pixel shares and the generator prints them.

`write_synthetic_voc` writes the genuine VOC layout (see voc.py), so the same reader and pipeline serve real VOC
and this data:
    root/JPEGImages/<id>.jpg                    (quality 95, 4:4:4 chroma)
    root/SegmentationClass/<id>.png             (palette PNG, VOC colours)
    root/ImageSets/Segmentation/{train,val}.txt
    root/synthetic.json                         (manifest: generator version, parameters, class names,
                                                 per-split image counts and class pixel shares)
Image i of a split depends only on (seed, split, i), so growing `num_train` keeps the existing images, and a
disjoint set of images (e.g. a large pre-training set, or a tuning split) is the same generator with another seed.
"""
from __future__ import annotations

import colorsys
import concurrent.futures
import functools
import hashlib
import json
import multiprocessing
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
from semeda_jax.data.palette import read_label_png, write_label_png

# Bump when the generator's output changes: it is part of the manifest and of the cache hash, so stale caches
# are regenerated instead of silently reused.
GENERATOR_VERSION = 2
MANIFEST = "synthetic.json"
SPLITS = ("train", "val")

SHAPE_FAMILIES = ("ellipse", "rectangle", "triangle", "star", "ring", "bar", "crescent", "cross", "hexagon",
                  "blob")
TEXTURES = ("stripes", "checker", "spots", "grain", "hatch", "waves", "rings")
# Relative weight of each family for the extra objects of a scene (after one of each class): about 1 / its mean
# visible area, so that classes get similar pixel shares.
FAMILY_WEIGHTS = dict(ellipse=0.1, rectangle=0.25, triangle=0.6, star=0.6, ring=2.5, bar=5.0, crescent=0.6,
                      cross=1.0, hexagon=0.3, blob=0.3)
# Radius multiplier per family: thin shapes are drawn larger so that they are long rather than tiny.
FAMILY_SCALE = dict(ellipse=0.7, rectangle=0.8, triangle=1.0, star=1.1, ring=1.2, bar=2.0, crescent=1.1,
                    cross=1.3, hexagon=0.9, blob=0.9)
_GOLDEN = 0.381966  # golden-angle hue step: consecutive classes are ~137 degrees apart in hue
_SUPERSAMPLE = 3

DEFAULTS = dict(num_train=2000, num_val=300, image_size=(128, 128), num_classes=8, void_width=1, seed=0)


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
    """The fixed look of object class k >= 1 (independent of the scene seed and of num_classes)."""
    own = np.random.default_rng(np.random.SeedSequence([0x5E3EDA, 2, k]))
    hue = ((k - 1) * _GOLDEN) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, own.uniform(0.6, 0.9), own.uniform(0.55, 0.9))
    return dict(
        family=SHAPE_FAMILIES[(k - 1) % len(SHAPE_FAMILIES)],
        texture=TEXTURES[(k - 1) % len(TEXTURES)],
        hue=hue,
        colour=255.0 * np.asarray(rgb),
        tex_amp=own.uniform(0.22, 0.32),  # relative brightness modulation of the texture
        period=own.uniform(4.0, 7.0),     # texture period in pixels at 128 px
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int], channels: int):
    """Low-frequency noise in [-1, 1]-ish: a coarse random grid upsampled with cubic splines -> [H,W,channels]."""
    h, w = shape
    gh, gw = cells
    grid = rng.normal(size=(channels, gh, gw))
    yy = (np.arange(h) + 0.5) / h * (gh - 1)
    xx = (np.arange(w) + 0.5) / w * (gw - 1)
    cy, cx = np.meshgrid(yy, xx, indexing="ij")
    return np.stack([ndimage.map_coordinates(g, [cy, cx], order=3, mode="nearest") for g in grid], axis=-1)


def _grey(rng: np.random.Generator) -> np.ndarray:
    """A desaturated colour of any brightness (the background's look), RGB in 0-255."""
    return 255.0 * np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.15), rng.uniform(0.25, 0.85)))


def _background(rng, h: int, w: int) -> np.ndarray:
    image = _grey(rng) * (1.0 + 0.15 * _smooth_noise(rng, (h, w), (4, 4), 1))
    return image + 5.0 * _smooth_noise(rng, (h, w), (12, 12), 3)


def _shape_params(family: str, rng, radius_px: float, px: float) -> dict:
    """The random parameters of one object of `family`; widths of thin parts are 3-8 pixels at 128 px."""
    thin = lambda lo, hi: rng.uniform(lo, hi) * px / radius_px  # a half-width in units of the radius
    if family == "ellipse":
        return dict(aspect=rng.uniform(1.0, 1.8))
    if family == "rectangle":
        return dict(aspect=rng.uniform(0.8, 1.6))
    if family == "star":
        return dict(points=int(rng.integers(4, 7)), core=rng.uniform(0.3, 0.45))
    if family == "ring":
        return dict(wall=min(2 * thin(2.0, 4.0), 0.6))
    if family == "cross":
        return dict(arm=min(thin(1.5, 4.0), 0.35))
    if family == "crescent":
        return dict(shift=rng.uniform(0.35, 0.6), bite=rng.uniform(0.75, 0.9))
    if family == "bar":
        return dict(half_width=min(thin(2.5, 4.0), 0.3), bend=rng.uniform(-0.25, 0.25))
    if family == "blob":
        return dict(waves=[(rng.uniform(-0.18, 0.18), rng.uniform(0, 2 * np.pi)) for _ in range(3)],
                    hole=rng.uniform(0.2, 0.35) if rng.random() < 0.5 else 0.0)
    return {}


def _shape_mask(family: str, p: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in normalised object coordinates (the object roughly fills the unit disc)."""
    if family in ("star", "ring", "crescent", "blob"):
        rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if family == "ellipse":
        return (u / p["aspect"]) ** 2 + v ** 2 <= 1.0
    if family == "rectangle":
        return (np.abs(u) <= 0.8 * p["aspect"]) & (np.abs(v) <= 0.8 / p["aspect"])
    if family in ("triangle", "hexagon"):
        n = 3 if family == "triangle" else 6
        alphas = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
        support = np.max([u * np.cos(a) + v * np.sin(a) for a in alphas], axis=0)
        return support <= np.cos(np.pi / n)
    if family == "star":
        return rho <= p["core"] + (1 - p["core"]) * (0.5 + 0.5 * np.cos(p["points"] * phi)) ** 3
    if family == "ring":
        return (rho <= 1.0) & (rho >= 1.0 - p["wall"])
    if family == "cross":
        t = p["arm"]
        return ((np.abs(u) <= t) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= t) & (np.abs(u) <= 1.0))
    if family == "crescent":
        return (rho <= 1.0) & (np.hypot(u - p["shift"], v) > p["bite"])
    if family == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v - p["bend"] * (u ** 2 - 0.5)) <= p["half_width"])
    if family == "blob":
        radius = np.full_like(phi, 0.8)
        for k, (amp, phase) in zip((2, 3, 4), p["waves"]):
            radius += amp * np.cos(k * phi + phase)
        return (rho <= radius) & (rho >= p["hole"])
    raise ValueError(f"unknown shape family {family!r}")


def _texture(kind: str, rng, lu: np.ndarray, lv: np.ndarray, period: float) -> np.ndarray:
    """A texture in object-local pixel coordinates (rotates with the object), values in about [-1, 1]."""
    p = period * rng.uniform(0.85, 1.15)
    if kind == "stripes":
        return np.sin(2 * np.pi * lu / p)
    if kind == "checker":
        return np.sign(np.sin(np.pi * lu / p) * np.sin(np.pi * lv / p))
    if kind == "spots":
        return 2.0 * (np.cos(2 * np.pi * lu / p) * np.cos(2 * np.pi * lv / p) > 0.4) - 1.0
    if kind == "grain":
        return np.clip(ndimage.gaussian_filter(rng.normal(size=lu.shape), 0.7) * 3.0, -1.5, 1.5)
    if kind == "hatch":
        return np.maximum(np.cos(2 * np.pi * (lu + lv) / p), np.cos(2 * np.pi * (lu - lv) / p)) * 2.0 - 1.0
    if kind == "waves":
        return np.sin(2 * np.pi * (lu + 0.25 * p * np.sin(2 * np.pi * lv / (2.5 * p))) / p)
    if kind == "rings":
        return np.sin(2 * np.pi * np.hypot(lu, lv) / p)
    raise ValueError(f"unknown texture {kind!r}")


def void_band(label: np.ndarray, void_width: float) -> np.ndarray:
    """Bool [H,W]: a band of `void_width` pixels (rounded to an integer) across every label change (4-neighbour
    boundaries), like VOC's hand-drawn contours.

    The boundary runs between pixels: an even width 2m marks m pixels on each side; an odd width 2m+1 marks one
    more on the side of the greater label (width 1: the greater-label pixel of every changing pair, i.e. objects
    lose their outermost pixel to the background and the higher class loses it at class-to-class contacts).
    """
    width = int(round(float(void_width)))
    band = np.zeros(label.shape, dtype=bool)
    if width <= 0:
        return band
    greater = np.zeros(label.shape, dtype=bool)  # pixels with a 4-neighbour of a smaller label
    for axis in (0, 1):
        a = label.take(range(1, label.shape[axis]), axis=axis)
        b = label.take(range(0, label.shape[axis] - 1), axis=axis)
        lead = [slice(None)] * 2
        lead[axis] = slice(1, None)
        back = [slice(None)] * 2
        back[axis] = slice(None, -1)
        band[tuple(lead)] |= a != b
        band[tuple(back)] |= a != b
        greater[tuple(lead)] |= a > b
        greater[tuple(back)] |= b > a
    if not band.any():
        return band
    half = width // 2
    out = ndimage.distance_transform_edt(~band) + 0.5 <= half  # 0 on pixels next to a change
    if width % 2:
        out |= ndimage.distance_transform_edt(~greater) <= half
    return out


def protect_objects(band: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """band bool [H,W], instances int [H,W] (0 = background, i = object i's visible pixels) -> the band without
    the innermost pixels (largest distance to the object's outside) of every object it would cover entirely."""
    band = band.copy()
    for index in np.unique(instances[instances > 0]):
        inside = instances == index
        if band[inside].all():
            depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
            band[inside & (depth == depth[inside].max())] = False
    return band


def _coverage(family: str, shape_p: dict, cy: float, cx: float, radius: float, theta: float, h: int, w: int):
    """Anti-aliased coverage in [0, 1], float [H,W]: the fraction of a 3x3 grid of sub-pixels inside the shape."""
    reach = 1.85 * radius + 1.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, h)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, w)
    cover = np.zeros((h, w))
    if y0 >= y1 or x0 >= x1:
        return cover
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    ys = (np.arange(y0, y1)[:, None] + sub[None]).ravel()
    xs = (np.arange(x0, x1)[:, None] + sub[None]).ravel()
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / radius
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / radius
    inside = _shape_mask(family, shape_p, u, v).astype(np.float64)
    cover[y0:y1, x0:x1] = inside.reshape(y1 - y0, _SUPERSAMPLE, x1 - x0, _SUPERSAMPLE).mean(axis=(1, 3))
    return cover


def render_scene(rng: np.random.Generator, image_size: Sequence[int] = (128, 128), num_classes: int = 8,
                 noise_std: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One procedural scene before the void band -> (image uint8 [H,W,3], label uint8 [H,W] in [0, C),
    instances int32 [H,W]: 0 = background, i >= 1 = the visible pixels of the i-th painted object).

    `noise_std` is the Gaussian pixel noise on the 0-255 scale (None: drawn per image in [4, 10]).
    """
    _check_num_classes(num_classes)
    h, w = (int(s) for s in image_size)
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8x8, got {tuple(image_size)}")
    side, px = min(h, w), min(h, w) / 128.0
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    image = _background(rng, h, w)
    label = np.zeros((h, w), dtype=np.uint8)
    instances = np.zeros((h, w), dtype=np.int32)

    # Grey clutter blobs: part of the background (label 0), with the background's look at another brightness.
    for _ in range(int(rng.integers(0, 3))):
        r = side * rng.uniform(0.06, 0.15)
        alpha = _coverage("blob", _shape_params("blob", rng, r, px), rng.uniform(0, h), rng.uniform(0, w), r,
                          rng.uniform(0, 2 * np.pi), h, w)[..., None]
        image = (1 - alpha) * image + alpha * _grey(rng)

    count = int(rng.integers(8, 13))
    families = [SHAPE_FAMILIES[(k - 1) % len(SHAPE_FAMILIES)] for k in range(1, num_classes)]
    weights = np.array([FAMILY_WEIGHTS[f] for f in families])
    # Every object class once (when there are at most `count`), in random order, then weighted extras.
    first = rng.permutation(np.arange(1, num_classes))[:count]
    extra = rng.choice(np.arange(1, num_classes), size=count - len(first), p=weights / weights.sum())
    classes = np.concatenate([first, extra])
    radii = side * np.exp(rng.uniform(np.log(0.14), np.log(0.42), size=count))
    for index, i in enumerate(np.argsort(-radii, kind="stable"), start=1):  # big ones first (behind)
        k = int(classes[i])
        style = _class_style(k)
        r = float(radii[i]) * FAMILY_SCALE[style["family"]]
        if rng.random() < 0.6 and instances.any():  # against an earlier object: class-to-class boundaries
            ys, xs = np.nonzero(instances)
            j = int(rng.integers(len(ys)))
            angle = rng.uniform(0, 2 * np.pi)
            step = r * rng.uniform(0.7, 1.2)
            cy, cx = ys[j] + 0.5 + step * np.sin(angle), xs[j] + 0.5 + step * np.cos(angle)
        else:
            cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        theta = rng.uniform(0, 2 * np.pi)
        cover = _coverage(style["family"], _shape_params(style["family"], rng, r, px), cy, cx, r, theta, h, w)
        inside = cover >= 0.5
        if not inside.any():
            continue
        lu = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # object-local pixel coordinates
        lv = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        hsv = colorsys.rgb_to_hsv(*(style["colour"] / 255.0))
        colour = 255.0 * np.asarray(colorsys.hsv_to_rgb((hsv[0] + rng.uniform(-0.02, 0.02)) % 1.0, hsv[1],
                                                        np.clip(hsv[2] * rng.uniform(0.85, 1.15), 0.3, 1.0)))
        tex = _texture(style["texture"], rng, lu / px, lv / px, style["period"])
        shade = 1.0 + style["tex_amp"] * tex + rng.uniform(-0.12, 0.12) * np.clip(lu / r, -1.5, 1.5)
        paint = colour * shade[..., None]
        alpha = ndimage.gaussian_filter(cover, rng.uniform(0.3, 1.2) * px)  # a soft edge of random width
        image = (1 - alpha[..., None]) * image + alpha[..., None] * paint
        label[inside] = k
        instances[inside] = index

    blur = rng.uniform(0.7, 1.3) * px
    image = np.stack([ndimage.gaussian_filter(image[..., c], blur) for c in range(3)], axis=-1)
    noise_std = rng.uniform(4.0, 10.0) if noise_std is None else noise_std
    image = image + rng.normal(0, noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, instances


def generate_scene(rng: np.random.Generator, image_size: Sequence[int] = (128, 128), num_classes: int = 8,
                   void_width: float = DEFAULTS["void_width"],
                   noise_std: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One procedural scene -> (image uint8 [H,W,3], label uint8 [H,W] with values in [0, C) or 255).

    Deterministic given the generator's state. `void_width` (pixels, 0 = none) sets the 255 band around every
    label change (`void_band`; it never covers a whole object, `protect_objects`); `noise_std` as render_scene.
    """
    image, label, instances = render_scene(rng, image_size, num_classes, noise_std)
    label[protect_objects(void_band(label, void_width), instances)] = IGNORE_LABEL
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
    return {split: [f"{split}_{i:06d}" for i in range(int(params.get(f"num_{split}", 0)))] for split in SPLITS}


def _image_files(root: Path, image_id: str) -> tuple[Path, Path]:
    return root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"


def _split_list(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def _read_manifest(root: Path) -> dict | None:
    """The manifest at root, None when there is none; a DatasetError when it exists but cannot be read."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable synthetic-dataset manifest ({error}); delete {root} (or this file) "
                           f"to regenerate the data") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("params"), dict):
        raise DatasetError(f"{path}: not a synthetic-dataset manifest (no 'params'); delete {root} (or this file) "
                           f"to regenerate the data")
    return manifest


def _missing(root: Path, params: dict) -> list[str]:
    """Ids of `params` whose image or label file is absent, plus the split lists that are absent or wrong."""
    missing = []
    for split, ids in _split_ids(params).items():
        try:
            if _split_list(root, split).read_text().split() != ids:
                missing.append(str(_split_list(root, split).relative_to(root)))
        except OSError:
            missing.append(str(_split_list(root, split).relative_to(root)))
        missing += [i for i in ids if not all(p.is_file() for p in _image_files(root, i))]
    return missing


def _is_complete(root: Path, params: dict) -> bool:
    """True iff root holds a finished manifest with exactly `params` and every listed file (existence only)."""
    try:
        manifest = _read_manifest(root)
    except DatasetError:
        return False
    return (manifest is not None and manifest["params"] == params and manifest.get("complete") is True
            and not _missing(root, params))


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def _replace_atomically(path: Path, write) -> None:
    """write(temporary path) then rename it to `path`: readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_manifest(root: Path, manifest: dict) -> None:
    _replace_atomically(root / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))


def class_pixel_shares(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Pixel counts [C] of the valid (non-void) pixels -> {class name: share of the valid pixels}."""
    total = max(float(np.sum(counts)), 1.0)
    return {name: round(float(c) / total, 6) for name, c in zip(class_names, counts)}


PARALLEL_MIN_SCENES = 100  # fewer scenes are generated in this process (a worker's start costs ~1 s)


def _scene(params: dict, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of `split`: a pure function of (params, split, index) (its own seeded generator)."""
    return generate_scene(_scene_rng(params["seed"], split, index), params["image_size"], params["num_classes"],
                          params["void_width"])


def _scenes(params: dict, tasks: list[tuple[str, int]]):
    """The scenes of `tasks` [(split, index)] in order: generated by one worker process per core when there are
    PARALLEL_MIN_SCENES or more (spawned, not forked: the caller may hold JAX's and TensorFlow's threads), else
    here. Identical either way, since every scene seeds its own generator."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(tasks) < PARALLEL_MIN_SCENES:
        yield from (_scene(params, split, index) for split, index in tasks)
        return
    splits, indices = zip(*tasks)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(functools.partial(_scene, params), splits, indices, chunksize=16)


def _fill(root: Path, params: dict, verbose: bool, shown_root: Path) -> dict:
    """Write every file of `params` that is missing under root (others are read back, never rewritten), the
    split lists and the finished manifest; returns the manifest. Progress every ~10% for >= 100 new images."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = synthetic_class_names(params["num_classes"])
    split_ids = _split_ids(params)
    todo = {i for ids in split_ids.values() for i in ids if not all(p.is_file() for p in _image_files(root, i))}
    scenes = _scenes(params, [(split, index) for split, ids in split_ids.items()
                              for index, image_id in enumerate(ids) if image_id in todo])
    done, next_report = 0, 0.1
    shares, void_shares = {}, {}
    for split, ids in split_ids.items():
        counts = np.zeros(256, np.int64)
        for index, image_id in enumerate(ids):
            jpg, png = _image_files(root, image_id)
            if image_id in todo:
                image, label = next(scenes)
                if not jpg.is_file():  # 4:4:4 chroma: keep the colour at object borders
                    _replace_atomically(jpg, lambda p: Image.fromarray(image).save(
                        p, format="JPEG", quality=95, subsampling=0))
                if not png.is_file():
                    _replace_atomically(png, lambda p: write_label_png(p, label))
                done += 1
                if verbose and len(todo) >= 100 and done / len(todo) >= next_report - 1e-9:
                    print(f"[synthetic] {done}/{len(todo)} images ({100 * done // len(todo)}%) -> {shown_root}",
                          flush=True)
                    next_report += 0.1
            else:
                label = read_label_png(png)
            counts += np.bincount(label.ravel(), minlength=256)
        _replace_atomically(_split_list(root, split), lambda p: p.write_text("".join(f"{i}\n" for i in ids)))
        if ids:
            shares[split] = class_pixel_shares(counts[:len(names)], names)
            void_shares[split] = round(float(counts[IGNORE_LABEL]) / max(float(counts.sum()), 1.0), 6)
            if verbose:
                print(f"[synthetic] {split}: class shares of the valid pixels: "
                      + ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares[split].items())
                      + f"; void {100 * void_shares[split]:.1f}% of all pixels", flush=True)
    manifest = dict(format="semeda_jax.synthetic_voc", params=params, complete=True, class_names=names,
                    splits={s: len(ids) for s, ids in split_ids.items()}, class_pixel_shares=shares,
                    void_share=void_shares)
    _write_manifest(root, manifest)  # written last
    return manifest


def _regenerate_in_place(root: Path, manifest: dict, params: dict, verbose: bool) -> None:
    """Bring a synthetic root (it has a manifest) to `params`, touching only files the generator writes.

    Same parameters: only the missing files are generated. Other parameters: the images and labels of the old
    parameters (and of any earlier interrupted change, `previous_params`) are deleted first, the manifest
    recording what is in flight, so an interrupted run is finished by the next one. Files the generator does not
    write are never deleted. Not safe against concurrent writers (the fresh-folder path is).
    """
    previous = [p for p in [manifest["params"], *manifest.get("previous_params", [])]
                if isinstance(p, dict) and p != params]
    if previous:
        if verbose:
            print(f"[synthetic] {root}: holds data of other parameters; replacing the generated files only",
                  flush=True)
        _write_manifest(root, dict(format="semeda_jax.synthetic_voc", params=params, complete=False,
                                   previous_params=previous))
        for old in previous:
            for ids in _split_ids(old).values():
                for image_id in ids:
                    for path in _image_files(root, image_id):
                        path.unlink(missing_ok=True)
        _write_manifest(root, dict(format="semeda_jax.synthetic_voc", params=params, complete=False))
    elif verbose:
        missing = _missing(root, params)
        print(f"[synthetic] {root}: {len(missing)} listed file(s) missing (e.g. {missing[0]}); regenerating "
              f"only those" if missing else f"[synthetic] {root}: finishing an interrupted generation", flush=True)
    _fill(root, params, verbose, root)


def write_synthetic_voc(root: str | os.PathLike, *, num_train: int = DEFAULTS["num_train"],
                        num_val: int = DEFAULTS["num_val"], image_size: Sequence[int] = DEFAULTS["image_size"],
                        num_classes: int = DEFAULTS["num_classes"], void_width: float = DEFAULTS["void_width"],
                        seed: int = DEFAULTS["seed"], verbose: bool = True) -> Path:
    """Generate the synthetic dataset in the VOC layout at `root` and return `root` (a Path).

    Idempotent: if `root/synthetic.json` holds the same parameters and every listed file exists, nothing is
    written. A new (absent or empty) root is generated in a hidden sibling temp folder renamed to `root` when
    complete, so an interrupted run never leaves a half dataset (concurrent writers, e.g. several hosts, are
    safe: the first rename wins, the others discard their copy). A synthetic root with files missing gets only
    those files; one with other parameters gets its generated files replaced (`_regenerate_in_place`); files the
    generator did not write are never deleted. A non-empty `root` without a manifest is refused (it may be real
    data).
    """
    root = Path(root).expanduser().absolute()
    params = _params(num_train, num_val, image_size, num_classes, void_width, seed)
    if _is_complete(root, params):
        return root
    manifest = _read_manifest(root) if root.is_dir() else None
    if manifest is not None:
        _regenerate_in_place(root, manifest, params, verbose)
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"{root}: exists and is not a synthetic dataset (no {MANIFEST}); refusing to overwrite "
                           f"it. Choose another folder for the synthetic data.")
    root.parent.mkdir(parents=True, exist_ok=True)
    if verbose:
        n = params["num_train"] + params["num_val"]
        print(f"[synthetic] generating {n} images of {params['image_size']} with {params['num_classes']} classes "
              f"-> {root}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _fill(tmp, params, verbose, root)
        if root.exists():  # an empty folder: remove it, then swap in the new one
            try:
                root.rmdir()
            except FileNotFoundError:
                pass  # another writer's rename already replaced it
            except OSError:
                pass  # another writer's complete copy is there now: checked below
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root, params):  # lost a race to a writer with other parameters
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
