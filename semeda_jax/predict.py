"""Prediction on a folder of images: a colourised palette PNG mask and an entropy map per image.

    python -m semeda_jax.main --config=configs/demo.py --workdir=DIR --images=FOLDER
writes, for every image file <name> of FOLDER (e.g. `a.jpg`),
    DIR/predictions/<name>.png          palette PNG: the class index map with the VOC colours (`a.jpg.png`)
    DIR/predictions/entropy/<name>.png  per-pixel prediction entropy / log C, magma colour map, bright = unsure
The input's extension stays in the output name, so `a.jpg` and `a.png` get two masks, and entropy maps live in
their own folder, so no input's mask can replace another input's entropy map.

Every file of FOLDER (hidden ones, `.name`, aside) is tried with Pillow, so every format it reads is predicted
(JPEG, PNG, TIFF, WebP, BMP, GIF, ... whatever the suffix's case). Every mode Pillow opens becomes 8-bit RGB the
way it is displayed: EXIF orientation applied, 16-bit grey scaled to 8 bits (v / 257), palette, grey, grey +
alpha and CMYK converted (alpha dropped). A file that cannot be read (not an image, corrupt, truncated), or
holds 32-bit integer / float pixels (no fixed range), is skipped with a warning naming it; the rest of the
folder is predicted, and `predict_folder` reports the skipped files so the command can end with an error.

Size buckets: the network sees each image padded bottom / right to its bucket (`bucket_size`: each side
rounded up to a multiple of max(64, 2^(floor(log2 n) - 3)): the padding is under max(64 px, 1/8 of the side)),
exactly as eval pads to config.data.eval_pad_size: the normalised image padded with 0 (the mean colour), the
probabilities made at the padded size and cropped back to the image. A mask therefore equals the eval stage's
prediction of the same image when eval_pad_size is the image's bucket (at input_scale 1; predict resizes with
Pillow, eval with TensorFlow). One compilation per bucket, the weights an argument: a folder of mixed sizes
compiles once per distinct bucket (8 sides up to 512 px, then 8 per octave), not once per size.

SIGTERM stops the folder before the next image (predict_folder holds a preemption.StopSignal) with `Preempted`:
the masks written so far stay, and rerunning the command predicts the whole folder again (the masks are rewritten).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image, ImageOps

from semeda_jax import inference, metrics, preemption
from semeda_jax.data import pipeline
from semeda_jax.data.palette import write_label_png
from semeda_jax.validation import InputError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ENTROPY_FOLDER = "entropy"
MIN_BUCKET_STEP = 64  # bucket step of the sides below 1024 px; from 1024 on, 2^(floor(log2 n) - 3)


def list_images(folder: str) -> list[str]:
    """Sorted paths of the files of `folder` but hidden ones (each is tried as an image); FileNotFoundError
    names the folder when it is not one or holds no file."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images: {folder} is not a folder")
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise FileNotFoundError(f"--images: {folder} holds no file (expected images Pillow reads)")
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
    naming the file if Pillow cannot read it."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: cannot read the image ({error})") from None
    return to_rgb8(image, path)


def output_paths(out_dir: str, image_path: str) -> tuple[str, str]:
    """(mask path, entropy-map path) of an input image: <out_dir>/<file name>.png and
    <out_dir>/entropy/<file name>.png, unique per input file name."""
    name = os.path.basename(image_path) + ".png"
    return os.path.join(out_dir, name), os.path.join(out_dir, ENTROPY_FOLDER, name)


def bucket_size(size: Sequence[int]) -> tuple[int, int]:
    """(H, W) -> the padded size the network sees: each side n rounded up to a multiple of
    max(MIN_BUCKET_STEP, 2^(floor(log2 n) - 3)), e.g. 40 -> 64, 500 -> 512, 1080 -> 1152, 3024 -> 3072."""
    def side(n: int) -> int:
        step = max(MIN_BUCKET_STEP, 1 << max(n.bit_length() - 4, 0))
        return -(-n // step) * step

    return tuple(side(int(n)) for n in size)


def build_infer(predict_fn) -> Callable:
    """-> infer(variables, images [1,SH,SW,3], size (PH, PW)) -> (class map int [1,PH,PW], entropy / log C
    [1,PH,PW]), jitted with `size` static: one compilation per padded size, the weights an argument."""
    @functools.partial(jax.jit, static_argnames="size")
    def infer(variables, images, size):
        probs = predict_fn(variables, images, size)
        return probs.argmax(-1), metrics.prediction_entropy(jnp.log(probs), normalize=True)

    return infer


def predict_image(infer, variables, rgb: np.ndarray, *, mean, std, input_scale: float = 1.0):
    """uint8 RGB [H,W,3] -> (class map [H,W], entropy / log C [H,W]) through its size bucket (module docstring):
    resized by `input_scale` (Pillow, bilinear), normalised, padded with 0 to scaled_size(bucket, input_scale),
    predicted at the bucket's size and cropped to [H, W]."""
    size = rgb.shape[:2]
    bucket = bucket_size(size)
    if input_scale != 1.0:
        rgb = np.asarray(Image.fromarray(rgb).resize(pipeline.scaled_size(size, input_scale)[::-1], Image.BILINEAR))
    padded = np.zeros((1, *pipeline.scaled_size(bucket, input_scale), 3), np.float32)
    padded[0, :rgb.shape[0], :rgb.shape[1]] = ((rgb.astype(np.float32) - np.asarray(mean, np.float32))
                                               / np.asarray(std, np.float32))
    prediction, entropy = jax.device_get(infer(variables, padded, bucket))
    return prediction[0, :size[0], :size[1]], entropy[0, :size[0], :size[1]]


class Preempted(preemption.Preempted):
    """SIGTERM stopped the predict stage between two images (the masks written so far stay)."""

    def __init__(self, done: int, total: int, out_dir: str):
        super().__init__(stage="predict")
        self.args = (f"preempted (SIGTERM) after {done} of {total} files; the masks written so far are in "
                     f"{out_dir}, rerun the same command to predict the folder again",)


def predict_folder(state, folder: str, out_dir: str, *, mean, std, input_scale: float = 1.0,
                   log: Callable[[str], None] = print, predict_fn=None) -> tuple[list[str], list[str]]:
    """Predict every image of `folder` (one at a time, any size, through its size bucket) into `out_dir` ->
    (mask paths written, skipped input paths). The network sees each image resized by `input_scale`
    (bilinear); masks come out at the image's own size. `predict_fn(variables, images, size) -> probabilities`
    is the inference (inference.py; default whole image, single scale). An unreadable file is skipped with a
    warning naming it; SIGTERM raises Preempted before the next image."""
    paths = list_images(folder)
    os.makedirs(os.path.join(out_dir, ENTROPY_FOLDER), exist_ok=True)
    # One image at a time runs on one device: the first local copy of the (replicated) checkpoint, also on a mesh.
    variables = jax.tree_util.tree_map(lambda x: x.addressable_data(0),
                                       {"params": state.params, "batch_stats": state.batch_stats})
    infer = build_infer(predict_fn or inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn))
    colormap = matplotlib.colormaps["magma"]
    written, skipped = [], []
    with preemption.StopSignal() as stop:
        for done, path in enumerate(paths):
            if stop.should_stop():
                raise Preempted(done, len(paths), out_dir)
            try:
                rgb = read_rgb(path)
            except InputError as error:
                log(f"[predict] warning: skipped {error}")
                skipped.append(path)
                continue
            prediction, entropy = predict_image(infer, variables, rgb, mean=mean, std=std, input_scale=input_scale)
            mask_path, entropy_path = output_paths(out_dir, path)
            write_label_png(mask_path, prediction.astype(np.uint8))
            Image.fromarray((colormap(entropy)[..., :3] * 255).astype(np.uint8)).save(entropy_path)
            written.append(mask_path)
    log(f"[predict] {len(written)} masks written to {out_dir} (entropy maps in {ENTROPY_FOLDER}/)"
        + (f"; {len(skipped)} unreadable file(s) skipped" if skipped else ""))
    return written, skipped
