"""Data layer: palette PNGs, VOC reader, tf.data train/eval pipelines (the synthetic generator: test_synthetic.py)."""
import ast
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from semeda_jax import data
from semeda_jax.data.errors import IGNORE_LABEL, DatasetError

SIZE = (48, 64)
C = 6


def _make_voc(root, sizes, num_classes=C, split="val", value=None):
    """A hand-made VOC-layout dataset with images of the given (H, W) sizes."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (h, w) in enumerate(sizes):
        image_id = f"img{i}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[:2] = IGNORE_LABEL
        if value is not None and i == len(sizes) - 1:
            label[5, 5] = value
        data.write_label_png(root / "SegmentationClass" / f"{image_id}.png", label)
        ids.append(image_id)
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return data.VOCSegmentation(root, split, num_classes)


# ----------------------------------------------------------------------------------------------- palette

def test_voc_colormap_and_palette_png(tmp_path):
    cmap = data.voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0) and tuple(cmap[1]) == (128, 0, 0) and tuple(cmap[15]) == (192, 128, 128)
    assert tuple(cmap[255]) == (224, 224, 192)
    label = np.array([[0, 1, 2], [20, 255, 7]], np.uint8)
    path = tmp_path / "l.png"
    data.write_label_png(path, label)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im.getpalette(), np.uint8).reshape(-1, 3)[:256], cmap)
    np.testing.assert_array_equal(data.read_label_png(path), label)
    np.testing.assert_array_equal(data.colorize(label), cmap[label])
    Image.fromarray(label).save(tmp_path / "gray.png")  # SBD-style grayscale labels are accepted
    np.testing.assert_array_equal(data.read_label_png(tmp_path / "gray.png"), label)
    Image.fromarray(cmap[label]).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png"):
        data.read_label_png(tmp_path / "rgb.png")


def test_ignore_label_matches_validation():
    from semeda_jax import validation
    assert IGNORE_LABEL == validation.IGNORE_LABEL


# ---------------------------------------------------------------------------------------------- errors

def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        data.VOCSegmentation(tmp_path / "nope", "train").check()
    assert "JPEGImages/<id>.jpg" in str(e.value) and "nope" in str(e.value)
    reader = _make_voc(tmp_path / "voc", [(20, 30), (20, 30)], split="train")
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/val\.txt"):
        data.VOCSegmentation(tmp_path / "voc", "val").check()
    reader.check()
    os.remove(reader.label_path("img1"))
    with pytest.raises(DatasetError, match=r"no label file .*img1\.png"):
        data.VOCSegmentation(tmp_path / "voc", "train").check()
    os.remove(reader.image_path("img0"))
    with pytest.raises(DatasetError, match=r"no image file .*img0\.jpg"):
        data.VOCSegmentation(tmp_path / "voc", "train").check()


def test_bad_label_values(tmp_path):
    reader = _make_voc(tmp_path, [(20, 30), (20, 30)], value=9)
    reader.load("img0")
    with pytest.raises(DatasetError, match=r"img1\.png.*\{9\}"):
        reader.load("img1")
    import tensorflow as tf
    ds = data.eval_dataset(reader, pad_size=(32, 32), batch_size=2)
    with pytest.raises(tf.errors.OpError, match=r"img1\.png.*\{9\}"):
        list(ds.as_numpy_iterator())


# --------------------------------------------------------------------------------------- train pipeline

def _train(reader, **kw):
    args = dict(crop_size=(32, 40), batch_size=3, scale_range=(0.75, 1.5), seed=0)
    return data.train_dataset(reader, **{**args, **kw})


def _take(ds, n):
    it = ds.as_numpy_iterator()
    return [next(it) for _ in range(n)]


def test_train_pipeline_shapes_determinism_resume(synth_root):
    reader = data.VOCSegmentation(synth_root, "train", C)
    run = _take(_train(reader), 5)
    for batch in run:
        assert batch["image"].shape == (3, 32, 40, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (3, 32, 40) and batch["label"].dtype == np.int32
        assert set(np.unique(batch["label"]).tolist()) <= set(range(C)) | {IGNORE_LABEL}
        assert np.abs(batch["image"]).max() < 5
    again = _take(_train(reader), 5)
    other = _take(_train(reader, seed=1), 5)
    for a, b, c in zip(run, again, other):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not all(np.array_equal(a["image"], c["image"]) for a, c in zip(run, other))
    for resumed in (_take(_train(reader, start_step=3), 2), _take(_train(reader).skip(3), 2)):
        for a, b in zip(run[3:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])


def test_pipelines_are_deterministic_and_not_autotuned(synth_root):
    # Autotuning's optimisation thread made each stage's end wait up to its period (0-40 s seen) when the
    # iterator was deleted; without it an AUTOTUNE parallelism is the core count (pipeline_options).
    reader = data.VOCSegmentation(synth_root, "train", C)
    for ds in (_train(reader), data.eval_dataset(reader, pad_size=(64, 64), batch_size=2)):
        assert ds.options().deterministic is True and ds.options().autotune.enabled is False


def test_train_pipeline_pads_small_images(tmp_path):
    reader = _make_voc(tmp_path, [(20, 30)] * 2, split="train")
    labels = [reader.load(i)[1] for i in reader.ids]
    batch = _take(_train(reader, crop_size=(40, 50), batch_size=2, scale_range=(1.0, 1.0)), 1)[0]
    for image, label in zip(batch["image"], batch["label"]):
        if not any(np.array_equal(label[:20, :30], ref) for ref in labels):
            image, label = image[:, ::-1], label[:, ::-1]  # flipped: the padding is on the left
        assert any(np.array_equal(label[:20, :30], ref) for ref in labels)
        assert (label[20:] == IGNORE_LABEL).all() and (label[:, 30:] == IGNORE_LABEL).all()
        assert (image[20:] == 0).all() and (image[:, 30:] == 0).all()  # the mean colour


def test_train_pipeline_input_scale_multiplies_the_random_scale(tmp_path):
    reader = _make_voc(tmp_path, [(20, 30)] * 2, split="train")
    small = dict(crop_size=(40, 50), batch_size=2)
    half = _take(_train(reader, **small, scale_range=(1.0, 1.0), input_scale=0.5), 2)
    direct = _take(_train(reader, **small, scale_range=(0.5, 0.5)), 2)
    for a, b in zip(half, direct):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    for label in half[0]["label"]:  # a 10x15 image in the corner (left or right: flips), the rest padding
        rows, cols = np.nonzero(label != IGNORE_LABEL)
        assert rows.max() < 10 and (cols.max() < 15 or cols.min() >= 50 - 15)
    with pytest.raises(ValueError, match="input_scale must be > 0"):
        _train(reader, input_scale=0.0)


def triangle_resize(image: np.ndarray, size) -> np.ndarray:
    """Float64 reference of antialiased bilinear resizing: each output pixel a normalised triangle-weighted sum
    of the inputs, the triangle stretched by in/out when downscaling (half-pixel centres)."""
    def weights(n_in, n_out):
        scale = n_out / n_in
        slope = min(scale, 1.0)  # the triangle spans 1 / scale inputs either side when downscaling
        matrix = np.zeros((n_out, n_in))
        for i in range(n_out):
            centre = (i + 0.5) / scale - 0.5
            for j in range(n_in):
                matrix[i, j] = max(0.0, 1.0 - abs(j - centre) * slope)
        return matrix / matrix.sum(axis=1, keepdims=True)

    return np.einsum("ih,jw,hwc->ijc", weights(image.shape[0], size[0]), weights(image.shape[1], size[1]), image)


def test_eval_pipeline_input_scale_resizes_images_not_labels(tmp_path):
    sizes = [(20, 30), (17, 40)]
    reader = _make_voc(tmp_path, sizes)
    mean, std = np.asarray(data.DEFAULT_MEAN), np.asarray(data.DEFAULT_STD)
    full, half = (next(data.eval_dataset(reader, pad_size=(32, 40), batch_size=2, input_scale=scale)
                       .as_numpy_iterator()) for scale in (1.0, 0.5))
    assert half["image"].shape == (2, *data.scaled_size((32, 40), 0.5), 3) == (2, 16, 20, 3)
    for key in ("label", "height", "width", "mask", "id"):
        np.testing.assert_array_equal(half[key], full[key])
    for j, (h, w) in enumerate(sizes):
        sh, sw = data.scaled_size((h, w), 0.5)  # (10, 15) and (8, 20): 8.5 rounds to even
        decoded = full["image"][j, :h, :w].astype(np.float64) * std + mean
        np.testing.assert_allclose(half["image"][j, :sh, :sw] * std + mean, triangle_resize(decoded, (sh, sw)),
                                   atol=2e-3)
        assert (half["image"][j, sh:] == 0).all() and (half["image"][j, :, sw:] == 0).all()


def _identify(label, labels):
    """Index of the file whose label equals `label` or its mirror image."""
    hits = [i for i, ref in enumerate(labels) if np.array_equal(label, ref) or np.array_equal(label, ref[:, ::-1])]
    assert len(hits) == 1
    return hits[0]


def test_train_sharding_and_epochs(synth_root):
    reader = data.VOCSegmentation(synth_root, "train", C)
    labels = [reader.load(i)[1].astype(np.int32) for i in reader.ids]
    visited = []
    for p in range(2):
        local = data.shard_ids(reader.ids, p, 2)
        ds = _train(reader, crop_size=SIZE, batch_size=1, scale_range=(1.0, 1.0), process_index=p, process_count=2)
        order = [_identify(b["label"][0], labels) for b in _take(ds, 2 * len(local))]
        first, second = order[:len(local)], order[len(local):]
        assert sorted(first) == sorted(second) == sorted(reader.ids.index(i) for i in local)
        visited.append(set(first))
    assert visited[0].isdisjoint(visited[1]) and visited[0] | visited[1] == set(range(len(reader.ids)))


# ---------------------------------------------------------------------------------------- eval pipeline

def test_eval_pipeline_padding_and_mask(tmp_path):
    sizes = [(20, 30), (32, 24), (17, 40), (25, 25), (30, 33)]
    reader = _make_voc(tmp_path, sizes)
    mean, std = data.DEFAULT_MEAN, data.DEFAULT_STD
    batches = list(data.eval_dataset(reader, pad_size=(32, 40), batch_size=2).as_numpy_iterator())
    assert len(batches) == data.num_eval_batches(5, 2) == 3
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1, 1, 1, 1, 1, 0])
    seen = []
    for b in batches:
        assert b["image"].shape == (2, 32, 40, 3) and b["label"].dtype == np.int32
        for j in range(2):
            h, w = b["height"][j], b["width"][j]
            if not b["mask"][j]:
                assert (b["label"][j] == IGNORE_LABEL).all() and h == w == 0 and b["id"][j] == b""
                continue
            image_id = b["id"][j].decode()
            seen.append(image_id)
            image, label = reader.load(image_id)
            assert (h, w) == label.shape == sizes[int(image_id[3:])]
            np.testing.assert_array_equal(b["label"][j, :h, :w], label)
            assert (b["label"][j, h:] == IGNORE_LABEL).all() and (b["label"][j, :, w:] == IGNORE_LABEL).all()
            assert (b["image"][j, h:] == 0).all() and (b["image"][j, :, w:] == 0).all()
            np.testing.assert_allclose(data.denormalize(b["image"][j, :h, :w], mean, std), image, atol=3)
    assert seen == reader.ids
    # Two processes: the same number of batches each, every image exactly once.
    per_process = [list(data.eval_dataset(reader, pad_size=(32, 40), batch_size=2, process_index=p,
                                          process_count=2).as_numpy_iterator()) for p in range(2)]
    assert [len(b) for b in per_process] == [2, 2]
    ids = [i for b in per_process for batch in b for i, m in zip(batch["id"], batch["mask"]) if m]
    assert sorted(i.decode() for i in ids) == reader.ids


def test_eval_image_larger_than_pad_size(tmp_path):
    reader = _make_voc(tmp_path, [(20, 30), (40, 30)])
    with pytest.raises(DatasetError, match=r"img1\.jpg.*40x30"):
        data.eval_dataset(reader, pad_size=(32, 32), batch_size=2)


def test_denormalize_inverts_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    mean, std = np.array(data.DEFAULT_MEAN), np.array(data.DEFAULT_STD)
    np.testing.assert_array_equal(data.denormalize((image - mean) / std), image)


# --------------------------------------------------------------------------------------- registry, imports

def test_registry(tmp_path):
    assert set(data.DATASETS) >= {"synthetic", "voc"}
    reader = data.build_reader({"name": "synthetic", "cache_dir": str(tmp_path), "num_train": 2, "num_val": 1,
                                "image_size": (16, 16), "num_classes": 3, "seed": 0}, "val")
    assert len(reader.check().ids) == 1 and reader.class_names[0] == "background" and reader.num_classes == 3
    voc = data.build_reader({"name": "voc", "root": str(tmp_path / "VOC2012")}, "val", check=False)
    assert voc.num_classes == 21 and voc.class_names[15] == "person"
    with pytest.raises(KeyError, match="synthetic"):
        data.get_dataset_builder("imagenet")


def test_data_imports_no_jax_side_code():
    package = pathlib.Path(data.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in ("jax", "flax", "optax", "orbax"), (path, name)
                assert top != "semeda_jax" or name.startswith("semeda_jax.data"), (path, name)
    # Without the pipeline (i.e. without TensorFlow, which may pull jax in by itself) nothing loads jax.
    code = "import sys, semeda_jax.data; assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=package.parent.parent)
