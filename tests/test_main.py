"""The command line: user errors end with one line naming the file or key and exit status 2."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from semeda_jax.data import generate_scene, read_label_png, write_synthetic_voc, write_label_png

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, *flags, config="configs/demo.py:smoke", timeout=240):
    command = [sys.executable, "-m", "semeda_jax.main", f"--config={config}", f"--workdir={workdir}", *flags]
    # TensorFlow, once imported by other tests, sets TF_CPP_MIN_LOG_LEVEL=1 in this process: a user's shell has not.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_voc(root, num_train=8, num_val=4, image_size=(40, 48), num_classes=8, verbose=False)
    return root


def copy_of(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    return root


# configs/voc.py at smoke size with CE on ResNet-18: the VOC reader (the synthetic builder would regenerate a
# damaged copy), whose dataset section holds no field of the synthetic generator.
VOC = "configs/voc.py:smoke,ppce,resnet101"


def as_voc(root):
    """Flags reading `root`'s 8 classes and its train split with VOC."""
    return f"--config.dataset.root={root}", "--config.dataset.num_classes=8", "--config.dataset.train_split=train"


def test_missing_dataset_folder(tmp_path):
    result = run_main(tmp_path / "run", *as_voc(f"{tmp_path}/VOC2012"), config=VOC)
    assert_one_line_error(result, f"{tmp_path}/VOC2012", "JPEGImages")


def test_image_without_its_label(dataset, tmp_path):
    root = copy_of(dataset, tmp_path)
    os.remove(root / "SegmentationClass" / "train_000002.png")
    result = run_main(tmp_path / "run", *as_voc(root), config=VOC)
    assert_one_line_error(result, "train_000002.png")


def test_label_values_out_of_range(dataset, tmp_path):
    root = copy_of(dataset, tmp_path)
    for name in os.listdir(root / "SegmentationClass"):
        path = root / "SegmentationClass" / name
        label = read_label_png(path)
        label[0, 0] = 77
        write_label_png(path, label)
    result = run_main(tmp_path / "run", *as_voc(root), config=VOC)
    assert_one_line_error(result, "SegmentationClass/", "{77}", "[0, 8)")


@pytest.mark.parametrize("flag,fragment", [
    ("--config.no_such_key=3", "no_such_key"),
    ("--config.train.steps=many", "--config.train.steps=many"),
    ("--config.loss=ce+dicee", "config.loss: unknown term 'dicee'"),
    ("--config.model.name=unet", "config.model: unknown model 'unet'"),
    ("--stages=train,fly", "--stages: unknown stage(s) ['fly']"),
    ("--stages=predict", "--images: the predict stage needs a folder of images"),
    ("--images=/no/such/photos", "--images: /no/such/photos is not a folder"),
    ("--config.eval.inference.fusion=learned", "config.eval.inference.fusion: 'learned' reads"),
    ("--config.dataset.name=voc", "config.dataset.image_size: no code reads this field for dataset 'voc'"),
])
def test_bad_config_is_named(tmp_path, flag, fragment):
    assert_one_line_error(run_main(tmp_path / "run", flag), fragment)
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training


def test_truncated_val_jpeg_mid_run_is_named(dataset, tmp_path):
    root = copy_of(dataset, tmp_path)
    path = root / "JPEGImages" / "val_000002.jpg"
    path.write_bytes(path.read_bytes()[:-400])  # the header stays readable: found when decoded, at the eval
    result = run_main(tmp_path / "run", *as_voc(root), "--stages=train", "--config.train.steps=4",
                      "--config.train.eval_every=2", "--config.train.checkpoint_every=1", config=VOC)
    assert_one_line_error(result, f"error: {path}: cannot read the image")
    assert os.listdir(tmp_path / "run" / "checkpoints" / "latest") == ["1"]  # the steps before it are kept


def test_read_only_workdir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        result = run_main(folder / "run")
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    assert_one_line_error(result, f"--workdir: {folder}/run is not a writable folder (Read-only file system)")


def test_train_then_predict_stage(dataset, tmp_path):
    """--stages=train,predict runs predict through the stage loop: every file Pillow reads is predicted (TIFF,
    WebP, upper-case suffixes), then one line names the files it could not read, exit status 2."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.tif", (40, 48)), ("b.webp", (33, 57)), ("C.JPG", (64, 40))):
        Image.fromarray(generate_scene(rng, size, 8)[0]).save(images / name)
    (images / "notes.txt").write_text("not an image")
    result = run_main(tmp_path / "run", *as_voc(dataset), "--stages=train,predict", f"--images={images}",
                      "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2")
    assert_one_line_error(result, f"--images: 1 of 4 files in {images} could not be read and were skipped "
                                  f"(notes.txt); the other masks are in {tmp_path}/run/predictions")
    predictions = tmp_path / "run" / "predictions"
    assert sorted(os.listdir(predictions)) == ["C.JPG.png", "a.tif.png", "b.webp.png", "entropy"]
    with Image.open(predictions / "b.webp.png") as mask:
        assert mask.mode == "P" and mask.size == (57, 33)
