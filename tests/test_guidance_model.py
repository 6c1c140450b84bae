"""The guidance paper's classification branch: adaptive 7x7 max pool + FC 4096 + FC 4096 + FC C against NumPy
float64, "logits" = segmentation scores + broadcast class scores (Eq. 3), shapes of the guidance models at OS 8
and 16, parameter counts against the formula (and torchvision VGG-16's classifier), field routing, two training
steps through the real train step with the multi-label term, and the one-line error for a model without the
branch."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from semeda_jax import objective, parallel, stages, train
from semeda_jax.losses import multilabel_loss
from semeda_jax.models import MODELS, build_model
from semeda_jax.models.guidance import ClassificationBranch, adaptive_bins
from semeda_jax.validation import ConfigError

KEY = jax.random.PRNGKey(0)
GUIDANCE_MODELS = ("deeplab_largefov_guidance", "deeplab_guidance")
TINY = {"deeplab_largefov_guidance": dict(base_width=4), "deeplab_guidance": dict(base_width=4, depth=18)}


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def abstract(model, shape=(1, 33, 33, 3)):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, KEY, x)
    return variables, jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)


# ---------------------------------------------------------------- the branch against NumPy


def numpy_branch(features, params):
    """torch's AdaptiveMaxPool2d(7) by its bin rule (start floor(i h / 7), end ceil((i + 1) h / 7)), then
    ReLU(fc6), ReLU(fc7), classifier, in float64 on NHWC features."""
    batch, height, width, _ = features.shape
    pooled = np.empty((batch, 7, 7, features.shape[-1]))
    for i in range(7):
        for j in range(7):
            r0, r1 = math.floor(i * height / 7), math.ceil((i + 1) * height / 7)
            c0, c1 = math.floor(j * width / 7), math.ceil((j + 1) * width / 7)
            pooled[:, i, j] = features[:, r0:r1, c0:c1].max(axis=(1, 2))
    x = pooled.reshape(batch, -1)
    for name in ("fc6", "fc7"):
        x = np.maximum(x @ params[name]["kernel"] + params[name]["bias"], 0)
    return x @ params["classifier"]["kernel"] + params["classifier"]["bias"]


@pytest.mark.parametrize("height, width", [(5, 9), (13, 10), (7, 7), (1, 3)])
def test_branch_matches_the_float64_reference(rng, height, width):
    features = rng.normal(size=(2, height, width, 6))
    branch = ClassificationBranch(num_classes=4, class_width=10, dtype=jnp.float64)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3),
                          branch.init(KEY, {"out": jnp.asarray(features)})["params"])
    got = branch.apply({"params": params}, {"out": jnp.asarray(features)})
    assert got.shape == (2, 4) and got.dtype == jnp.float32
    expected = numpy_branch(features, jax.tree.map(np.asarray, params))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)  # float32 output


def test_adaptive_bins_cover_the_axis_like_torch():
    assert adaptive_bins(14, 7) == [(2 * i, 2 * i + 2) for i in range(7)]
    assert adaptive_bins(10, 7) == [(0, 2), (1, 3), (2, 5), (4, 6), (5, 8), (7, 9), (8, 10)]
    assert adaptive_bins(3, 7) == [(0, 1), (0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 3)]


def test_logits_are_the_segmentation_scores_plus_the_broadcast_class_scores():
    guided = build_model("deeplab_largefov_guidance", num_classes=3, base_width=4)
    plain = build_model("deeplab_largefov", num_classes=3, base_width=4)
    x = jax.random.normal(KEY, (2, 24, 20, 3), jnp.float32)
    variables = guided.init(KEY, x)
    outputs = guided.apply(variables, x)
    assert set(outputs) == {"logits", "class_logits"} and outputs["class_logits"].shape == (2, 3)
    without = {"params": {k: v for k, v in variables["params"].items() if k != "class_branch"}}
    segmentation = plain.apply(without, x)["logits"]
    np.testing.assert_allclose(np.asarray(outputs["logits"] - segmentation),
                               np.broadcast_to(np.asarray(outputs["class_logits"])[:, None, None], (2, 3, 3, 3)),
                               rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(outputs["class_logits"]).max()) > 0


# ---------------------------------------------------------------- shapes, counts, routing


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", GUIDANCE_MODELS)
def test_guidance_model_shapes(name, output_stride):
    model = build_model(name, num_classes=5, output_stride=output_stride, **TINY[name])
    _, outputs = abstract(model, (2, 33, 41, 3))
    cells = (math.ceil(33 / output_stride), math.ceil(41 / output_stride))
    assert outputs["logits"].shape == (2, *cells, 5) and outputs["class_logits"].shape == (2, 5)


@pytest.mark.parametrize("backbone_name, features, reduce", [("deeplab_largefov_guidance", 512, None),
                                                             ("deeplab_guidance", 2048, 512)])
def test_branch_parameter_count_follows_the_formula(backbone_name, features, reduce):
    classes, width = 21, 4096
    model = build_model(backbone_name, num_classes=classes, class_reduce=reduce,
                        **({"depth": 50} if backbone_name == "deeplab_guidance" else {}))  # ResNet-50: 2048 too
    variables, _ = abstract(model)
    branch = variables["params"]["class_branch"]
    pooled = reduce or features
    expected = 7 * 7 * pooled * width + width + width * width + width + width * classes + classes
    expected += features * reduce + reduce if reduce else 0
    assert count(branch) == expected
    assert set(branch) == {"fc6", "fc7", "classifier"} | ({"reduce"} if reduce else set())


def test_vgg16_with_a_1000_way_branch_has_torchvision_vgg16s_parameter_count():
    variables, _ = abstract(build_model("deeplab_largefov_guidance", num_classes=1000))
    params = variables["params"]
    assert count(params["backbone"]) + count(params["class_branch"]) == 138_357_544  # torchvision vgg16


def test_resnet_guidance_model_is_the_largefov_head_on_resnet_at_os16():
    assert MODELS["deeplab_guidance"] == dict(head="largefov", backbone="resnet", output_stride=16,
                                              class_branch=True)
    variables, outputs = abstract(build_model("deeplab_guidance", num_classes=21, depth=18, base_width=8))
    # ResNet-18's layer4 (8 x base_width channels) -> 1024 * 8 / 64 filters
    assert variables["params"]["fc6"]["kernel"].shape == (3, 3, 64, 128)
    assert set(outputs) == {"logits", "class_logits"}
    _, plain = abstract(build_model("deeplab_guidance", num_classes=21, depth=18, base_width=8, class_branch=False))
    assert set(plain) == {"logits"}


def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
    model = build_model("deeplab_largefov_guidance", num_classes=3, base_width=4, dtype=jnp.bfloat16)
    variables, outputs = abstract(model)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {np.dtype(np.float32)}
    assert outputs["logits"].dtype == outputs["class_logits"].dtype == jnp.float32


def test_branch_fields_are_routed_only_to_a_model_with_the_branch():
    with pytest.raises(ValueError, match=r"model 'deeplab_largefov': unknown argument\(s\) \['class_width'\]"):
        build_model("deeplab_largefov", num_classes=3, class_width=8)
    model = build_model("deeplab_largefov", num_classes=3, class_branch=True, class_width=8, base_width=4)
    variables, outputs = abstract(model)
    assert variables["params"]["class_branch"]["fc7"]["kernel"].shape == (8, 8) and "class_logits" in outputs


# ---------------------------------------------------------------- training and config errors


def tiny_config(**overrides):
    config = common.base_config()
    config.model.update(name="deeplab_largefov_guidance", backbone="vgg16", depth=16, stem="standard",
                        base_width=4, output_stride=8)
    config.dataset.num_classes = 3
    config.data.update(crop_size=(32, 32), batch_size=2)
    config.loss = "ce+multilabel"
    config.losses.multilabel.weight = 0.5
    config.update_from_flattened_dict(overrides)
    return config


@pytest.mark.usefixtures("float32_jax")
def test_guidance_model_trains_two_steps_through_the_real_step(rng):
    config = tiny_config()
    stages.check_config(config)
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, 3)
    state = train.create_train_state(config, model, KEY, mesh)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 32, 32)).astype(np.int32)
    labels[0, labels[0] == 1] = 255  # class 1 absent from image 0 (void), so its target is 0
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    class_logits = model.apply(variables, jnp.asarray(images))["class_logits"]  # eval mode: no dropout
    before = np.asarray(state.params["class_branch"]["classifier"]["kernel"])
    step = train.jit_train_step(config, state, mesh)
    batch = parallel.global_batch({"image": images, "label": labels}, mesh)
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch, {}, jax.random.PRNGKey(1))
        losses.append({k: float(v) for k, v in metrics.items()})
    assert set(losses[0]) >= {"loss", "loss_ce", "loss_multilabel"}
    for values in losses:
        assert np.isfinite(values["loss"])
        np.testing.assert_allclose(values["loss"], values["loss_ce"] + values["loss_multilabel"], rtol=1e-6)
    # at initialisation the branch's logits are ~0 with or without dropout: the term is ~0.5 * log 2
    np.testing.assert_allclose(losses[0]["loss_multilabel"],
                               0.5 * float(multilabel_loss(class_logits, jnp.asarray(labels))), rtol=1e-2)
    assert not np.allclose(np.asarray(state.params["class_branch"]["classifier"]["kernel"]), before)


def test_multilabel_on_a_model_without_the_branch_is_a_one_line_config_error():
    config = tiny_config(**{"model.name": "deeplab_largefov"})
    with pytest.raises(ConfigError, match=r"^config.loss: term 'multilabel' reads the model output 'class_logits', "
                                          r"which model 'deeplab_largefov' does not produce \(its outputs: "
                                          r"\['logits'\]\)$"):
        stages.check_config(config)
    assert objective.TERMS["multilabel"].reads == ("class_logits",)
