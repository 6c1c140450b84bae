"""ADE20K, COCO-Stuff 164k and Pascal Context on miniature datasets in their genuine layouts
(tests/fake_datasets.py): ids, label conventions through the reader and the tf.data pipelines, class names,
and errors that name the folder, the file and the value."""
import re

import numpy as np
import pytest
from PIL import Image

from semeda_jax import data
from semeda_jax.data import coco_stuff
from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from fake_datasets import (COCO_STUFF_CODES, write_fake_ade20k, write_fake_coco_stuff, write_fake_pascal_context)
from test_datasets import assert_eval_pipeline, assert_reads_back


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return write_fake_ade20k(tmp_path_factory.mktemp("ade") / "ADEChallengeData2016")


def one_line_error(match, fn, *args):
    with pytest.raises(DatasetError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------------------------- ADE20K

def test_ade20k_reads_back_with_other_as_void(ade):
    for split in ("training", "validation"):
        reader = data.build_reader(ade["dataset"], split)
        assert reader.num_classes == 150 and reader.class_names == data.ADE20K_CLASSES
        assert_reads_back(reader, ade["splits"][split], ade["labels"], ade["images"])
    assert_eval_pipeline(reader, ade["labels"], ade["images"], atol=2)
    image_id = ade["splits"]["validation"][0]
    codes, label = ade["codes"][image_id], reader.load(image_id)[1]
    y, x = np.argwhere(codes == 0)[0]
    assert label[y, x] == IGNORE_LABEL  # "other" is void
    y, x = np.argwhere(codes == 150)[0]
    assert label[y, x] == 149 and data.ADE20K_CLASSES[149] == "flag"
    y, x = np.argwhere(codes == 1)[0]
    assert label[y, x] == 0 and data.ADE20K_CLASSES[0] == "wall"
    assert data.colorize(label, data.ADE20K_COLORMAP).shape == (*label.shape, 3)


def test_ade20k_other_never_reaches_the_training_labels(ade):
    reader = data.build_reader(ade["dataset"], "training")
    ds = data.train_dataset(reader, crop_size=(28, 32), batch_size=1, scale_range=(1.0, 1.0), seed=1)
    seen = set()
    for batch, _ in zip(ds.as_numpy_iterator(), range(len(reader))):
        label = batch["label"][0]
        for view in (label, label[:, ::-1]):  # the flip moves the padding to the left
            for image_id, codes in ade["codes"].items():
                if np.array_equal(view[:codes.shape[0], :codes.shape[1]], ade["labels"][image_id]):
                    seen.add(image_id)
                    assert (view[:codes.shape[0], :codes.shape[1]][codes == 0] == IGNORE_LABEL).all()
    assert seen == set(reader.ids)


def test_ade20k_errors_name_the_folder_file_and_value(tmp_path):
    fake = write_fake_ade20k(tmp_path / "ADEChallengeData2016")
    config = fake["dataset"]
    one_line_error(re.escape(f"image folder {tmp_path}/ADEChallengeData2016/images/val does not exist; "
                             f"expected layout: "), data.build_reader, config, "val")
    one_line_error("root folder .*/missing does not exist; expected layout: .*images/training/<id>.jpg and "
                   "annotations/training/<id>.png", data.build_reader, {**config, "root": str(tmp_path / "missing")},
                   "training")
    one_line_error("has 150 classes; config key num_classes is 151", data.build_reader,
                   {**config, "num_classes": 151}, "training")
    image_id = fake["splits"]["validation"][1]
    path = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / f"{image_id}.png"
    codes = fake["codes"][image_id].copy()
    codes[0, 0] = 151
    Image.fromarray(codes).save(path)
    reader = data.build_reader(config, "validation")
    one_line_error(re.escape(f"{path}: label values {{151}} are out of range (expected ADE20K codes 0 (other, "
                             f"void) and 1..150)"), reader.load, image_id)
    path.unlink()
    one_line_error(re.escape(f"id {image_id!r} has no label file {path}"), data.build_reader, config, "validation")


# ----------------------------------------------------------------------------------------- COCO-Stuff

def test_coco_stuff_table_is_mmsegs():
    assert len(data.COCO_STUFF_CLASSES) == 171 and len(set(data.COCO_STUFF_CLASSES)) == 171
    table = coco_stuff.STUFFTHINGMAP_TABLE
    assert [table[c] for c in COCO_STUFF_CODES] == list(COCO_STUFF_CODES.values())
    assert (table[[11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 255]] == IGNORE_LABEL).all()  # unused + unlabeled
    assert (table[182:255] == -1).all()
    assert sorted(table[table < IGNORE_LABEL][table[table < IGNORE_LABEL] >= 0]) == list(range(171))
    names = data.COCO_STUFF_CLASSES
    assert (names[0], names[11], names[79], names[80], names[170]) == (
        "person", "stop sign", "toothbrush", "banner", "wood")


@pytest.mark.parametrize("train_ids", [False, True])
def test_coco_stuff_reads_both_label_formats(tmp_path, train_ids):
    fake = write_fake_coco_stuff(tmp_path, train_ids=train_ids)
    for split in ("train2017", "val2017"):
        reader = data.build_reader(fake["dataset"], split)
        assert reader.class_names == data.COCO_STUFF_CLASSES
        assert_reads_back(reader, fake["splits"][split], fake["labels"], fake["images"])
        assert reader.label_format == ("trainids" if train_ids else "stuffthingmaps")
        suffix = "_labelTrainIds.png" if train_ids else ".png"
        assert reader.label_path(reader.ids[0]) == f"{tmp_path}/annotations/{split}/{reader.ids[0]}{suffix}"
    assert_eval_pipeline(reader, fake["labels"], fake["images"], atol=2)
    if train_ids:  # the released maps beside them still read when asked for
        reader = data.build_reader({**fake["dataset"], "label_format": "stuffthingmaps"}, "val2017")
        assert_reads_back(reader, fake["splits"]["val2017"], fake["labels"], fake["images"])


def test_coco_stuff_errors_name_the_file_and_value(tmp_path):
    fake = write_fake_coco_stuff(tmp_path)
    one_line_error("label_format must be one of", data.build_reader, {**fake["dataset"], "label_format": "ids"},
                   "val2017")
    one_line_error(re.escape("annotations/val2017/<id>_labelTrainIds.png"), data.build_reader,
                   {**fake["dataset"], "label_format": "trainids"}, "val2017")
    image_id = fake["splits"]["val2017"][0]
    path = tmp_path / "annotations" / "val2017" / f"{image_id}.png"
    codes = fake["codes"][image_id].copy()
    codes[1, 1], codes[2, 2] = 182, 200
    Image.fromarray(codes).save(path)
    reader = data.build_reader(fake["dataset"], "val2017")
    one_line_error(re.escape(f"{path}: label values {{182, 200}} are out of range (expected COCO-Stuff "
                             f"stuffthingmaps codes 0..181 and 255 unlabeled)"), reader.load, image_id)


# ------------------------------------------------------------------------------------- Pascal Context

def test_pascal_context_60_and_59_classes(tmp_path):
    fake = write_fake_pascal_context(tmp_path / "VOC2010")
    for num_classes, labels in ((60, fake["labels"]), (59, fake["labels59"])):
        config = {**fake["dataset"], "num_classes": num_classes}
        for split in ("train", "val"):
            reader = data.build_reader(config, split)
            assert reader.num_classes == num_classes and len(reader.class_names) == num_classes
            assert_reads_back(reader, fake["splits"][split], labels, fake["images"])
        assert_eval_pipeline(reader, labels, fake["images"], atol=2)
        assert reader.class_names[-1] == "wood" and reader.class_names[0] == (
            "background" if num_classes == 60 else "aeroplane")
    one_line_error("num_classes must be 60 .* or 59", data.build_reader, {**fake["dataset"], "num_classes": 21},
                   "val")
    one_line_error(re.escape(f"split list {tmp_path}/VOC2010/ImageSets/SegmentationContext/test.txt is missing; "
                             f"expected layout: {tmp_path}/VOC2010/ holding JPEGImages/<id>.jpg, "
                             f"SegmentationClassContext/<id>.png"), data.build_reader, fake["dataset"], "test")
    image_id = fake["splits"]["val"][0]
    path = tmp_path / "VOC2010" / "SegmentationClassContext" / f"{image_id}.png"
    codes = fake["labels"][image_id].copy()
    codes[0, 0] = 60
    Image.fromarray(codes).save(path)
    for num_classes in (60, 59):
        reader = data.build_reader({**fake["dataset"], "num_classes": num_classes}, "val")
        one_line_error(re.escape(f"{path}: label values {{60}} are out of range (expected Pascal Context codes"),
                       reader.load, image_id)


def test_registry_and_missing_roots(tmp_path):
    for name in ("ade20k", "coco_stuff", "pascal_context"):
        one_line_error(f"dataset '{name}' needs config key 'root'", data.build_reader, {"name": name}, "train")
        message = one_line_error("does not exist; expected layout: ", data.build_reader,
                                 {"name": name, "root": str(tmp_path / "missing")}, "train")
        assert str(tmp_path / "missing") in message
