"""configs/ade20k.py, coco_stuff.py and pascal_context.py: mmseg's recipe and its variants, and each `:smoke`
variant training and evaluating through the command line on a generated dataset in the dataset's layout."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import ade20k, coco_stuff, pascal_context
import fake_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ade20k_recipe_and_variants():
    config = ade20k.get_config()
    assert (config.dataset.name, config.dataset.num_classes, config.dataset.train_split) == ("ade20k", 150, "training")
    assert (config.model.name, config.model.depth, config.model.output_stride, config.model.bn_mode) == (
        "deeplab_v3plus", 101, 8, "train")
    assert config.data.crop_size == (512, 512) and config.data.scale_range == (0.5, 2.0)
    assert (config.data.batch_size, config.optimizer.learning_rate, config.optimizer.weight_decay) == (16, 0.01, 5e-4)
    assert config.train.steps == 80_000 and config.loss == "ce" and config.eval.inference.scales == (1.0,)
    config = ade20k.get_config("160k,ms_flip,semeda")
    assert config.train.steps == 160_000 and config.loss == "ce+semeda"
    assert config.eval.inference.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and config.eval.inference.flip
    assert ade20k.get_config("bal").loss == "bal"
    tfds = ade20k.get_config("tfds")
    assert (tfds.dataset.name, tfds.dataset.tfds_name, tfds.dataset.val_split) == ("tfds", "scene_parse150", "test")
    assert ade20k.get_config().dataset.tfds_name is None  # the TFDS fields are set by the variant only
    with pytest.raises(ValueError, match=r"configs/ade20k.py: unknown variant '40k'; known: \['160k', '80k'"):
        ade20k.get_config("40k")


def test_coco_stuff_and_pascal_context_recipes():
    config = coco_stuff.get_config("320k")
    assert (config.dataset.num_classes, config.train.steps, config.data.eval_pad_size) == (171, 320_000, (640, 640))
    assert config.data.input_scale == pytest.approx(512 / 480)
    config = pascal_context.get_config()
    assert (config.dataset.num_classes, config.train.steps, config.data.crop_size) == (60, 40_000, (480, 480))
    assert (config.optimizer.learning_rate, config.optimizer.weight_decay) == (0.004, 1e-4)
    assert (config.eval.inference.mode, config.eval.inference.window, config.eval.inference.stride) == (
        "sliding", (480, 480), (320, 320))
    assert pascal_context.get_config("59,80k").dataset.num_classes == 59


# (config file, generator, the generated dataset's folder for dataset.root, val split, expected val labels)
SMOKE_RUNS = {
    "ade20k": (fake_datasets.write_fake_ade20k, "ADEChallengeData2016", "validation", "labels"),
    "coco_stuff": (fake_datasets.write_fake_coco_stuff, "coco_stuff164k", "val2017", "labels"),
    "pascal_context": (fake_datasets.write_fake_pascal_context, "VOC2010", "val", "labels"),
}


@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_smoke_variant_trains_and_evaluates_through_the_cli(name, tmp_path):
    write, folder, val_split, labels = SMOKE_RUNS[name]
    fake = write(tmp_path / folder)
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "semeda_jax.main", f"--config=configs/{name}.py:smoke", f"--workdir={workdir}",
               f"--config.dataset.root={tmp_path / folder}", "--config.train.steps=4", "--config.train.eval_every=4",
               "--config.train.checkpoint_every=4"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "report.json") as f:
        report = json.load(f)
    print(f"{name}:smoke mIoU {report['miou']:.4f}")
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (fake["dataset"]["num_classes"],) * 2 and 0 <= report["miou"] <= 1
    valid = sum(int((fake[labels][i] != 255).sum()) for i in fake["splits"][val_split])
    assert confusion.sum() == valid  # void pixels (ADE20K's "other", code 0) never reach the metric
    if name == "ade20k":
        assert valid == sum(int((fake["codes"][i] != 0).sum()) for i in fake["splits"][val_split])
