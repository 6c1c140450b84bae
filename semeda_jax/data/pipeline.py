"""Host-side tf.data input pipelines (one per process), deterministic for a given seed.

Training stream (per process p of P, local batch B, seed s):
  * the split's ids are sharded like `Dataset.shard(P, p)`: process p reads ids[p::P] (disjoint, covering);
  * element g = 0, 1, 2, ... of the (infinite) stream is file `local[perm_e(g mod n)]` with epoch e = g // n,
    where perm_e is an exact permutation of the n local files computed statelessly by
    `tf.random.experimental.index_shuffle` with seed (s, -(e*P + p) - 1): every epoch visits every local file
    once, in a new order, without a shuffle buffer;
  * all augmentation randomness of element g (scale, crop offsets, flip) comes from
    `tf.random.stateless_uniform` with seed (s, g*P + p), so it does not depend on threads, timing or history;
  * batch k holds elements kB .. kB+B-1.
Hence the stream is a pure function of (seed, files, P, p, B): identical across runs, and resuming at step k is
`train_dataset(..., start_step=k)`, which starts the element counter at kB and costs nothing (no decoding of
the skipped batches). `train_dataset(...).skip(k)` yields bitwise the same batches but decodes the k skipped
ones first; prefer `start_step`.

Augmentation order (DeepLab-style): decode -> random scale (image bilinear, label nearest) -> normalise
((x - mean) / std) -> pad bottom/right to at least the crop size (image with 0 = the mean colour, label with 255)
-> random crop -> random horizontal flip.

Evaluation: full images, normalised, padded bottom/right to a fixed `pad_size` (image 0 = mean colour, label 255
so metrics ignore padding) so one compiled eval step serves every batch; "height"/"width" give the original size
(the valid region is [:height, :width]). The last batch is filled with all-void dummy examples whose "mask" is
False (height = width = 0, id ""), and every process yields the same number of batches, so no image is dropped
or counted twice and a global jitted eval step sees the same shapes everywhere.

`input_scale` s (SEMEDA's half-resolution Cityscapes for DeepLab v2: s = 0.5) resizes what the network sees:
training multiplies the random scale by s (labels follow, nearest); evaluation resizes the image by s (bilinear,
antialiased) and pads it to scaled_size(pad_size, s), while labels stay at full resolution, so metrics are those
of the full-resolution labels, with the logits upsampled to them (evaluate.py).

Usage:
    ds = train_dataset(reader, crop_size=(321, 321), batch_size=8, seed=0, start_step=step)
    for batch in ds.as_numpy_iterator():   # {"image": f32 [B,H,W,3], "label": i32 [B,H,W]}
        ...
"""
from __future__ import annotations

import math
import weakref
from typing import Sequence

import numpy as np
import tensorflow as tf

from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from semeda_jax.data.reader import image_hw

# ImageNet statistics on the 0-255 scale (RGB).
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)
AUTOTUNE = tf.data.AUTOTUNE


def pipeline_options() -> tf.data.Options:
    """Deterministic order, and no autotuning: an `AUTOTUNE` parallelism is then the host's core count.

    Why: with autotuning on, deleting an iterator waits for tf.data's optimisation thread, which sleeps up to
    its current period (it grows to a minute); each stage's end of the main job stalled 0-40 s there
    (seen in the iterator's destructor, `RootDataset::Iterator::~Iterator`, docs/benchmarks.md)."""
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return options


def shard_ids(ids: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """The ids process `process_index` reads: ids[process_index::process_count] (as Dataset.shard)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}")
    return list(ids)[process_index::process_count]


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """(H, W) -> (max(1, round(H * scale)), max(1, round(W * scale))): the image size at `input_scale`."""
    return tuple(max(1, round(int(n) * float(scale))) for n in size)


def scaled_dim(n: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """In-graph max(1, round(n * scale)) as int32, computed in scale's float dtype (scaled_size's twin)."""
    return tf.maximum(1, tf.cast(tf.round(tf.cast(n, scale.dtype) * scale), tf.int32))


def _check_input_scale(input_scale: float) -> float:
    if not float(input_scale) > 0:
        raise ValueError(f"input_scale must be > 0, got {input_scale!r}")
    return float(input_scale)


def _pair(name: str, value) -> tuple[int, int]:
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be two positive ints (H, W), got {value}")
    return value


def _decode(image_path: tf.Tensor, label_path: tf.Tensor, decode_label) -> tuple[tf.Tensor, tf.Tensor]:
    """-> image uint8 [h,w,3], label uint8 [h,w].

    Labels go through the reader's `decode_label(path: str) -> uint8 [h,w]` hook (Pillow, in
    tf.numpy_function): TF decodes palette PNGs to RGB, and some datasets map their label codes there. A label
    whose size differs from its image's raises DatasetError naming both files there. An image TF cannot decode
    fails without its path (a TF op error); main.py then names it (reader.find_bad_file).
    """
    contents = tf.io.read_file(image_path)
    # JPEG with the accurate integer IDCT (as Pillow/libjpeg's default; TF's default is the fast, coarser one);
    # anything else (PNG, e.g. for Cityscapes) through decode_image.
    image = tf.cond(tf.io.is_jpeg(contents),
                    lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))

    def load_label(path, image_size, image_file):
        label = decode_label(path.decode("utf-8"))
        if label.shape != tuple(image_size):
            raise DatasetError(f"{path.decode()}: label size {label.shape[0]}x{label.shape[1]} differs from the "
                               f"image {image_file.decode()} size {image_size[0]}x{image_size[1]}")
        return label

    label = tf.numpy_function(load_label, [label_path, tf.shape(image)[:2], image_path], tf.uint8, stateful=False)
    label.set_shape([None, None])
    return image, label


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
    return (tf.cast(image, tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def denormalize(image: np.ndarray, mean: Sequence[float] = DEFAULT_MEAN,
                std: Sequence[float] = DEFAULT_STD) -> np.ndarray:
    """Normalised float image [..., 3] -> uint8 RGB [..., 3] (for plots): x * std + mean, rounded and clipped."""
    image = np.asarray(image, dtype=np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def train_dataset(reader, *, crop_size: Sequence[int], batch_size: int,
                  scale_range: Sequence[float] = (0.5, 2.0), mean: Sequence[float] = DEFAULT_MEAN,
                  std: Sequence[float] = DEFAULT_STD, seed: int = 0, process_index: int = 0,
                  process_count: int = 1, start_step: int = 0, shuffle_buffer: int | None = None,
                  input_scale: float = 1.0, prefetch: int = 2, num_parallel_calls: int = AUTOTUNE,
                  check: bool = True) -> tf.data.Dataset:
    """Infinite, deterministic training batches for this process.

    reader: a data.reader.SegmentationReader (ids, image_path, label_path, decode_label, check).
    crop_size (H, W); batch_size is per process. Elements: {"image": float32 [B,H,W,3] normalised,
    "label": int32 [B,H,W] in [0, C) or 255}. `start_step=k` starts at batch k (bitwise equal to `.skip(k)`).
    `shuffle_buffer` is accepted for config compatibility and unused: the order is an exact stateless
    per-epoch permutation (module docstring). `check` runs reader.check() first (existence of every file).
    `input_scale` multiplies every random scale (images and labels at that resolution).
    """
    crop_h, crop_w = _pair("crop_size", crop_size)
    lo, hi = (float(s) for s in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < min <= max, got {tuple(scale_range)}")
    input_scale = _check_input_scale(input_scale)
    lo, hi = lo * input_scale, hi * input_scale
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"need batch_size >= 1 and start_step >= 0, got {batch_size}, {start_step}")
    del shuffle_buffer
    ids = reader.check().ids if check else reader.ids
    local = shard_ids(ids, process_index, process_count)
    if not local:
        raise DatasetError(f"{reader}: process {process_index} of {process_count} gets no files "
                           f"({len(ids)} ids in the split)")
    n = len(local)
    image_paths = tf.constant([reader.image_path(i) for i in local])
    label_paths = tf.constant([reader.label_path(i) for i in local])
    seed_t = tf.constant(int(seed), tf.int64)
    count_t, index_t = tf.constant(process_count, tf.int64), tf.constant(process_index, tf.int64)

    def element(g):
        epoch, pos = g // n, g % n
        order_seed = tf.stack([seed_t, -(epoch * count_t + index_t) - 1])
        file_index = tf.random.experimental.index_shuffle(pos, order_seed, tf.constant(n - 1, tf.int64))
        image, label = _decode(tf.gather(image_paths, file_index), tf.gather(label_paths, file_index),
                               reader.decode_label)
        u = tf.random.stateless_uniform([4], seed=tf.stack([seed_t, g * count_t + index_t]), dtype=tf.float32)

        h, w = tf.shape(image)[0], tf.shape(image)[1]
        scale = lo + u[0] * (hi - lo)
        new_h, new_w = scaled_dim(h, scale), scaled_dim(w, scale)
        image = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w], method="bilinear")
        label = tf.image.resize(label[..., None], [new_h, new_w], method="nearest")[..., 0]

        image = normalize(image, mean, std)
        pad_h, pad_w = tf.maximum(crop_h - new_h, 0), tf.maximum(crop_w - new_w, 0)
        image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])  # 0 after normalisation = the mean colour
        label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_LABEL)

        range_h, range_w = new_h + pad_h - crop_h, new_w + pad_w - crop_w
        top = tf.minimum(tf.cast(u[1] * tf.cast(range_h + 1, tf.float32), tf.int32), range_h)
        left = tf.minimum(tf.cast(u[2] * tf.cast(range_w + 1, tf.float32), tf.int32), range_w)
        image = image[top:top + crop_h, left:left + crop_w]
        label = label[top:top + crop_h, left:left + crop_w]

        flip = u[3] < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
        image = tf.ensure_shape(image, [crop_h, crop_w, 3])
        label = tf.ensure_shape(tf.cast(label, tf.int32), [crop_h, crop_w])
        return {"image": image, "label": label}

    ds = tf.data.Dataset.counter(start=int(start_step) * int(batch_size), dtype=tf.int64)
    ds = ds.map(element, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.with_options(pipeline_options()).prefetch(prefetch)


def check_pad_size(reader, pad_size: Sequence[int], ids: Sequence[str] | None = None,
                   name: str = "pad_size") -> None:
    """DatasetError naming `name`, the first image that does not fit and the size needed, unless every image of
    `ids` (default: the split) fits in `pad_size` (H, W). Reads the image headers only."""
    pad_h, pad_w = _pair(name, pad_size)
    sizes = {image_id: image_hw(reader.image_path(image_id)) for image_id in (reader.ids if ids is None else ids)}
    too_big = [image_id for image_id, (h, w) in sizes.items() if h > pad_h or w > pad_w]
    if too_big:
        h, w = sizes[too_big[0]]
        need_h, need_w = max(h for h, _ in sizes.values()), max(w for _, w in sizes.values())
        raise DatasetError(f"{name}: {pad_h}x{pad_w} is smaller than {len(too_big)} image(s) of split "
                           f"{reader.split!r}, e.g. {reader.image_path(too_big[0])} ({h}x{w}); set it to at least "
                           f"{max(need_h, pad_h)}x{max(need_w, pad_w)}")


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Batches every process yields in eval_dataset: ceil(ceil(N / P) / B) (the largest shard decides)."""
    return math.ceil(math.ceil(num_examples / process_count) / batch_size)


# reader -> {(pad_size, process_index, process_count)} that eval_dataset has checked: the files of a split are
# checked at its first evaluation, not again at every periodic one (a reader lives for one run).
_EVAL_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def eval_dataset(reader, *, pad_size: Sequence[int], batch_size: int, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, process_index: int = 0, process_count: int = 1,
                 input_scale: float = 1.0, prefetch: int = 2, num_parallel_calls: int = AUTOTUNE,
                 check: bool = True) -> tf.data.Dataset:
    """Finite evaluation batches of full images padded to `pad_size`, each local image exactly once.

    Elements: {"image": float32 [B,SH,SW,3] (normalised, resized by `input_scale`, padding 0; (SH, SW) =
    scaled_size((PH, PW), input_scale), = (PH, PW) at scale 1), "label": int32 [B,PH,PW] (padding 255),
    "height", "width": int32 [B] (original size), "id": string [B], "mask": bool [B] (False for the all-void
    filler examples completing the last batch)}. Every process yields num_eval_batches(N, B, P) batches.
    An image larger than pad_size raises DatasetError naming the file (checked from the image headers before
    anything is decoded when `check` is set, once per reader, pad size and shard; asserted in the graph always).
    """
    pad_h, pad_w = _pair("pad_size", pad_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    input_scale = _check_input_scale(input_scale)
    image_pad_h, image_pad_w = scaled_size((pad_h, pad_w), input_scale)
    checked = _EVAL_CHECKED.setdefault(reader, set())
    check = check and (pad_h, pad_w, process_index, process_count) not in checked
    ids = reader.check().ids if check else reader.ids
    local = shard_ids(ids, process_index, process_count)
    if check:
        check_pad_size(reader, pad_size, local)
        checked.add((pad_h, pad_w, process_index, process_count))
    total = num_eval_batches(len(ids), batch_size, process_count) * batch_size
    num_fill = total - len(local)

    def element(image_path, label_path, image_id):
        image, label = _decode(image_path, label_path, reader.decode_label)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        fits = tf.logical_and(h <= pad_h, w <= pad_w)
        with tf.control_dependencies([tf.debugging.Assert(
                fits, ["image larger than pad_size", image_path, tf.shape(image), [pad_h, pad_w]])]):
            h = tf.identity(h)
        image_h, image_w = h, w
        if input_scale != 1.0:
            scale = tf.constant(input_scale, tf.float64)
            image_h, image_w = scaled_dim(h, scale), scaled_dim(w, scale)
            image = tf.image.resize(tf.cast(image, tf.float32), [image_h, image_w], method="bilinear",
                                    antialias=True)
        image = tf.pad(normalize(image, mean, std), [[0, image_pad_h - image_h], [0, image_pad_w - image_w], [0, 0]])
        label = tf.pad(label, [[0, pad_h - h], [0, pad_w - w]], constant_values=IGNORE_LABEL)
        return {"image": tf.ensure_shape(image, [image_pad_h, image_pad_w, 3]),
                "label": tf.ensure_shape(tf.cast(label, tf.int32), [pad_h, pad_w]),
                "height": h, "width": w, "id": image_id, "mask": tf.constant(True)}

    ds = tf.data.Dataset.from_tensor_slices((
        tf.constant([reader.image_path(i) for i in local], tf.string),
        tf.constant([reader.label_path(i) for i in local], tf.string),
        tf.constant(list(local), tf.string)))
    ds = ds.map(element, num_parallel_calls=num_parallel_calls, deterministic=True)
    filler = {"image": tf.zeros([image_pad_h, image_pad_w, 3], tf.float32),
              "label": tf.fill([pad_h, pad_w], tf.constant(IGNORE_LABEL, tf.int32)),
              "height": tf.constant(0, tf.int32), "width": tf.constant(0, tf.int32),
              "id": tf.constant("", tf.string), "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(num_fill))
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.with_options(pipeline_options()).prefetch(prefetch)
