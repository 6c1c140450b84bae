"""The real dataset readers (VOC + SBD train_aug, Cityscapes, HELEN) on miniature datasets in their genuine
formats (tests/fake_datasets.py): ids, arrays through the reader and the tf.data pipelines, the SBD conversion
cache, and errors that name the file."""
import os
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from semeda_jax import data
from semeda_jax.data import sbd
from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from fake_datasets import (CITYSCAPES_OFFICIAL_TRAIN_ID, write_fake_cityscapes, write_fake_helen, write_fake_voc_sbd,
                           write_sbd_mat)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_fake_voc_sbd(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    return write_fake_cityscapes(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def helen(tmp_path_factory):
    return write_fake_helen(tmp_path_factory.mktemp("helen"))


def assert_reads_back(reader, ids, labels, images):
    """The reader lists `ids` and loads exactly `labels[id]` and `images[id]`."""
    assert reader.ids == list(ids)
    for image_id in ids:
        image, label = reader.load(image_id)
        np.testing.assert_array_equal(label, labels[image_id], err_msg=image_id)
        np.testing.assert_array_equal(image, images[image_id], err_msg=image_id)
        assert reader.image_size(image_id) == label.shape


def assert_eval_pipeline(reader, labels, images, atol):
    """eval_dataset yields every id once with its exact label and image (JPEG decoders may differ by `atol`)."""
    seen = []
    for batch in data.eval_dataset(reader, pad_size=(32, 40), batch_size=2).as_numpy_iterator():
        for j in np.flatnonzero(batch["mask"]):
            image_id, h, w = batch["id"][j].decode(), batch["height"][j], batch["width"][j]
            seen.append(image_id)
            np.testing.assert_array_equal(batch["label"][j, :h, :w], labels[image_id], err_msg=image_id)
            assert (batch["label"][j, h:] == IGNORE_LABEL).all() and (batch["label"][j, :, w:] == IGNORE_LABEL).all()
            image = data.denormalize(batch["image"][j, :h, :w]).astype(int)
            assert np.abs(image - images[image_id]).max() <= atol, image_id
    assert seen == reader.ids


# ------------------------------------------------------------------------------------------- VOC + SBD

def test_train_aug_list_construction():
    ids = data.train_aug_ids(voc_train=["b", "a", "v1"], voc_val=["v1", "v2", "s3"],
                             sbd_train=["a", "s1", "s3", "s1"], sbd_val=["b", "s2"])
    assert ids == ["a", "b", "s1", "s2"]  # union, deduplicated, sorted; VOC val ids (even SBD's) excluded


def test_voc_and_train_aug_read_back(voc):
    for split in ("train", "val", "train_aug"):
        reader = data.build_reader(voc["dataset"], split)
        assert reader.num_classes == 21 and reader.class_names == data.VOC_CLASSES
        assert_reads_back(reader, voc["splits"][split], voc["labels"], voc["images"])
    aug = data.build_reader(voc["dataset"], "train_aug")
    assert isinstance(aug, data.VOCAugSegmentation)
    assert aug.ids == ["2007_000032", "2007_000039", "2008_000002", "2008_000100", "2008_000101", "2009_000200"]
    # Precedence: an id with a VOC PNG reads it (void borders), even when SBD has a different map for it.
    both = aug.load("2007_000032")[1]
    assert (both == IGNORE_LABEL).any() and not np.array_equal(both, voc["sbd_labels"]["2007_000032"])
    assert aug.label_path("2007_000032").endswith("VOC2012/SegmentationClass/2007_000032.png")
    np.testing.assert_array_equal(aug.load("2008_000100")[1], voc["sbd_labels"]["2008_000100"])
    assert aug.label_path("2008_000100").startswith(str(aug.sbd_png_dir))
    assert aug.image_path("2009_000200").endswith("benchmark_RELEASE/dataset/img/2009_000200.jpg")
    assert aug.image_path("2008_000100").endswith("VOC2012/JPEGImages/2008_000100.jpg")
    assert_eval_pipeline(aug, voc["labels"], voc["images"], atol=3)


def _sbd_png_mtimes(folder):
    return {name: os.stat(folder / name).st_mtime_ns for name in sorted(os.listdir(folder))}


def test_sbd_conversion_is_cached(tmp_path, monkeypatch):
    fake = write_fake_voc_sbd(tmp_path)
    written = []
    real_write = sbd.write_label_png
    monkeypatch.setattr(sbd, "write_label_png", lambda path, label: (written.append(path), real_write(path, label)))
    reader = data.build_reader(fake["dataset"], "train_aug")
    assert len(written) == 3  # the SBD-only ids; VOC-labelled ids are not converted
    folder = reader.sbd_png_dir
    before = _sbd_png_mtimes(folder)
    assert sorted(before) == ["2008_000100.png", "2008_000101.png", "2009_000200.png"]
    data.build_reader(fake["dataset"], "train_aug")
    assert len(written) == 3 and _sbd_png_mtimes(folder) == before  # second build: nothing rewritten
    # An edited .mat (new modification time) is converted again, alone.
    mat = fake["sbd_root"] / "cls" / "2008_000101.mat"
    new_label = fake["sbd_labels"]["2008_000101"].copy()
    new_label[:3] = 5
    write_sbd_mat(mat, new_label)
    os.utime(mat, ns=(before["2008_000101.png"] + 10**10,) * 2)
    reader = data.build_reader(fake["dataset"], "train_aug")
    assert len(written) == 4 and os.path.basename(written[-1]).startswith(".2008_000101.png.tmp-")
    np.testing.assert_array_equal(reader.load("2008_000101")[1], new_label)


def test_interrupted_sbd_conversion_leaves_no_partial_file(tmp_path, monkeypatch):
    fake = write_fake_voc_sbd(tmp_path)
    calls = []
    real_write = sbd.write_label_png

    def killed_midway(path, label):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"\x89PNG half")  # a partial file, then the process dies
            raise KeyboardInterrupt
        real_write(path, label)

    reader = data.build_reader(fake["dataset"], "train_aug", check=False)
    folder = reader.sbd_png_dir
    folder.mkdir(parents=True)
    (folder / ".2008_000101.png.tmp-dead").write_bytes(b"left by a killed run")
    (folder / "2009_000200.png").write_bytes(b"not from us")  # stale: its time differs from the .mat's
    monkeypatch.setattr(sbd, "write_label_png", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        reader.check()
    assert not (folder / "2008_000101.png").exists()  # the interrupted id has no PNG at its final name
    assert sorted(p for p in os.listdir(folder) if not p.startswith(".")) == ["2008_000100.png", "2009_000200.png"]
    monkeypatch.setattr(sbd, "write_label_png", real_write)
    reader = data.build_reader(fake["dataset"], "train_aug")
    for image_id in ("2008_000100", "2008_000101", "2009_000200"):
        np.testing.assert_array_equal(reader.load(image_id)[1], fake["sbd_labels"][image_id])


def test_voc_sbd_errors_name_the_file(tmp_path):
    fake = write_fake_voc_sbd(tmp_path)
    config = fake["dataset"]
    with pytest.raises(DatasetError, match="sbd_root") as e:
        data.build_reader({**config, "sbd_root": None}, "train_aug")
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match=re.escape(f"SBD folder {tmp_path}/nope does not exist")):
        data.build_reader({**config, "sbd_root": str(tmp_path / "nope")}, "train_aug")
    with pytest.raises(DatasetError) as e:
        data.build_reader({**config, "root": str(tmp_path / "VOC2012")}, "val")
    message = str(e.value)
    assert "\n" not in message and f"{tmp_path}/VOC2012" in message and "JPEGImages/<id>.jpg" in message
    cls = fake["sbd_root"] / "cls"
    scipy.io.savemat(cls / "2008_000100.mat", {"GT": {"Segmentation": np.zeros((4, 4), np.uint8)}})
    with pytest.raises(DatasetError, match=r"cls/2008_000100\.mat: expected a MATLAB struct 'GTcls'"):
        data.build_reader(config, "train_aug")
    (cls / "2008_000100.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match=r"cls/2008_000100\.mat: cannot read the MATLAB file"):
        data.build_reader(config, "train_aug")
    write_sbd_mat(cls / "2008_000100.mat", np.full((24, 32), 23, np.uint8))
    with pytest.raises(DatasetError, match=r"cls/2008_000100\.mat: label values \{23\}"):
        data.build_reader(config, "train_aug")
    os.remove(cls / "2008_000100.mat")
    with pytest.raises(DatasetError, match=r"'2008_000100' has no label file .*cls/2008_000100\.mat"):
        data.build_reader(config, "train_aug")
    write_sbd_mat(cls / "2008_000100.mat", fake["sbd_labels"]["2008_000100"])
    os.remove(fake["sbd_root"] / "img" / "2009_000200.jpg")
    with pytest.raises(DatasetError, match=r"no image file .*JPEGImages/2009_000200\.jpg or .*img/2009_000200\.jpg"):
        data.VOCAugSegmentation(fake["voc_root"], fake["sbd_root"], tmp_path / "cache").check()


# ------------------------------------------------------------------------------------------- Cityscapes

def test_cityscapes_label_table_is_the_official_one():
    np.testing.assert_array_equal(data.LABEL_TO_TRAIN_ID[:34], CITYSCAPES_OFFICIAL_TRAIN_ID)
    assert (data.LABEL_TO_TRAIN_ID[34:] == IGNORE_LABEL).all()
    assert data.CITYSCAPES_CLASSES[CITYSCAPES_OFFICIAL_TRAIN_ID[26]] == "car"


def test_cityscapes_fine_and_coarse_read_back(cityscapes):
    fine = cityscapes["labels"]
    for split in ("train", "val"):
        reader = data.build_reader(cityscapes["dataset"], split)
        assert reader.num_classes == 19 and reader.class_names == data.CITYSCAPES_CLASSES
        assert_reads_back(reader, cityscapes["splits"][split], fine, cityscapes["images"])
        assert_eval_pipeline(reader, fine, cityscapes["images"], atol=0)  # PNG images: exact
    label = reader.load(reader.ids[0])[1]
    assert set(np.unique(label)) == set(range(19)) | {IGNORE_LABEL}  # every id present: all mapped or ignored
    coarse = data.build_reader({**cityscapes["dataset"], "annotation": "gtCoarse"}, "train+train_extra")
    ids = sorted(cityscapes["splits"]["train"] + cityscapes["splits"]["train_extra"])
    assert_reads_back(coarse, ids, cityscapes["coarse_labels"], cityscapes["images"])
    assert coarse.label_path(ids[-1]).endswith(f"gtCoarse/{ids[-1]}_gtCoarse_labelIds.png")


def test_cityscapes_train_pipeline_maps_label_ids(cityscapes):
    reader = data.build_reader(cityscapes["dataset"], "train")
    expected = cityscapes["labels"]
    ds = data.train_dataset(reader, crop_size=(24, 36), batch_size=1, scale_range=(1.0, 1.0), seed=3)
    found = set()
    for batch, _ in zip(ds.as_numpy_iterator(), range(len(reader))):
        label = batch["label"][0]
        for view in (label, label[:, ::-1]):  # the random flip moves the padding to the left
            found |= {i for i, ref in expected.items() if i in reader.ids and np.array_equal(
                view[:ref.shape[0], :ref.shape[1]], ref)}
    assert found == set(reader.ids)  # one epoch: every image once, its labelIds mapped to train ids


def test_cityscapes_errors_name_the_file(tmp_path):
    fake = write_fake_cityscapes(tmp_path)
    config, image_id = fake["dataset"], fake["splits"]["val"][0]
    path = tmp_path / "gtFine" / f"{image_id}_gtFine_labelIds.png"
    with pytest.raises(DatasetError, match="has 19 classes; config key num_classes is 21"):
        data.build_reader({**config, "num_classes": 21}, "val")
    with pytest.raises(DatasetError, match=re.escape(f"image folder {tmp_path}/leftImg8bit/test does not exist")):
        data.build_reader(config, "test")
    with pytest.raises(DatasetError, match="annotation must be one of"):
        data.build_reader({**config, "annotation": "gtMedium"}, "val")
    reader = data.build_reader(config, "val")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)  # an RGB (colour) file
    with pytest.raises(DatasetError, match=re.escape(f"{path}: a label must be a palette")):
        reader.load(image_id)
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(path)  # trainIds with 255: not labelIds
    with pytest.raises(DatasetError, match=re.escape(f"{path}: values {{255}} are not Cityscapes labelIds")):
        reader.load(image_id)
    import tensorflow as tf
    with pytest.raises(tf.errors.OpError, match=re.escape(f"{path}: values {{255}}")):
        list(data.eval_dataset(reader, pad_size=(32, 40), batch_size=2).as_numpy_iterator())
    os.remove(path)
    with pytest.raises(DatasetError, match=re.escape(f"has no label file {path}")):
        data.build_reader(config, "val")


# ----------------------------------------------------------------------------------------------- HELEN

def test_helen_read_back(helen):
    for split in ("train", "test"):
        reader = data.build_reader(helen["dataset"], split)
        assert reader.num_classes == 11 and reader.class_names[10] == "hair"
        assert_reads_back(reader, helen["splits"][split], helen["labels"], helen["images"])
    assert_eval_pipeline(reader, helen["labels"], helen["images"], atol=3)


def test_helen_smith_release_soft_maps(tmp_path):
    fake = write_fake_helen(tmp_path, soft_maps=True)
    assert not (tmp_path / "train.txt").exists() and (tmp_path / "tuning.txt").exists()
    for split in ("train", "test"):  # exemplars.txt; tuning.txt + testing.txt
        reader = data.build_reader(fake["dataset"], split)
        assert_reads_back(reader, fake["splits"][split], fake["labels"], fake["images"])
    assert_eval_pipeline(reader, fake["labels"], fake["images"], atol=3)
    assert data.build_reader(fake["dataset"], "tuning").ids == fake["splits"]["test"][:1]


def test_helen_errors_name_the_file(tmp_path):
    fake = write_fake_helen(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(f"split list {tmp_path}/val.txt is missing")):
        data.build_reader(fake["dataset"], "val")
    image_id = fake["splits"]["test"][1]
    path = tmp_path / "labels" / f"{image_id}.png"
    Image.fromarray(np.full((4, 4), 11, np.uint8)).save(path)
    reader = data.build_reader(fake["dataset"], "test")
    with pytest.raises(DatasetError, match=re.escape(f"{path}: label values {{11}} are outside [0, 11)")):
        reader.load(image_id)
    os.remove(path)
    with pytest.raises(DatasetError, match=re.escape(f"has no label file {path} or")):
        data.build_reader(fake["dataset"], "test")


# -------------------------------------------------------------------------------------------- registry

def test_registry_and_fail_fast(tmp_path):
    assert set(data.DATASETS) >= {"synthetic", "voc", "cityscapes", "helen"}
    for name in ("voc", "cityscapes", "helen"):
        config = {"name": name, "root": str(tmp_path / "missing")}
        assert isinstance(data.build_reader(config, "train", check=False), data.SegmentationReader)
        with pytest.raises(DatasetError) as e:
            data.build_reader(config, "train")
        assert re.search(f"{tmp_path}/missing does not exist; expected layout: ", str(e.value)), str(e.value)
        assert "\n" not in str(e.value)
        with pytest.raises(DatasetError, match=f"dataset '{name}' needs config key 'root'"):
            data.build_reader({"name": name}, "train")
