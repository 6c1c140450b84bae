"""Edge net g_phi, its pre-training loss (Eq. 7) and the SEMEDA loss (Eqs. 4-6) against NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import references as ref
from semeda_jax.losses.edge_net import edge_net_embeddings, edge_pretrain_loss, init_edge_net
from semeda_jax.losses.semeda import semeda_layer_losses, semeda_loss
from semeda_jax.validation import InputError


def random_edge_net(num_classes, seed=0):
    params = init_edge_net(jax.random.PRNGKey(seed), num_classes, dtype=jnp.float64)
    # Non-zero biases so that the bias path is exercised too.
    return jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), p.shape), params)


def test_init_has_paper_widths():
    params = init_edge_net(jax.random.PRNGKey(0), 21)
    assert [params[n]["kernel"].shape for n in ("conv1", "conv2", "conv3")] == [
        (3, 3, 21, 16), (3, 3, 16, 32), (3, 3, 32, 2)]


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_embeddings_match_reference(rng, num_classes):
    params = random_edge_net(num_classes)
    masks = rng.random((2, 7, 9, num_classes))
    got = edge_net_embeddings(params, masks)
    for g, want in zip(got, ref.edge_net_embeddings(params, masks)):
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_pretrain_loss_matches_reference(rng, num_classes):
    params = random_edge_net(num_classes)
    labels = ref.random_labels(rng, (2, 9, 8), num_classes)
    one_hot = np.stack([labels == c for c in range(num_classes)], -1).astype(np.float64)  # void -> zeros
    edge_probs = ref.edge_net_embeddings(params, one_hot)[2]
    edges = ref.semantic_edges(labels).astype(int)
    valid = labels != ref.VOID
    picked = np.take_along_axis(edge_probs, edges[..., None], -1)[..., 0]
    np.testing.assert_allclose(edge_pretrain_loss(params, labels, num_classes), -np.log(picked[valid]).mean(),
                               rtol=1e-10)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduction", ["mean_pixels_sum_channels", "mean", "sum"])
@pytest.mark.parametrize("num_classes,shape,logit_hw", [(2, (1, 8, 9), (8, 9)), (5, (2, 10, 7), (10, 7)),
                                                        (21, (2, 8, 12), (4, 6))])
def test_semeda_matches_reference(rng, reduction, normalize, num_classes, shape, logit_hw):
    params = random_edge_net(num_classes)
    labels = ref.random_labels(rng, shape, num_classes)
    logits = rng.normal(size=(shape[0],) + logit_hw + (num_classes,)) * 2
    want = ref.semeda_layer_losses(logits, labels, params, reduction, normalize)
    got = semeda_layer_losses(logits, labels, params, reduction=reduction, normalize=normalize)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    lambdas = (2.0, 4.0, 0.5)
    np.testing.assert_allclose(semeda_loss(logits, labels, params, lambdas=lambdas, reduction=reduction,
                                           normalize=normalize), np.dot(lambdas, want), rtol=1e-9)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("lambdas", [(2.0, 4.0, 0.0), (3.0, 0.0, 0.0), (0.0, 1.5, 0.0), (0.0, 0.0, 0.0)])
def test_trailing_zero_lambdas_skip_layers_without_changing_value_or_gradient(rng, lambdas, normalize):
    """semeda_loss runs g_phi only up to the last non-zero lambda: value against the NumPy reference, gradient
    against the weighted sum of all three layer losses (and the same with the lambdas traced, which run all)."""
    params = random_edge_net(4)
    labels = ref.random_labels(rng, (2, 9, 10), 4)
    logits = jnp.asarray(rng.normal(size=(2, 9, 10, 4)) * 2)
    want = np.dot(lambdas, ref.semeda_layer_losses(np.asarray(logits), labels, params, "mean", normalize))
    loss = lambda x, weights: semeda_loss(x, labels, params, lambdas=weights, reduction="mean", normalize=normalize)
    full = lambda x: jnp.dot(jnp.asarray(lambdas), semeda_layer_losses(x, labels, params, reduction="mean",
                                                                        normalize=normalize))
    np.testing.assert_allclose(loss(logits, lambdas), want, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(jax.grad(loss)(logits, lambdas), jax.grad(full)(logits), rtol=1e-9, atol=1e-15)
    traced = jax.jit(lambda x, weights: jax.value_and_grad(loss)(x, tuple(weights)))
    value, grad = traced(logits, jnp.asarray(lambdas))
    np.testing.assert_allclose(value, want, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(grad, jax.grad(full)(logits), rtol=1e-9, atol=1e-15)
    assert len(semeda_layer_losses(logits, labels, params, depth=2)) == 2


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("lambdas", [(2.0, 4.0, 0.0), (4.0, 2.0, 0.0), (1.0, 1.0, 1.0)])
@pytest.mark.parametrize("confident", [False, True])
def test_bfloat16_maps_stay_close_to_the_float64_reference(rng, lambdas, normalize, confident):
    """compute_dtype=bfloat16 (the mixed-precision step's): the masks, g_phi's convolutions and embeddings at the
    labels' resolution in bfloat16, softmax and L1 sums in float32. Value within 2e-3 and the logits' gradient
    within 6% (relative L2; cosine > 0.998) of float64, on random logits and on confident ones near the truth
    (where the two embeddings are close and their bfloat16 rounding matters most); measured: ~2e-4 and ~3%."""
    num_classes = 21
    params = random_edge_net(num_classes)
    labels = ref.random_labels(rng, (2, 32, 48), num_classes)
    if confident:
        logits = _one_hot_logits(np.where(labels == ref.VOID, 0, labels)[:, ::4, ::4], num_classes, 6.0)
        logits = logits + rng.normal(size=logits.shape)
    else:
        logits = rng.normal(size=(2, 8, 12, num_classes)) * 2
    want = np.dot(lambdas, ref.semeda_layer_losses(logits, labels, params, "mean_pixels_sum_channels", normalize))
    loss = lambda x, dtype: semeda_loss(x, labels, params, lambdas=lambdas, normalize=normalize, compute_dtype=dtype)
    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32), jnp.bfloat16)
    assert value.dtype == grad.dtype == jnp.float32
    np.testing.assert_allclose(value, want, rtol=2e-3)
    want_grad = np.asarray(jax.grad(loss)(logits, None))  # float64, checked against the reference above
    grad = np.asarray(grad, np.float64)
    assert np.linalg.norm(grad - want_grad) < 0.06 * np.linalg.norm(want_grad)
    assert np.dot(grad.ravel(), want_grad.ravel()) > 0.998 * np.linalg.norm(grad) * np.linalg.norm(want_grad)


def test_bfloat16_maps_run_g_phi_in_bfloat16(rng):
    """The passes at the labels' resolution are bfloat16 in the compiled program (what cuts their bytes)."""
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), random_edge_net(5))
    labels = ref.random_labels(rng, (1, 16, 16), 5)
    logits = jnp.asarray(rng.normal(size=(1, 4, 4, 5)), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda x: semeda_loss(x, labels, params, compute_dtype=jnp.bfloat16))(logits))
    convs = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
    assert convs and all("bf16[1,16,16," in line for line in convs)
    plain = str(jax.make_jaxpr(lambda x: semeda_loss(x, labels, params))(logits))
    assert "bf16" not in plain


def test_normalized_is_independent_of_reduction_and_of_the_edge_net_scale(rng):
    params = random_edge_net(4)
    labels = ref.random_labels(rng, (2, 9, 10), 4)
    logits = rng.normal(size=(2, 9, 10, 4))
    layers = {r: semeda_layer_losses(logits, labels, params, reduction=r, normalize=True)
              for r in ("mean_pixels_sum_channels", "mean", "sum")}
    np.testing.assert_allclose(layers["mean"], layers["sum"], rtol=1e-12)
    np.testing.assert_allclose(layers["mean"], layers["mean_pixels_sum_channels"], rtol=1e-12)
    # Scaling conv1 and conv2's bias by 3 scales psi_1 and psi_2 by 3 (ReLU is positively homogeneous): the
    # plain loss scales with it, the normalised one does not.
    scaled = {**params, "conv1": jax.tree_util.tree_map(lambda p: 3.0 * p, params["conv1"]),
              "conv2": {**params["conv2"], "bias": 3.0 * params["conv2"]["bias"]}}
    plain, plain_scaled = (semeda_layer_losses(logits, labels, p) for p in (params, scaled))
    np.testing.assert_allclose(plain_scaled[:2], 3.0 * plain[:2], rtol=1e-10)
    np.testing.assert_allclose(semeda_layer_losses(logits, labels, scaled, normalize=True)[:2],
                               layers["mean_pixels_sum_channels"][:2], rtol=1e-10)


def _one_hot_logits(labels, num_classes, scale):
    return scale * np.stack([labels == c for c in range(num_classes)], -1).astype(np.float64)


def _boundary_labels(shift, height=12, width=24, column=10):
    """[1,H,W]: class 0 left of `column + shift`, class 1 right of it (a vertical boundary shifted by `shift`)."""
    labels = np.zeros((1, height, width), np.int32)
    labels[:, :, column + shift:] = 1
    return labels


def test_semeda_grows_with_the_boundary_shift():
    params = random_edge_net(2)
    truth = _boundary_labels(0)
    losses = [float(semeda_loss(_one_hot_logits(_boundary_labels(k), 2, 30.0), truth, params))
              for k in range(6)]
    assert losses[0] < 1e-9
    assert all(b > a for a, b in zip(losses, losses[1:])), losses


def test_gradient_descent_on_the_logits_moves_a_shifted_boundary_back():
    params = random_edge_net(2)
    truth = _boundary_labels(0)
    logits = jnp.asarray(_one_hot_logits(_boundary_labels(3), 2, 2.0) - 1.0)  # boundary 3 columns too far right
    errors = lambda x: int((np.asarray(x).argmax(-1) != truth).sum())
    assert errors(logits) == 3 * 12
    grad = jax.jit(jax.grad(lambda x: semeda_loss(x, truth, params)))
    for _ in range(300):
        logits = logits - 0.5 * grad(logits)
    assert errors(logits) == 0


def test_default_reduction_is_the_channel_sum_of_mean(rng):
    params = random_edge_net(3)
    labels = ref.random_labels(rng, (1, 6, 6), 3)
    logits = rng.normal(size=(1, 6, 6, 3))
    ratio = semeda_layer_losses(logits, labels, params) / semeda_layer_losses(logits, labels, params, reduction="mean")
    np.testing.assert_allclose(ratio, [16, 32, 2], rtol=1e-12)


def test_perfect_prediction_gives_zero_and_a_blurred_one_does_not(rng):
    params = random_edge_net(4)
    labels = ref.random_labels(rng, (1, 12, 12), 4, void_fraction=0.1)
    sharp = 50.0 * np.stack([labels == c for c in range(4)], -1)
    assert float(semeda_loss(sharp, labels, params, lambdas=(1, 1, 1))) < 1e-12
    assert float(semeda_loss(0.1 * sharp, labels, params, lambdas=(1, 1, 1))) > 1e-2


def test_gradient_check(rng):
    # Without void: at void pixels the loss deliberately stops gradients that finite differences would see.
    params = random_edge_net(3)
    labels = ref.random_labels(rng, (1, 6, 7), 3, void_fraction=0.0)
    logits = jnp.asarray(rng.normal(size=(1, 3, 4, 3)))
    check_grads(lambda x: semeda_loss(x, labels, params, lambdas=(2, 4, 1)), (logits,), order=1, modes=["rev"],
                atol=1e-6, rtol=1e-6)


def test_void_pixels_and_edge_net_get_zero_gradient(rng):
    params = random_edge_net(4)
    labels = ref.random_labels(rng, (2, 10, 10), 4, void_fraction=0.3)
    logits = jnp.asarray(rng.normal(size=(2, 10, 10, 4)))
    loss = lambda x, p: semeda_loss(x, labels, p, lambdas=(2, 4, 1))
    grad_logits, grad_params = jax.grad(loss, argnums=(0, 1))(logits, params)
    grad_logits = np.asarray(grad_logits)
    assert not grad_logits[labels == 255].any()
    assert np.abs(grad_logits[labels != 255]).sum() > 0
    assert all(not np.asarray(g).any() for g in jax.tree_util.tree_leaves(grad_params))


def test_jit_matches_eager(rng):
    params = random_edge_net(3)
    labels = ref.random_labels(rng, (2, 6, 7), 3)
    logits = rng.normal(size=(2, 6, 7, 3))
    jitted = jax.jit(lambda x, y, p: semeda_loss(x, y, p))
    np.testing.assert_allclose(jitted(logits, labels, params), semeda_loss(logits, labels, params), rtol=1e-12)


def test_bad_input_is_named():
    params = init_edge_net(jax.random.PRNGKey(0), 4)
    labels = np.zeros((1, 4, 4), np.int32)
    with pytest.raises(InputError, match="conv1 takes 4 input channels but the masks have 3 classes"):
        semeda_loss(np.zeros((1, 4, 4, 3)), labels, params)
    with pytest.raises(InputError, match="reduction: expected one of"):
        semeda_loss(np.zeros((1, 4, 4, 4)), labels, params, reduction="median")
    with pytest.raises(InputError, match=r"lambdas: expected one weight per edge-net layer \(3\)"):
        semeda_loss(np.zeros((1, 4, 4, 4)), labels, params, lambdas=(1.0, 2.0))
    with pytest.raises(InputError, match=r"labels: values \{7\}"):
        edge_pretrain_loss(params, np.full((1, 4, 4), 7, np.int32), 4)
    with pytest.raises(InputError, match="edge net depth: expected 1, 2 or 3 layers, got 4"):
        semeda_layer_losses(np.zeros((1, 4, 4, 4)), labels, params, depth=4)
    with pytest.raises(InputError, match="missing layers"):
        semeda_loss(np.zeros((1, 4, 4, 4)), labels, {"conv1": params["conv1"]})
