"""Faults caught before or around the work, in process (no training): bad config values named by their config
path, an eval pad size smaller than the val images, and undecodable or mismatched dataset files named by
path when the input pipeline fails on them."""
import errno
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import demo
from semeda_jax import main, stages, workdir
from semeda_jax.data import DatasetError, pipeline, write_synthetic_voc
from semeda_jax.validation import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_voc(root, num_train=8, num_val=4, image_size=(40, 48), num_classes=8, verbose=False)
    return root


def voc_config(root, **overrides):
    """configs/demo.py:smoke reading `root` with the VOC reader (the synthetic one regenerates damaged files)."""
    config = demo.get_config("smoke")
    config.dataset.name, config.dataset.root, config.loss = "voc", str(root), "ce"
    config.dataset.update(num_train=None, num_val=None, image_size=None, void_width=None, seed=None)  # synthetic's
    config.update_from_flattened_dict(overrides)
    return config


@pytest.mark.parametrize("overrides,fragment", [
    ({"train.eval_every": 0}, "config.train.eval_every: expected an integer >= 1, got 0"),
    ({"train.steps": 0}, "config.train.steps: expected an integer >= 1, got 0"),
    ({"train.steps": -5}, "config.train.steps: expected an integer >= 1, got -5"),
    ({"train.checkpoint_every": 0}, "config.train.checkpoint_every"),
    ({"data.batch_size": 0}, "config.data.batch_size: expected an integer >= 1, got 0"),
    ({"data.eval_batch_size": 0}, "config.data.eval_batch_size"),
    ({"data.crop_size": (8, 8)}, "config.data.crop_size: (8, 8) is smaller than config.model.output_stride=16"),
    ({"data.crop_size": (32, 0)}, "config.data.crop_size: expected two integers"),
    ({"optimizer.learning_rate": 0.0}, "config.optimizer.learning_rate"),
    ({"loss": "ce+semeda", "losses.semeda.lambdas": (1.0, 2.0)}, "config.losses.semeda.lambdas: expected three"),
    ({"loss": "ce+semeda", "losses.semeda.lambdas": (1.0, -2.0, 0.0)}, "config.losses.semeda.lambdas"),
    ({"loss": "ce+semeda", "losses.semeda.reduction": "median"},
     "config.losses.semeda.reduction: expected one of"),
    ({"loss": "ce+sobel", "losses.sobel.reduction": "median"}, "config.losses.sobel.reduction: expected one of"),
    ({"loss": "bal", "losses.bal.kernel": "box"}, "config.losses.bal."),
])
def test_bad_config_value_is_named(tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as error:
        stages.check_config(voc_config(tmp_path, **overrides))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_good_config_passes():
    stages.check_config(demo.get_config("smoke"))


def test_eval_pad_size_smaller_than_val_images(dataset):
    with pytest.raises(DatasetError, match=r"config.data.eval_pad_size: 32x48 is smaller than 4 image\(s\) of "
                                           r"split 'val', .*val_000000.jpg \(40x48\); set it to at least 40x48"):
        stages.build_readers(voc_config(dataset, **{"data.eval_pad_size": (32, 48)}))


def pipeline_error(config, split):
    """The exception the train (or eval) pipeline of `split` raises when iterated to the end of one epoch."""
    reader = stages.build_readers(config)[split]
    if split == "train":
        batches = pipeline.train_dataset(reader, crop_size=(32, 32), batch_size=4, seed=0).take(2)
    else:
        batches = pipeline.eval_dataset(reader, pad_size=(40, 48), batch_size=2)
    with pytest.raises(Exception) as error:
        for _ in batches.as_numpy_iterator():
            pass
    return error.value


@pytest.mark.parametrize("split,name,damage", [
    ("train", "train_000005.jpg", lambda data: b""),                       # zero bytes
    ("train", "train_000002.jpg", lambda data: data[:len(data) // 2]),     # truncated
    ("val", "val_000001.jpg", lambda data: data[:len(data) // 2]),
])
def test_undecodable_image_is_named(dataset, tmp_path, split, name, damage):
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    path = root / "JPEGImages" / name
    path.write_bytes(damage(path.read_bytes()))
    config = voc_config(root)
    error = pipeline_error(config, split)
    message = main.user_error_message(error, config)
    assert message is not None and message.startswith(f"{path}: cannot read the image"), message


def test_label_size_mismatch_names_both_files(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    label_path = root / "SegmentationClass" / "train_000003.png"
    with Image.open(label_path) as label:
        label.resize((44, 40), Image.NEAREST).save(label_path)
    error = pipeline_error(voc_config(root), "train")
    message = main.user_error_message(error)
    assert message == (f"{label_path}: label size 40x44 differs from the image "
                       f"{root / 'JPEGImages' / 'train_000003.jpg'} size 40x48"), message


def test_workdir_that_is_a_file_or_read_only(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(workdir.WorkdirError, match=r"--workdir: .*/file is not a writable folder"):
        workdir.prepare(str(tmp_path / "file"))
    assert workdir.prepare(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    assert os.listdir(tmp_path / "new" / "run") == []  # the write probe leaves nothing behind


def test_lock_is_exclusive_and_released(tmp_path):
    with workdir.WorkdirLock(str(tmp_path)):
        with pytest.raises(workdir.WorkdirError, match=rf"--workdir: {tmp_path} is in use by another run \(pid "
                                                       rf"{os.getpid()} on "):
            workdir.WorkdirLock(str(tmp_path)).acquire()
        workdir.WorkdirLock(str(tmp_path), process_index=1).acquire().release()  # another process of one run
    workdir.WorkdirLock(str(tmp_path)).acquire().release()


def test_reference_arrays_unchanged_by_label_check(dataset):
    """The label-size check moved into the label decoder: a correct split still yields its exact labels."""
    config = voc_config(dataset)
    reader = stages.build_readers(config)["val"]
    batch = next(pipeline.eval_dataset(reader, pad_size=(40, 48), batch_size=4).as_numpy_iterator())
    for i, image_id in enumerate(reader.ids):
        np.testing.assert_array_equal(batch["label"][i], reader.load_label(image_id))


def test_failed_write_of_a_report_is_one_line(tmp_path):
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.json"))
    message = main.user_error_message(error)
    assert message.startswith(f"{tmp_path}/report.json: No space left on device; ") and "bytes free there" in message
    assert main.user_error_message(OSError(errno.EIO, "I/O error")) is None  # not a user error: a traceback
