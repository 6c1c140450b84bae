"""The seams a new paper plugs into: named model outputs read by registered loss terms, the frozen-nets argument,
per-term logit gradient norms, and config fields that no code reads."""
import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from semeda_jax import (crf, data, edge_pretrain, evaluate, fusion, inference, objective, optim, parallel, stages,
                        train)
from semeda_jax.models import AUX_HEADS
from semeda_jax.validation import ConfigError

pytestmark = pytest.mark.usefixtures("float32_jax")


class ToyHead(nn.Module):
    """An auxiliary head: 1x1 conv of the backbone's "out" features to 2 channels, output "toy"."""

    @nn.compact
    def __call__(self, features, train=False):
        return {"toy": nn.Conv(2, (1, 1), name="toy_conv")(features["out"]).astype(jnp.float32)}


def toy_loss(toy, labels, *, target=1.0):
    """Mean squared distance of the toy output to `target` (ignores the labels)."""
    return jnp.mean((toy - target) ** 2)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(AUX_HEADS, "toy", ToyHead)
    monkeypatch.setitem(objective.TERMS, "toy", objective.Term(toy_loss, reads=("toy",)))


def tiny_config(**overrides):
    """Smoke-size DeepLab v3, 3 classes, 32x32 crops, batch 2, CE (+ a section for the toy term in the mix)."""
    config = common.base_config()
    common.shrink_for_smoke(config)
    config.model.update(name="deeplab_v3", bn_mode="train")
    config.dataset.num_classes = 3
    config.data.update(crop_size=(32, 32), batch_size=2)
    config.loss = "ce"
    config.update_from_flattened_dict(overrides)
    if "toy" in config.loss:
        config.losses.toy = ml_collections.ConfigDict(dict(weight=0.5, target=2.0))
    return config


def batch(rng, size=2):
    return {"image": rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 3, (size, 32, 32)).astype(np.int32)}


def test_an_aux_head_and_a_term_reading_it_train_through_the_real_step(toy_registered, rng):
    config = tiny_config(loss="ce+toy", **{"model.aux_heads": "toy"})
    stages.check_config(config)
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, 3)
    state = train.create_train_state(config, model, jax.random.PRNGKey(0), mesh)
    assert "aux_heads_0" in state.params and "classifier" in state.params
    images = batch(rng)
    outputs = model.apply({"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(images["image"]),
                          train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(5)})[0]
    assert set(outputs) == {"logits", "toy"} and outputs["toy"].shape == (2, 2, 2, 2)
    expected_toy = 0.5 * np.mean((np.asarray(outputs["toy"], np.float64) - 2.0) ** 2)
    before = np.asarray(state.params["aux_heads_0"]["toy_conv"]["kernel"])
    step = train.jit_train_step(config, state, mesh)
    new_state, metrics = step(state, parallel.global_batch(images, mesh), {}, jax.random.PRNGKey(1))
    assert set(metrics) >= {"loss", "loss_ce", "loss_toy"}
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics["loss_ce"] + metrics["loss_toy"]), rtol=1e-6)
    # dropout (the only difference from `outputs`) sits in the ASPP branch, not in the toy head's input
    np.testing.assert_allclose(float(metrics["loss_toy"]), expected_toy, rtol=1e-5)
    assert not np.allclose(np.asarray(new_state.params["aux_heads_0"]["toy_conv"]["kernel"]), before)


def test_a_zoo_mix_with_the_ohem_sampler_trains_through_the_real_step(rng):
    """"ce+dice" (losses/dice.py) with hard pixels only: one jitted step, both terms logged and finite."""
    config = tiny_config(loss="ce+dice", **{"losses.dice.weight": 0.5, "sampler.name": "ohem",
                                            "sampler.ohem.min_kept": 100})
    stages.check_config(config)
    mesh = parallel.make_mesh(config)
    state = train.create_train_state(config, train.build_segmentation_model(config, 3), jax.random.PRNGKey(0), mesh)
    before = jax.tree_util.tree_map(np.asarray, state.params)
    new_state, metrics = train.jit_train_step(config, state, mesh)(
        state, parallel.global_batch(batch(rng), mesh), {}, jax.random.PRNGKey(1))
    assert set(metrics) >= {"loss", "loss_ce", "loss_dice"}
    assert 0 < float(metrics["loss_dice"]) <= 0.5 and np.isfinite(float(metrics["loss_ce"]))
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics["loss_ce"] + metrics["loss_dice"]), rtol=1e-6)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, np.asarray(b)), before, new_state.params)
    assert any(jax.tree_util.tree_leaves(changed))


def test_a_term_reading_a_missing_output_is_a_one_line_config_error(toy_registered):
    config = tiny_config(loss="ce+toy")  # no aux head: the model has only "logits"
    with pytest.raises(ConfigError, match=r"^config.loss: term 'toy' reads the model output 'toy', which model "
                                          r"'deeplab_v3' does not produce \(its outputs: \['logits'\]\)$"):
        stages.check_config(config)
    config = tiny_config(loss="ohem+scl")  # RelationNet's mix on a model without pair logits
    with pytest.raises(ConfigError, match="term 'scl' reads the model output 'pair_logits'") as error:
        stages.check_config(config)
    assert "\n" not in str(error.value)
    # the objective itself says the same at trace time
    with pytest.raises(ConfigError, match="reads the model output 'pair_logits'"):
        objective.Objective(config)({"logits": jnp.zeros((1, 4, 4, 3))}, jnp.zeros((1, 4, 4), jnp.int32), {})


def test_registry_derives_the_frozen_nets_and_checks_sections():
    config = tiny_config(loss="ce+semeda")
    assert objective.frozen_nets(config) == {"edge_net"} and objective.needs_edge_net(config)
    config.loss = "ce+sobel"
    assert not objective.needs_edge_net(config)
    config.phases = ml_collections.ConfigDict(dict(order="a", a=dict(steps=2, loss="ce+semeda")))
    assert objective.needs_edge_net(config)  # a phase's mix counts too
    for name, term in objective.TERMS.items():  # every term has a section whose fields it takes
        section = common.base_config().losses[name]
        assert set(section) - {"weight"} <= set(term.hyperparameters()), name
    config = tiny_config(loss="ce+sobel")
    del config.losses.sobel
    with pytest.raises(ConfigError, match=r"config.losses.sobel: missing \(the 'sobel' term of config.loss"):
        stages.check_config(config)
    config = tiny_config()
    config.losses.bal.sigmaa = 2.0
    with pytest.raises(ConfigError, match=r"config.losses.bal.sigmaa: no such hyperparameter of the 'bal' term"):
        stages.check_config(config)


def test_logit_grad_norms_match_the_cross_entropy_gradient(rng):
    """d CE / d logits = (softmax - onehot) / n_valid at valid pixels (labels at the logits' resolution)."""
    config = tiny_config(loss="ce+sobel", **{"losses.ce.weight": 0.7, "train.log_logit_grad_norms": True})
    logits = rng.normal(size=(2, 8, 8, 3))
    labels = rng.integers(0, 3, (2, 8, 8))
    labels[0, :2] = 255
    loss_fn = objective.Objective(config)
    norms = jax.jit(lambda o, l: train.logit_grad_norms(loss_fn, o, l, {}))(
        {"logits": jnp.asarray(logits, jnp.float32)}, jnp.asarray(labels, jnp.int32))
    assert set(norms) == {"logit_grad_norm_ce", "logit_grad_norm_sobel"}
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    valid = labels != 255
    grad = (probs - np.eye(3)[np.where(valid, labels, 0)]) * valid[..., None] / valid.sum()
    np.testing.assert_allclose(float(norms["logit_grad_norm_ce"]), 0.7 * np.linalg.norm(grad), rtol=1e-5)
    assert float(norms["logit_grad_norm_sobel"]) > 0


def test_the_step_logs_logit_grad_norms_only_when_asked(rng):
    for flag in (False, True):
        config = tiny_config(**{"train.log_logit_grad_norms": flag})
        mesh = parallel.make_mesh(config)
        state = train.create_train_state(config, train.build_segmentation_model(config, 3), jax.random.PRNGKey(0),
                                         mesh)
        _, metrics = train.jit_train_step(config, state, mesh)(
            state, parallel.global_batch(batch(rng), mesh), None, jax.random.PRNGKey(1))
        assert ("logit_grad_norm_ce" in metrics) == flag
        if flag:
            assert float(metrics["logit_grad_norm_ce"]) > 0


@pytest.mark.parametrize("field, value, key", [
    ("eval.tta", ml_collections.ConfigDict(dict(scales=(1.0,))), "config.eval.tta"),
    ("schedule", (), "config.schedule"),
    ("train.stpes", 3, "config.train.stpes"),
    ("optimizer.nesterov", True, "config.optimizer.nesterov"),
])
def test_a_field_no_code_reads_is_rejected_with_its_name(field, value, key):
    config = tiny_config()
    section, _, name = field.rpartition(".")
    target = config[section] if section else config
    with target.unlocked():
        target[name] = value
    with pytest.raises(ConfigError, match=f"^{key}: no code reads this field"):
        stages.check_config(config)


def test_the_known_fields_are_those_of_the_base_config():
    config = common.base_config()
    known_fields = {"": stages.TOP_FIELDS, "data": stages.DATA_FIELDS, "edge_net": edge_pretrain.CONFIG_FIELDS,
                    "optimizer": optim.CONFIG_FIELDS, "train": train.CONFIG_FIELDS, "eval": evaluate.CONFIG_FIELDS,
                    "parallel": parallel.CONFIG_FIELDS}
    for section, known in known_fields.items():
        assert set(config if not section else config[section]) == set(known), section
    assert set(config.dataset) == {field for name in data.DATASETS for field in data.dataset_fields(name)}
    assert set(config.losses) == set(objective.TERMS)
    assert set(config.sampler) == {"name", *objective.SAMPLERS}
    assert set(config.eval.crf) == set(crf.CONFIG_FIELDS)
    assert set(config.eval.learn_fusion) == set(fusion.CONFIG_FIELDS)
    assert set(config.eval.inference) == set(dataclasses.asdict(inference.InferenceSpec())) - {
        "postprocess_options", "view_weights"}
    model = ml_collections.ConfigDict(config.model.to_dict())
    model.unknown_width = 3
    config.model = model
    with pytest.raises(ConfigError, match=r"config.model: model 'deeplab_v3plus': unknown argument\(s\) "
                                          r"\['unknown_width'\]"):
        stages.check_config(config)


def test_a_dataset_field_its_dataset_does_not_read_is_rejected_with_its_name():
    config = tiny_config(**{"dataset.name": "voc", "dataset.root": "/data/VOC2012"})  # smoke wrote synthetic's sizes
    with pytest.raises(ConfigError, match=r"^config.dataset.image_size: no code reads this field for dataset 'voc'; "
                                          r"valid fields: \['name', 'num_classes', 'train_split', 'val_split', "
                                          r"'root', 'label_dir', 'sbd_root', 'cache_dir'\]$"):
        stages.check_config(config)
    config.dataset.update(num_train=None, num_val=None, image_size=None)  # None = unset
    stages.check_config(config)
    config.dataset.annotation = "gtCoarse"  # Cityscapes' field
    with pytest.raises(ConfigError, match=r"^config.dataset.annotation: no code reads this field for dataset 'voc'"):
        stages.check_config(config)


@pytest.mark.parametrize("mix, key", [("ce+ce", "config.loss"), ("ohem+scl+ohem", "config.phases.a.loss")])
def test_a_term_named_twice_in_a_mix_is_rejected(mix, key):
    config = tiny_config()
    if key == "config.loss":
        config.loss = mix
    else:
        config.phases = ml_collections.ConfigDict(dict(order="a", a=dict(steps=2, loss=mix)))
    name = mix.split("+")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: term '{name}' appears twice in '{re.escape(mix)}'; set its "
                                          rf"weight in config.losses.{name}.weight instead$"):
        stages.check_config(config)


def test_a_term_is_traced_on_the_output_shapes_and_frozen_nets_of_the_registry(monkeypatch):
    """A term reading an image-level output and a new frozen net: one TERMS entry, its OUTPUTS shape and its
    FROZEN_NETS init make check_config trace it (a wrong shape or missing net would fail there)."""
    def image_loss(scores, labels, net, *, margin=1.0):
        assert scores.shape == (1, 5) and net["w"].shape == (5,)
        return jnp.mean(jax.nn.relu(margin - scores * net["w"]))

    monkeypatch.setitem(objective.TERMS, "image", objective.Term(image_loss, reads=("scores",), needs=("toy_net",)))
    monkeypatch.setitem(objective.OUTPUTS, "scores", lambda num_classes: (1, num_classes))
    monkeypatch.setitem(objective.FROZEN_NETS, "toy_net", lambda key, num_classes: {"w": jnp.ones(num_classes)})
    config = tiny_config(**{"dataset.num_classes": 5})
    config.losses.image = ml_collections.ConfigDict(dict(weight=1.0, margin=0.5))
    config.loss = "ce+image"
    objective.check_config(config)
    assert objective.frozen_nets(config) == {"toy_net"}
    config.losses.image = ml_collections.ConfigDict(dict(weight=1.0, margin="wide"))
    with pytest.raises(ConfigError, match=r"^config.losses.image: "):
        objective.check_config(config)


@pytest.mark.parametrize("field, value, message", [
    ("parallel.param_sharding", "zero3", "config.parallel.param_sharding: unknown 'zero3'; valid: ['replicated', "
                                         "'data']"),
    ("parallel.spatial_partitions", 0, "config.parallel.spatial_partitions: expected an integer >= 1, got 0"),
])
def test_bad_parallel_settings_are_named_before_anything_runs(field, value, message):
    config = tiny_config(**{field: value})
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        stages.check_config(config)
