"""The multi-label term of the classification branch: image-level targets from label maps (void and
out-of-range values excluded) against brute force, the sigmoid BCE against a NumPy float64 reference at
moderate and extreme logits, its gradient, and input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from semeda_jax import objective
from semeda_jax.losses import multilabel_loss, present_classes
from semeda_jax.validation import InputError


def random_maps(rng, batch=4, size=(6, 7), num_classes=5):
    """Labels drawn from a few classes per image, with void pixels; image 0 all void, image 1 one class."""
    labels = np.empty((batch, *size), np.int32)
    for b in range(batch):
        classes = rng.choice(num_classes, size=rng.integers(1, 4), replace=False)
        labels[b] = rng.choice(classes, size=size)
    labels[rng.random(labels.shape) < 0.3] = 255
    labels[0] = 255
    labels[1] = 2
    return labels


def brute_force_targets(labels, num_classes, ignore=255):
    targets = np.zeros((labels.shape[0], num_classes))
    for b in range(labels.shape[0]):
        for value in labels[b].ravel():
            if value != ignore and 0 <= value < num_classes:
                targets[b, value] = 1.0
    return targets


def reference_loss(z, t):
    """-mean(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))) in float64, logs by logaddexp (exact at any z)."""
    z = np.asarray(z, np.float64)
    log_p, log_not_p = -np.logaddexp(0, -z), -np.logaddexp(0, z)
    return -np.mean(t * log_p + (1 - t) * log_not_p)


def test_targets_are_the_classes_present_outside_void(rng):
    labels = random_maps(rng)
    np.testing.assert_array_equal(np.asarray(present_classes(jnp.asarray(labels), 5)), brute_force_targets(labels, 5))
    assert not np.asarray(present_classes(jnp.asarray(labels), 5))[0].any()  # all-void image: no class
    # under jit the eager range check is skipped: out-of-range values count as void, as in every loss
    labels[2, 0, :3] = (7, -1, 5)
    jitted = jax.jit(present_classes, static_argnums=1)(jnp.asarray(labels), 5)
    np.testing.assert_array_equal(np.asarray(jitted), brute_force_targets(labels, 5))


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_loss_matches_the_float64_reference(rng, scale):
    labels = random_maps(rng)
    z = rng.normal(size=(4, 5)) * scale
    expected = reference_loss(z, brute_force_targets(labels, 5))
    got = float(multilabel_loss(jnp.asarray(z), jnp.asarray(labels)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    term = objective.TERMS["multilabel"]  # the registered term reads the classification branch's scores
    assert term.fn is multilabel_loss and term.reads == ("class_logits",)


def test_gradient_is_sigmoid_minus_target_over_the_pairs(rng):
    labels = jnp.asarray(random_maps(rng))
    z = rng.normal(size=(4, 5))
    targets = brute_force_targets(np.asarray(labels), 5)
    grad = jax.grad(lambda z: multilabel_loss(z, labels))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(grad), (1 / (1 + np.exp(-z)) - targets) / z.size, rtol=1e-12)
    check_grads(lambda z: multilabel_loss(z, labels), (jnp.asarray(z),), order=2, modes=["rev"])


def test_bad_inputs_are_named():
    labels = np.zeros((2, 4, 4), np.int32)
    with pytest.raises(InputError, match=r"class_logits: expected rank 2 \[B,C\], got shape \(2, 4, 4, 3\)"):
        multilabel_loss(jnp.zeros((2, 4, 4, 3)), labels)
    with pytest.raises(InputError, match=r"class_logits and labels: batch sizes differ \(3 vs 2\)"):
        multilabel_loss(jnp.zeros((3, 3)), labels)
    labels[1, 0, 0] = 3
    with pytest.raises(InputError, match=r"labels: values \{3\} are outside \[0, 3\) and not the void label 255"):
        multilabel_loss(jnp.zeros((2, 3)), labels)
