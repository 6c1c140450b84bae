"""RelationNet's similarity subnet (models/similarity.py) and the "scl" term on it: the subnet against a NumPy
float64 reference that concatenates (anchor, zero-padded shifted) features literally, gradients of subnet +
SCL, the term's label downsampling, targets and class-balancing counts against brute-force loops, the subnet
absent from the compiled prediction, and the whole "relationnet" model training two real steps."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from configs import common
from semeda_jax import objective, parallel, stages, train
from semeda_jax.losses.scl import neighbour_offsets, pair_targets, spatial_correlation_loss_from_labels
from semeda_jax.models import build_model
from semeda_jax.models.similarity import NEIGHBOUR_OFFSETS, SimilarityHead

VOID = 255


def random_params(rng, shapes, scale=0.5):
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, scale, s.shape)), shapes)


def numpy_pair_logits(x, params):
    """x [B,h,w,D] float64 -> [B,h,w,9]: per pixel and offset, the concatenation [f(m); f~(m + o)] (zero outside
    the image) through 1x1 (2D -> width, bias) + ReLU + 1x1 (width -> 1, bias)."""
    batch, height, width, _ = x.shape
    w1 = np.concatenate([params["anchor"]["kernel"][0, 0], params["neighbour"]["kernel"][0, 0]], axis=0)
    b1 = params["anchor"]["bias"]
    w2, b2 = params["pair_classifier"]["kernel"][0, 0, :, 0], params["pair_classifier"]["bias"][0]
    out = np.zeros((batch, height, width, 9))
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                for k, (dy, dx) in enumerate(neighbour_offsets()):
                    ni, nj = i + dy, j + dx
                    inside = 0 <= ni < height and 0 <= nj < width
                    shifted = x[b, ni, nj] if inside else np.zeros(x.shape[-1])
                    hidden = np.maximum(np.concatenate([x[b, i, j], shifted]) @ w1 + b1, 0)
                    out[b, i, j, k] = hidden @ w2 + b2
    return out


def brute_force_scl(pair_logits, labels):
    """Nearest downsampling (pixel floor((i + 1/2) H / h)), then loops over pixels and offsets for the targets,
    the counts n_same / n_diff of the batch's valid pairs, and Eq. 6 with alpha, beta of Eq. 5."""
    batch, height, width, _ = pair_logits.shape
    full_h, full_w = labels.shape[1:]
    small = np.array([[[labels[b, (2 * i + 1) * full_h // (2 * height), (2 * j + 1) * full_w // (2 * width)]
                        for j in range(width)] for i in range(height)] for b in range(batch)])
    n_same = n_diff = 0
    same_terms, diff_terms = [], []
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                for k, (dy, dx) in enumerate(neighbour_offsets()):
                    ni, nj = i + dy, j + dx
                    if not (0 <= ni < height and 0 <= nj < width) or VOID in (small[b, i, j], small[b, ni, nj]):
                        continue
                    p = 1 / (1 + np.exp(-pair_logits[b, i, j, k]))
                    if small[b, i, j] == small[b, ni, nj]:
                        n_same += 1
                        same_terms.append(np.log(p))
                    else:
                        n_diff += 1
                        diff_terms.append(np.log(1 - p))
    n = n_same + n_diff
    loss = -(n_diff / n * np.sum(same_terms) + n_same / n * np.sum(diff_terms)) / n
    return loss, small, n_same, n_diff


def labels_with_void(rng, shape, num_classes=3):
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) < 0.15] = VOID
    return labels.astype(np.int32)


def test_offset_order_is_the_losss():
    assert NEIGHBOUR_OFFSETS == neighbour_offsets()


def test_subnet_matches_the_literal_concatenation(rng):
    head = SimilarityHead(similarity_width=5, dtype=jnp.float64)
    x = rng.normal(size=(2, 4, 5, 6))
    shapes = jax.eval_shape(head.init, jax.random.PRNGKey(0), {"out": jnp.zeros((1, 4, 5, 6))})["params"]
    assert jax.tree.map(np.shape, shapes) == {"anchor": {"kernel": (1, 1, 6, 5), "bias": (5,)},
                                              "neighbour": {"kernel": (1, 1, 6, 5)},
                                              "pair_classifier": {"kernel": (1, 1, 5, 1), "bias": (1,)}}
    params = random_params(rng, shapes)
    expected = numpy_pair_logits(x, jax.tree.map(np.asarray, params))
    apply = jax.jit(head.apply)
    out = apply({"params": params}, {"out": jnp.asarray(x)})["pair_logits"]
    assert out.shape == (2, 4, 5, 9) and out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)
    # the classifier's input, when the head shares it, is read instead of the backbone's "out"
    shared = apply({"params": params}, {"out": jnp.zeros_like(x), "classifier_input": jnp.asarray(x)})
    np.testing.assert_array_equal(np.asarray(shared["pair_logits"]), np.asarray(out))


def test_subnet_plus_scl_gradients_match_finite_differences(rng):
    """W.r.t. every subnet parameter and the input features, with full-resolution labels (the term downsamples)."""
    head = SimilarityHead(similarity_width=4, dtype=jnp.float64)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)))
    params = random_params(rng, jax.eval_shape(head.init, jax.random.PRNGKey(0), {"out": x})["params"])
    labels = jnp.asarray(labels_with_void(rng, (2, 12, 16)))

    def loss(params, x):
        return spatial_correlation_loss_from_labels(head.apply({"params": params}, {"out": x})["pair_logits"], labels)

    assert loss(params, x).dtype == jnp.float64
    check_grads(loss, (params, x), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("label_size", [(16, 20), (33, 38), (4, 5)], ids=["os4", "odd", "same"])
def test_scl_term_downsamples_and_counts_like_brute_force(label_size, rng):
    """The registered term (weight 0.1, through objective.Objective) with labels at the crop's resolution."""
    pair_logits = rng.normal(0, 2, (2, 4, 5, 9))
    labels = labels_with_void(rng, (2, *label_size))
    expected, small, n_same, n_diff = brute_force_scl(pair_logits, labels)
    same, valid = pair_targets(jnp.asarray(small))
    assert (int(same.sum()), int((valid & ~same).sum())) == (n_same, n_diff) and n_same > 0 and n_diff > 0
    config = ml_collections.ConfigDict(dict(loss="scl", losses=dict(scl=dict(weight=0.1))))
    total, terms = objective.Objective(config)({"pair_logits": jnp.asarray(pair_logits)}, jnp.asarray(labels),
                                                   {})
    np.testing.assert_allclose(float(terms["scl"]), 0.1 * expected, rtol=1e-12)
    np.testing.assert_allclose(float(total), 0.1 * expected, rtol=1e-12)


def test_prediction_does_not_compute_the_subnet():
    """Inference reads only "logits": the compiled prediction of a model with the similarity subnet has the
    FLOPs of the model without it (XLA drops the unused output), while its training forward has more."""
    x = jax.ShapeDtypeStruct((1, 48, 40, 3), jnp.float32)
    flops = {}
    for aux, name in (("", "predict"), ("similarity", "predict"), ("similarity", "all")):
        model = build_model("relationnet", num_classes=3, base_width=2, aux_heads=aux)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
        fn = (lambda v, x: model.apply(v, x)["logits"]) if name == "predict" else model.apply
        flops[aux, name] = jax.jit(fn).lower(variables, x).compile().cost_analysis()["flops"]
    assert flops["", "predict"] == flops["similarity", "predict"]
    assert flops["similarity", "all"] > flops["similarity", "predict"]


@pytest.mark.usefixtures("float32_jax")
def test_relationnet_with_scl_trains_two_real_steps(rng):
    """The whole model (ResNet-38 + DCN + relation module + similarity subnet) at smoke size, OHEM + 0.1 SCL,
    through the real jitted train step; the logged SCL equals the brute-force loss of the step's own outputs."""
    config = common.base_config()
    config.model.update(name="relationnet", backbone="resnet38", stem="standard", output_stride=8, bn_mode="train",
                        aux_heads="similarity")
    common.shrink_for_smoke(config)
    config.dataset.num_classes = 3
    config.data.update(crop_size=(32, 32), batch_size=2)
    config.loss = "ohem+scl"
    config.losses.scl.weight = 0.1
    config.optimizer.weight_decay = 0.0  # so that a changed parameter means a nonzero gradient
    stages.check_config(config)
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, 3)
    state = train.create_train_state(config, model, jax.random.PRNGKey(0), mesh)
    assert {"backbone", "relation", "classifier", "aux_heads_0"} <= set(state.params)
    batch = {"image": rng.normal(size=(2, 32, 32, 3)).astype(np.float32),
             "label": labels_with_void(rng, (2, 32, 32))}
    forward = jax.jit(lambda variables, images: model.apply(variables, images, train=True, mutable=["batch_stats"]))
    outputs = forward({"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(batch["image"]))[0]
    assert outputs["logits"].shape == (2, 4, 4, 3) and outputs["pair_logits"].shape == (2, 4, 4, 9)
    expected_scl = brute_force_scl(np.asarray(outputs["pair_logits"], np.float64), batch["label"])[0]
    offsets = np.asarray(state.params["backbone"]["b7"]["conv_branch2b1"]["offset"]["kernel"])
    subnet = np.asarray(state.params["aux_heads_0"]["anchor"]["kernel"])
    step = train.jit_train_step(config, state, mesh, jax.random.PRNGKey(1))
    for i in range(2):
        state, metrics = step(state, parallel.global_batch(batch, mesh), {})
        assert np.isfinite(float(metrics["loss"]))
        np.testing.assert_allclose(float(metrics["loss"]), float(metrics["loss_ohem"] + metrics["loss_scl"]),
                                   rtol=1e-5)
        if i == 0:
            np.testing.assert_allclose(float(metrics["loss_scl"]), 0.1 * expected_scl, rtol=1e-4)
    # SCL reaches the subnet; the zero-initialised deformable offsets get gradients and move
    assert not np.array_equal(np.asarray(state.params["aux_heads_0"]["anchor"]["kernel"]), subnet)
    assert not np.array_equal(np.asarray(state.params["backbone"]["b7"]["conv_branch2b1"]["offset"]["kernel"]),
                              offsets)
