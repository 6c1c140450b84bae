"""Prediction on a folder of images: a colourised palette PNG mask and an entropy map per image.

    python -m semeda_jax.main --config=configs/demo.py --workdir=DIR --images=FOLDER
writes, for every image file <name> of FOLDER (e.g. `a.jpg`),
    DIR/predictions/<name>.png          palette PNG: the class index map with the VOC colours (`a.jpg.png`)
    DIR/predictions/entropy/<name>.png  per-pixel prediction entropy / log C, magma colour map, bright = unsure
The input's extension stays in the output name, so `a.jpg` and `a.png` get two masks, and entropy maps live in
their own folder, so no input's mask can replace another input's entropy map.

Every mode Pillow opens becomes 8-bit RGB the way it is displayed: EXIF orientation applied, 16-bit grey scaled
to 8 bits (v / 257), palette, grey, grey + alpha and CMYK converted (alpha dropped). A file that cannot be read,
or holds 32-bit integer / float pixels (no fixed range), is skipped with a warning naming it; the rest of the
folder is predicted, and `predict_folder` reports the skipped files so the command can end with an error.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image, ImageOps

from semeda_jax import inference, metrics
from semeda_jax.data import pipeline
from semeda_jax.data.palette import write_label_png
from semeda_jax.validation import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ENTROPY_FOLDER = "entropy"


def list_images(folder: str) -> list[str]:
    """Sorted image files of `folder`; FileNotFoundError names the folder when there is none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images: {folder} is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise FileNotFoundError(f"--images: {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [os.path.join(folder, n) for n in names]


def to_rgb8(image: Image.Image, path: str) -> np.ndarray:
    """A decoded Pillow image -> uint8 RGB [H,W,3] (16-bit grey scaled by 1/257, palette / grey / CMYK
    converted, alpha dropped); InputError naming `path` for 32-bit integer or float pixels."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.rint(np.asarray(image, np.float64) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        raise InputError(f"{path}: {image.mode!r} images (32-bit {'float' if image.mode == 'F' else 'integer'} "
                         f"pixels) have no fixed range; save it as 8- or 16-bit")
    return np.asarray(image.convert("RGB"), np.uint8)


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB [H,W,3] of an image file as displayed (EXIF orientation applied, then to_rgb8); InputError
    naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: cannot read the image ({error})") from None
    return to_rgb8(image, path)


def output_paths(out_dir: str, image_path: str) -> tuple[str, str]:
    """(mask path, entropy-map path) of an input image: <out_dir>/<file name>.png and
    <out_dir>/entropy/<file name>.png, unique per input file name."""
    name = os.path.basename(image_path) + ".png"
    return os.path.join(out_dir, name), os.path.join(out_dir, ENTROPY_FOLDER, name)


def predict_folder(state, folder: str, out_dir: str, *, mean, std, input_scale: float = 1.0,
                   log: Callable[[str], None] = print, predict_fn=None) -> tuple[list[str], list[str]]:
    """Predict every image of `folder` (one at a time, any size) into `out_dir` -> (mask paths written,
    skipped input paths). The network sees each image resized by `input_scale` (bilinear); masks come out at
    the image's own size. `predict_fn(variables, images, size) -> probabilities` is the inference
    (inference.py; default whole image, single scale). An unreadable image is skipped with a warning naming it."""
    os.makedirs(os.path.join(out_dir, ENTROPY_FOLDER), exist_ok=True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict_fn = predict_fn or inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn)

    @functools.partial(jax.jit, static_argnames="size")
    def infer(images, size):
        probs = predict_fn(variables, images, size)
        return probs.argmax(-1), metrics.prediction_entropy(jnp.log(probs), normalize=True)

    colormap = matplotlib.colormaps["magma"]
    written, skipped = [], []
    for path in list_images(folder):
        try:
            rgb = read_rgb(path)
        except InputError as error:
            log(f"[predict] warning: skipped {error}")
            skipped.append(path)
            continue
        size = rgb.shape[:2]
        if input_scale != 1.0:
            rgb = np.asarray(Image.fromarray(rgb).resize(pipeline.scaled_size(size, input_scale)[::-1],
                                                         Image.BILINEAR))
        normalised = (rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        prediction, entropy = jax.device_get(infer(normalised[None], size))
        mask_path, entropy_path = output_paths(out_dir, path)
        write_label_png(mask_path, prediction[0].astype(np.uint8))
        Image.fromarray((colormap(entropy[0])[..., :3] * 255).astype(np.uint8)).save(entropy_path)
        written.append(mask_path)
    log(f"[predict] {len(written)} masks written to {out_dir} (entropy maps in {ENTROPY_FOLDER}/)"
        + (f"; {len(skipped)} unreadable file(s) skipped" if skipped else ""))
    return written, skipped
