"""Prediction on a folder of images: a colourised palette PNG mask and an entropy map per image.

    python -m semeda_jax.main --config=configs/demo.py --workdir=DIR --images=FOLDER
writes DIR/predictions/<name>.png (palette PNG: the class index map with the VOC colours) and
DIR/predictions/<name>_entropy.png (per-pixel prediction entropy / log C, magma colour map, bright = unsure).
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import matplotlib
import numpy as np
from PIL import Image

from semeda_jax import evaluate, metrics
from semeda_jax.data import pipeline
from semeda_jax.data.palette import write_label_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: str) -> list[str]:
    """Sorted image files of `folder`; FileNotFoundError names the folder when there is none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images: {folder} is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise FileNotFoundError(f"--images: {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [os.path.join(folder, n) for n in names]


def predict_folder(state, folder: str, out_dir: str, *, mean, std, input_scale: float = 1.0,
                   log: Callable[[str], None] = print) -> list[str]:
    """Predict every image of `folder` (one at a time, any size) into `out_dir`; returns the mask paths.
    The network sees each image resized by `input_scale` (bilinear); masks come out at the image's own size."""
    os.makedirs(out_dir, exist_ok=True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    @functools.partial(jax.jit, static_argnames="size")
    def infer(images, size):
        logits = evaluate.predict_logits(state.apply_fn, variables, images, size)
        return logits.argmax(-1), metrics.prediction_entropy(logits, normalize=True)

    colormap = matplotlib.colormaps["magma"]
    written = []
    for path in list_images(folder):
        with Image.open(path) as image:
            image = image.convert("RGB")
            size = image.size[::-1]
            if input_scale != 1.0:
                image = image.resize(pipeline.scaled_size(size, input_scale)[::-1], Image.BILINEAR)
            rgb = np.asarray(image, np.float32)
        normalised = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        prediction, entropy = jax.device_get(infer(normalised[None], size))
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(out_dir, f"{stem}.png")
        write_label_png(mask_path, prediction[0].astype(np.uint8))
        Image.fromarray((colormap(entropy[0])[..., :3] * 255).astype(np.uint8)).save(
            os.path.join(out_dir, f"{stem}_entropy.png"))
        written.append(mask_path)
    log(f"[predict] {len(written)} masks and entropy maps written to {out_dir}")
    return written
