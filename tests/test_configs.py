"""Every experiment config in configs/ parses, builds its model and loss on tiny shapes, and (where it needs no
module that is still to be built) runs every stage for a few steps on a generated miniature dataset in the
dataset's genuine on-disk format."""
import functools
import importlib
import json
import re
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from configs import common
from semeda_jax import data, objective, stages, train
from semeda_jax.losses import init_edge_net
from semeda_jax.validation import ConfigError
import fake_datasets

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py")
                 if "def get_config" in p.read_text())
FAKE_DATASETS = {"voc": fake_datasets.write_fake_voc_sbd, "cityscapes": fake_datasets.write_fake_cityscapes,
                 "helen": fake_datasets.write_fake_helen}


def load(name, arg=None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def test_every_config_file_is_covered():
    assert {"demo", "voc", "cityscapes", "helen", "pac_voc", "relationnet_cityscapes", "guidance_voc"} <= set(CONFIGS)


@pytest.mark.parametrize("arg", [None, "smoke"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model_and_loss_on_tiny_shapes(name, arg):
    config = load(name, arg)
    stages.check_config(config)
    num_classes = config.dataset.num_classes
    model = train.build_segmentation_model(config, num_classes)
    images = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
    key = jax.random.PRNGKey(0)
    variables = jax.eval_shape(functools.partial(model.init, train=False), {"params": key, "dropout": key}, images)
    outputs = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
    assert outputs["logits"].shape[0] == 2 and outputs["logits"].shape[-1] == num_classes
    labels = jax.ShapeDtypeStruct((2, 33, 33), jnp.int32)
    frozen = {"edge_net": jax.eval_shape(lambda: init_edge_net(key, num_classes))}
    total, terms = jax.eval_shape(objective.Objective(config), outputs, labels, frozen)
    assert total.shape == () and set(terms) == set(objective.parse_mix(config.loss))


def test_semeda_variants_select_loss_model_and_backbone():
    config = load("voc", "sobel,v2,resnet101")
    assert (config.loss, config.model.name, config.model.backbone, config.model.depth) == (
        "ce+sobel", "deeplab_v2", "resnet", 101)
    assert config.model.output_stride == 8 and config.losses.semeda.lambdas == (2.0, 4.0, 0.0)
    config = load("cityscapes")
    assert (config.loss, config.model.name, config.model.backbone) == ("ce+semeda", "deeplab_v3plus", "xception")
    assert config.data.input_scale == 1.0 and load("cityscapes", "v2").data.input_scale == 0.5
    assert config.losses.semeda.lambdas == (4.0, 2.0, 0.0) and config.model.bn_mode == "frozen"
    assert config.data.crop_size == (321, 321) and config.optimizer.learning_rate == 5e-4
    assert load("helen", "ppce").loss == "ce"
    with pytest.raises(ValueError, match="unknown variant 'resnet50'.*known"):
        load("voc", "resnet50")


def test_one_variant_parser_serves_every_config_file():
    groups = {"loss": ("semeda", ("semeda", "ppce")), **common.SMOKE}
    assert common.parse_variants(None, "x.py", groups) == {"loss": "semeda", "smoke": None}
    assert common.parse_variants(" smoke, ppce ", "x.py", groups) == {"loss": "ppce", "smoke": "smoke"}
    with pytest.raises(ValueError, match=r"^x.py: unknown variant 'dice'; known: \['ppce', 'semeda', 'smoke'\]$"):
        common.parse_variants("ppce,dice", "x.py", groups)
    with pytest.raises(ValueError, match=r"^configs/voc.py: variants 'ppce' and 'sobel' both choose the loss; give "
                                         r"one of \['semeda', 'ppce', 'sobel'\]$"):
        load("voc", "ppce,sobel")
    for name in ("demo", "pac_voc", "guidance_voc", "relationnet_cityscapes"):
        with pytest.raises(ValueError, match=rf"^configs/{name}.py: unknown variant 'tiny'; known: \[.*'smoke'"):
            load(name, "tiny")


@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_writes_only_dataset_fields_the_dataset_reads(name):
    config = load(name, "smoke")
    written = {key for key, value in config.dataset.items() if value is not None}
    assert written <= set(data.dataset_fields(config.dataset.name)), name


# One run per dataset config, covering every loss, model and backbone variant (smoke: ResNet-18 / Xception-26),
# and PAC + BAL.
# Cityscapes' v2 variant sees half-resolution images and is evaluated on the full-resolution labels.
RUNS = [("voc", "smoke,resnet101"), ("cityscapes", "smoke,ppce,v2"), ("helen", "smoke,sobel,v2,resnet101"),
        ("pac_voc", "smoke")]


@pytest.mark.parametrize("name,arg", RUNS)
def test_config_runs_every_stage_on_a_generated_dataset(name, arg, tmp_path, float32_jax):
    config = load(name, arg)
    fake = FAKE_DATASETS[config.dataset.name](tmp_path / "data")
    config.dataset.update(fake["dataset"])
    config.train.update(steps=3, log_every=3, eval_every=3, checkpoint_every=3)
    config.edge_net.steps = 5
    workdir = str(tmp_path / "run")
    lines = []
    state, history = stages.run_train(config, workdir, log=lines.append)
    assert int(state.step) == 3 and [step for step, _ in history] == [3]
    assert all(jnp.isfinite(value) for value in history[0][1].values())
    report = stages.run_eval(config, workdir, log=lines.append)
    with open(os.path.join(workdir, "report.json")) as f:
        saved = json.load(f)
    assert saved["miou"] == pytest.approx(report["miou"])
    val_ids = fake["splits"][config.dataset.val_split]
    valid_pixels = sum(int((fake["labels"][i] != 255).sum()) for i in val_ids)
    assert sum(map(sum, saved["confusion_matrix"])) == valid_pixels
    if config.eval.f1_groups:
        assert set(saved["merged_f1"]) == {"brows", "eyes", "nose", "mouth", "overall"}


@pytest.mark.parametrize("override,fragment", [
    ({"model.depth": 38}, "config.model: depth: unknown ResNet depth 38"),
    ({"model.backbone": "xception", "model.stem": "standard", "model.depth": 70},
     "config.model: depth: Xception depth 70 is not 23 + 3"),
    ({"model.backbone": "xceptoin"}, "config.model: backbone: unknown 'xceptoin'"),
    ({"model.output_stride": 4}, "config.model: output_stride: got 4"),
    ({"model.remat": "layers"}, "config.model: remat: unknown 'layers'; valid values are ['none', 'blocks'"),
    ({"dataset.name": "vocc"}, "config.dataset.name: unknown 'vocc'"),
    ({"eval.f1_groups": "face"}, "config.eval.f1_groups: unknown 'face'"),
    ({"model.bn_group_size": 3}, "config.model.bn_group_size: 3 must"),
    ({"data.input_scale": 0.0}, "config.data.input_scale: 0.0 must be > 0"),
    ({"model.pretrained": "/no/such/r101.pth"}, "config.model.pretrained: /no/such/r101.pth is not"),
])
def test_bad_settings_are_named_before_anything_runs(override, fragment):
    config = load("demo", "smoke")
    config.update_from_flattened_dict(override)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        stages.check_config(config)
