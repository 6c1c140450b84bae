"""Pascal VOC colour map and palette ("P" mode) PNG label files.

VOC stores segmentation labels as 8-bit palette PNGs: the pixel values are class indices (0..20, void 255) and
the palette only colours them for viewing. TensorFlow's PNG decoder expands palettes to RGB, so labels are read
with Pillow here (the tf.data pipeline calls `read_label_png` through `tf.numpy_function`).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from semeda_jax.data.errors import DatasetError

# PNG modes whose pixel values are class indices. "P": VOC SegmentationClass; "L": SBD/"SegmentationClassAug".
LABEL_PNG_MODES = ("P", "L")


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC colour map, uint8 [n,3], from the devkit's bit-interleaving (bitget) algorithm.

    0 -> (0,0,0) background, 1 -> (128,0,0) aeroplane, ..., 255 -> (224,224,192) void.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_COLORMAP = voc_colormap(256)


def colorize(label: np.ndarray, colormap: np.ndarray = VOC_COLORMAP) -> np.ndarray:
    """Class map int [H,W] (values 0..255) -> RGB uint8 [H,W,3] with the VOC colours (void 255 is cream)."""
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"colorize: expected an integer class map, got dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() >= len(colormap)):
        raise ValueError(f"colorize: values must lie in [0, {len(colormap)}), got [{label.min()}, {label.max()}]")
    return colormap[label]


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write a class map uint8 [H,W] as a palette PNG with the VOC palette (the pixel values are unchanged)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"write_label_png({path}): expected a [H,W] class map, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"write_label_png({path}): values must fit in uint8, got [{label.min()}, {label.max()}]")
    label = np.ascontiguousarray(label, dtype=np.uint8)
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())  # pixel values = indices
    image.putpalette(VOC_COLORMAP.tobytes())
    image.save(path, format="PNG")


def read_label_png(path: str | os.PathLike | bytes) -> np.ndarray:
    """Read a label PNG -> class indices uint8 [H,W].

    Accepts palette ("P", VOC SegmentationClass) and grayscale ("L", SBD-style) PNGs; the palette is ignored.
    Anything else (an RGB colour-coded mask, 16-bit PNG, ...) raises DatasetError naming the file, because its
    pixel values are not class indices.
    """
    if isinstance(path, bytes):  # what tf.numpy_function passes for a tf.string
        path = path.decode("utf-8")
    try:
        with Image.open(path) as image:
            mode, fmt = image.mode, image.format
            if fmt != "PNG" or mode not in LABEL_PNG_MODES:
                raise DatasetError(
                    f"{path}: a label must be a palette (mode 'P') or grayscale (mode 'L') PNG holding class "
                    f"indices; got a {fmt} image of mode {mode!r}. (An RGB colour-coded mask has to be mapped "
                    f"back to indices first.)")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except DatasetError:
        raise
    except OSError as e:  # Pillow's UnidentifiedImageError and truncated files
        raise DatasetError(f"{path}: cannot read the label PNG ({e})") from None
