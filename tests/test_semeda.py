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


def reference_semeda_layers(logits, labels, params, reduction):
    num_classes = logits.shape[-1]
    probs, truth, valid = ref.void_neutral_masks(logits, labels, num_classes)
    out = []
    for psi_hat, psi_star in zip(ref.edge_net_embeddings(params, probs), ref.edge_net_embeddings(params, truth)):
        per_pixel = np.abs(psi_hat - psi_star).sum(-1)[valid]
        total, n = per_pixel.sum(), max(valid.sum(), 1)
        out.append({"mean_pixels_sum_channels": total / n, "mean": total / (n * psi_hat.shape[-1]),
                    "sum": total / labels.shape[0]}[reduction])
    return np.array(out)


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


@pytest.mark.parametrize("reduction", ["mean_pixels_sum_channels", "mean", "sum"])
@pytest.mark.parametrize("num_classes,shape,logit_hw", [(2, (1, 8, 9), (8, 9)), (5, (2, 10, 7), (10, 7)),
                                                        (21, (2, 8, 12), (4, 6))])
def test_semeda_matches_reference(rng, reduction, num_classes, shape, logit_hw):
    params = random_edge_net(num_classes)
    labels = ref.random_labels(rng, shape, num_classes)
    logits = rng.normal(size=(shape[0],) + logit_hw + (num_classes,)) * 2
    want = reference_semeda_layers(logits, labels, params, reduction)
    np.testing.assert_allclose(semeda_layer_losses(logits, labels, params, reduction=reduction), want, rtol=1e-9)
    lambdas = (2.0, 4.0, 0.5)
    np.testing.assert_allclose(semeda_loss(logits, labels, params, lambdas=lambdas, reduction=reduction),
                               np.dot(lambdas, want), rtol=1e-9)


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
    with pytest.raises(InputError, match="missing layers"):
        semeda_loss(np.zeros((1, 4, 4, 4)), labels, {"conv1": params["conv1"]})
