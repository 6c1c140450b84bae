"""The synthetic dataset: generator v2 (determinism, void band, object protection, class balance) and its on-disk
VOC layout (manifest statistics, idempotence, regenerating only what is missing, never deleting other files)."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from semeda_jax import data
from semeda_jax.data import synthetic
from semeda_jax.data.errors import IGNORE_LABEL, DatasetError

SIZE = (48, 64)
C = 6


def _interrupting_label_writer(n):
    """write_label_png that raises KeyboardInterrupt on its n-th call (an interrupted generation)."""
    calls = []

    def write(path, label):
        calls.append(path)
        if len(calls) == n:
            raise KeyboardInterrupt
        return data.write_label_png(path, label)

    return write


def _files(root):
    return {p: p.stat().st_mtime_ns for p in pathlib.Path(root).rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------- generator

def test_generate_scene_is_deterministic():
    a = data.generate_scene(np.random.default_rng(3), SIZE, C, 3)
    b = data.generate_scene(np.random.default_rng(3), SIZE, C, 3)
    c = data.generate_scene(np.random.default_rng(4), SIZE, C, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    assert a[0].shape == SIZE + (3,) and a[0].dtype == np.uint8
    assert a[1].shape == SIZE and a[1].dtype == np.uint8
    # The void band is the only difference between generate_scene and render_scene.
    image, label, instances = synthetic.render_scene(np.random.default_rng(3), SIZE, C)
    np.testing.assert_array_equal(image, a[0])
    np.testing.assert_array_equal(a[1][a[1] != IGNORE_LABEL], label[a[1] != IGNORE_LABEL])
    assert instances.shape == SIZE and set(np.unique(label[instances == 0])) == {0}


def test_scene_labels_void_band_and_classes():
    for seed in range(6):
        image, label = data.generate_scene(np.random.default_rng(seed), SIZE, C, 1 + seed % 2)
        values = set(np.unique(label).tolist())
        assert values <= set(range(C)) | {IGNORE_LABEL}
        assert IGNORE_LABEL in values and 0 in values
        # Every class is in every scene (one object of each class first).
        assert values >= set(range(C)), (seed, values)
        # The void band separates every pair of 4-adjacent pixels with different (non-void) classes.
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            assert not np.any((a != b) & (a != IGNORE_LABEL) & (b != IGNORE_LABEL))
        _, no_void = data.generate_scene(np.random.default_rng(seed), SIZE, C, 0)
        assert IGNORE_LABEL not in no_void and set(np.unique(no_void).tolist()) == set(range(C))


def test_void_band_width():
    label = np.zeros((6, 20), np.uint8)
    label[:, 10:] = 1
    np.testing.assert_array_equal(np.nonzero(data.void_band(label, 4)[0])[0], [8, 9, 10, 11])
    np.testing.assert_array_equal(np.nonzero(data.void_band(label, 2)[0])[0], [9, 10])
    np.testing.assert_array_equal(np.nonzero(data.void_band(label, 1)[0])[0], [10])  # the greater label's side
    np.testing.assert_array_equal(np.nonzero(data.void_band(label, 3)[0])[0], [9, 10, 11])
    label[:, 15:] = 3  # a class-to-class change: the band of width 1 takes class 3's pixel
    np.testing.assert_array_equal(np.nonzero(data.void_band(label, 1)[0])[0], [10, 15])
    assert not data.void_band(label, 0).any()
    assert not data.void_band(np.zeros((5, 5), np.uint8), 4).any()


def test_protect_objects_keeps_the_innermost_pixels():
    label = np.zeros((12, 12), np.uint8)
    label[2:5, 2:5] = 1     # a 3x3 square: a 4-pixel band covers it entirely
    label[7:11, 6] = 2      # a 1-pixel line: any band covers it
    instances = label.astype(np.int32)
    band = data.void_band(label, 4)
    assert band[label == 1].all() and band[label == 2].all()
    kept = ~synthetic.protect_objects(band, instances)
    assert kept[label == 1].sum() == 1 and kept[3, 3]  # the centre of the square
    assert kept[label == 2].all()  # every pixel of the line is equally deep
    np.testing.assert_array_equal(kept & (label == 0), ~band & (label == 0))  # the background is untouched


def test_void_never_deletes_a_whole_object():
    for seed in range(8):
        rng = lambda: np.random.default_rng(100 + seed)
        _, _, instances = synthetic.render_scene(rng(), (32, 40), 8)
        _, label = data.generate_scene(rng(), (32, 40), 8, void_width=6)
        for index in np.unique(instances[instances > 0]):
            assert (label[instances == index] != IGNORE_LABEL).any(), (seed, index)


def test_every_class_has_three_percent_of_the_valid_pixels():
    counts = np.zeros(256)
    for index in range(24):  # the first images of the demo's validation split
        _, label = data.generate_scene(synthetic._scene_rng(0, "val", index), (96, 128), 8)
        counts += np.bincount(label.ravel(), minlength=256)
    shares = counts[:8] / counts[:8].sum()
    assert shares.min() >= 0.03, shares
    assert 0.02 < counts[IGNORE_LABEL] / counts.sum() < 0.15  # a narrow band (default 1 px), but a band


def test_class_styles_differ():
    styles = [synthetic._class_style(k) for k in range(1, 8)]
    assert len({s["texture"] for s in styles}) == 7 and len({s["family"] for s in styles}) == 7
    hues = sorted(s["hue"] for s in styles)
    assert min(np.diff(hues + [hues[0] + 1])) > 0.05


def test_class_names():
    names = data.synthetic_class_names(13)
    assert names[0] == "background" and len(names) == 13 and len(set(names)) == 13


# ---------------------------------------------------------------------------------------- on-disk layout

def test_written_layout_reads_back(synth_root):
    root = pathlib.Path(synth_root)
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["params"]["num_classes"] == C and manifest["splits"] == {"train": 7, "val": 3}
    assert manifest["params"]["generator_version"] == synthetic.GENERATOR_VERSION == 2
    for split, n in (("train", 7), ("val", 3)):
        reader = data.VOCSegmentation(root, split, C).check()
        assert len(reader.ids) == n
        counts = np.zeros(256)
        for index, image_id in enumerate(reader.ids):
            assert pathlib.Path(reader.image_path(image_id)) == root / "JPEGImages" / f"{image_id}.jpg"
            with Image.open(reader.label_path(image_id)) as im:
                assert im.mode == "P" and im.format == "PNG"
                assert np.array_equal(np.array(im.getpalette(), np.uint8).reshape(-1, 3)[:256], data.VOC_COLORMAP)
            image, label = reader.load(image_id)
            ref_image, ref_label = data.generate_scene(synthetic._scene_rng(5, split, index), SIZE, C, 3)
            np.testing.assert_array_equal(label, ref_label)  # bit-exact through the palette PNG
            assert np.abs(image.astype(float) - ref_image).mean() < 5.0  # JPEG q95 of a noisy image
            counts += np.bincount(label.ravel(), minlength=256)
        # The manifest's statistics, recomputed from the written PNGs.
        names = data.synthetic_class_names(C)
        assert list(manifest["class_pixel_shares"][split]) == names
        np.testing.assert_allclose([manifest["class_pixel_shares"][split][n] for n in names],
                                   counts[:C] / counts[:C].sum(), atol=1e-6)
        np.testing.assert_allclose(manifest["void_share"][split], counts[IGNORE_LABEL] / counts.sum(), atol=1e-6)


def test_generation_prints_the_class_shares(tmp_path, capsys):
    data.write_synthetic_voc(tmp_path / "voc", num_train=2, num_val=1, image_size=(16, 16), num_classes=3)
    out = capsys.readouterr().out
    shares = json.loads((tmp_path / "voc" / "synthetic.json").read_text())["class_pixel_shares"]
    for split in ("train", "val"):
        line = next(line for line in out.splitlines() if line.startswith(f"[synthetic] {split}: class shares"))
        assert f"background {100 * shares[split]['background']:.1f}%" in line and "void" in line


def test_idempotent_and_cache_folders(synth_root, tmp_path):
    before = _files(synth_root)
    again = data.write_synthetic_voc(synth_root, num_train=7, num_val=3, image_size=SIZE, num_classes=C,
                                     void_width=3, seed=5, verbose=False)
    assert again == synth_root and _files(synth_root) == before
    params = dict(num_train=2, num_val=1, image_size=(16, 16), num_classes=3, verbose=False)
    a = data.ensure_synthetic_voc(tmp_path, **params)
    assert data.ensure_synthetic_voc(tmp_path, **params) == a
    b = data.ensure_synthetic_voc(tmp_path, **{**params, "seed": 1})
    assert a != b and a.parent == b.parent == tmp_path
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.txt").write_text("not ours")
    with pytest.raises(DatasetError, match="refusing"):
        data.write_synthetic_voc(tmp_path / "real", num_train=1, num_val=1, verbose=False)
    (tmp_path / "real" / "synthetic.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable synthetic-dataset manifest"):
        data.write_synthetic_voc(tmp_path / "real", num_train=1, num_val=1, verbose=False)


def test_missing_file_regenerates_only_that_file_and_keeps_foreign_files(tmp_path):
    params = dict(num_train=4, num_val=2, image_size=(24, 24), num_classes=3, void_width=2, verbose=False)
    root = data.write_synthetic_voc(tmp_path / "voc", **params)
    (root / "MINE.txt").write_text("a user's notes")
    (root / "JPEGImages" / "extra.jpg").write_bytes(b"not generated")
    lost = root / "SegmentationClass" / "train_000002.png"
    want = lost.read_bytes()
    lost.unlink()
    before = _files(root)
    data.write_synthetic_voc(root, **params)
    assert (root / "MINE.txt").read_text() == "a user's notes"
    assert (root / "JPEGImages" / "extra.jpg").read_bytes() == b"not generated"
    assert lost.read_bytes() == want
    after = _files(root)
    changed = {p for p in after if after[p] != before.get(p)}
    # Only the lost label, the split lists and the manifest are written again.
    assert changed == {lost, root / "synthetic.json", root / "ImageSets/Segmentation/train.txt",
                       root / "ImageSets/Segmentation/val.txt"}, changed


def test_other_parameters_replace_only_generated_files(tmp_path):
    root = data.write_synthetic_voc(tmp_path / "voc", num_train=5, num_val=2, image_size=(16, 16), num_classes=3,
                                    verbose=False)
    (root / "MINE.txt").write_text("keep me")
    data.write_synthetic_voc(root, num_train=3, num_val=1, image_size=(16, 16), num_classes=3, seed=2,
                             verbose=False)
    assert (root / "MINE.txt").read_text() == "keep me"
    assert sorted(p.name for p in (root / "JPEGImages").iterdir()) == [
        "train_000000.jpg", "train_000001.jpg", "train_000002.jpg", "val_000000.jpg"]
    for index in range(3):
        np.testing.assert_array_equal(
            data.read_label_png(root / "SegmentationClass" / f"train_{index:06d}.png"),
            data.generate_scene(synthetic._scene_rng(2, "train", index), (16, 16), 3)[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # no temp or trash folders left


def test_interrupted_change_is_finished_by_the_next_run(tmp_path, monkeypatch):
    root = data.write_synthetic_voc(tmp_path / "voc", num_train=4, num_val=1, image_size=(16, 16), num_classes=3,
                                    verbose=False)
    (root / "MINE.txt").write_text("keep me")
    new = dict(num_train=3, num_val=2, image_size=(16, 16), num_classes=3, seed=7, verbose=False)
    monkeypatch.setattr(synthetic, "write_label_png", _interrupting_label_writer(2))
    with pytest.raises(KeyboardInterrupt):
        data.write_synthetic_voc(root, **new)
    monkeypatch.undo()
    assert json.loads((root / "synthetic.json").read_text())["complete"] is False
    data.write_synthetic_voc(root, **new)
    assert (root / "MINE.txt").read_text() == "keep me"
    reader = data.VOCSegmentation(root, "val", 3).check()
    np.testing.assert_array_equal(reader.load("val_000001")[1],
                                  data.generate_scene(synthetic._scene_rng(7, "val", 1), (16, 16), 3)[1])
    assert not list(root.rglob(".*tmp-*"))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "write_label_png", _interrupting_label_writer(3))
    with pytest.raises(KeyboardInterrupt):
        data.write_synthetic_voc(tmp_path / "voc", num_train=4, num_val=1, image_size=(16, 16), num_classes=3,
                                 verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_worker_processes_write_the_same_files_as_one_process(tmp_path, monkeypatch):
    params = dict(num_train=5, num_val=3, image_size=(24, 32), num_classes=4, verbose=False)
    here = data.write_synthetic_voc(tmp_path / "here", **params)
    monkeypatch.setattr(synthetic, "PARALLEL_MIN_SCENES", 1)
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 2)
    workers = data.write_synthetic_voc(tmp_path / "workers", **params)
    files = sorted(p.relative_to(here) for p in here.rglob("*") if p.is_file())
    assert len(files) == 2 * 8 + 3 and files == sorted(p.relative_to(workers) for p in workers.rglob("*")
                                                        if p.is_file())
    for name in files:
        assert (here / name).read_bytes() == (workers / name).read_bytes(), name
