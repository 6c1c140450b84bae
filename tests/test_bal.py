"""Boundary-aware loss (PAC paper) against explicit float64 NumPy/SciPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.signal import convolve2d
from scipy.special import log_softmax

from semeda_jax.losses.bal import boundary_aware_loss, boundary_kernel, boundary_weight_map, class_boundary_map
from references import random_labels
from semeda_jax.validation import InputError

VOID = 255


def ref_edges(labels, num_classes):
    """sum_i [|l_i (*) f_E| > 0] with the 2x2 f_E = [[1, -0.5], [-0.5, 0]] applied literally, replicate pad."""
    batch, height, width = labels.shape
    out = np.zeros(labels.shape)
    for b in range(batch):
        for i in range(num_classes):
            mask = np.pad((labels[b] == i).astype(float), ((0, 1), (0, 1)), mode="edge")
            for y in range(height):
                for x in range(width):
                    response = mask[y, x] - 0.5 * mask[y, x + 1] - 0.5 * mask[y + 1, x]
                    out[b, y, x] += abs(response) > 0
    return out


def ref_kernel(kind, size, sigma):
    centre = (size - 1) / 2
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            if kind == "gaussian":
                out[y, x] = np.exp(-((x - centre) ** 2 + (y - centre) ** 2) / (size * sigma))
            else:
                out[y, x] = (size - (abs(x - centre) + abs(y - centre))) / size
    return out


def ref_block_mean(image, down):
    height, width = -(-image.shape[0] // down) * down, -(-image.shape[1] // down) * down
    padded = np.zeros((height, width))
    padded[:image.shape[0], :image.shape[1]] = image
    out = np.zeros((height // down, width // down))
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            out[y, x] = padded[y * down:(y + 1) * down, x * down:(x + 1) * down].mean()
    return out


def ref_bilinear(image, out_h, out_w):
    """Point-sampled bilinear resize of image [h,w,...], half-pixel centres, indices clamped to the image."""
    height, width = image.shape[:2]
    out = np.zeros((out_h, out_w) + image.shape[2:])
    for i in range(out_h):
        sy = (i + 0.5) * height / out_h - 0.5
        y0, fy = int(np.floor(sy)), sy - np.floor(sy)
        ya, yb = min(max(y0, 0), height - 1), min(max(y0 + 1, 0), height - 1)
        for j in range(out_w):
            sx = (j + 0.5) * width / out_w - 0.5
            x0, fx = int(np.floor(sx)), sx - np.floor(sx)
            xa, xb = min(max(x0, 0), width - 1), min(max(x0 + 1, 0), width - 1)
            out[i, j] = ((1 - fy) * (1 - fx) * image[ya, xa] + (1 - fy) * fx * image[ya, xb]
                         + fy * (1 - fx) * image[yb, xa] + fy * fx * image[yb, xb])
    return out


def ref_weight_map(labels, num_classes, kind, size, sigma, beta, down):
    edges = ref_edges(labels, num_classes)
    height, width = labels.shape[1:]
    out = []
    for image in edges:
        blurred = convolve2d(ref_block_mean(image, down), ref_kernel(kind, size, sigma), mode="same")
        padded_h, padded_w = blurred.shape[0] * down, blurred.shape[1] * down
        out.append(ref_bilinear(blurred, padded_h, padded_w)[:height, :width] + beta)
    return np.stack(out)


def ref_loss(logits, labels, **params):
    height, width = labels.shape[1:]
    logits = np.stack([ref_bilinear(image, height, width) for image in logits])
    valid = labels != VOID
    ce = -np.take_along_axis(log_softmax(logits, axis=-1), np.where(valid, labels, 0)[..., None], -1)[..., 0]
    weights = ref_weight_map(labels, logits.shape[-1], **params)
    return (weights * ce)[valid].sum() / max(valid.sum(), 1)


def test_edge_rule_hand_checked():
    labels = np.array([[[0, 0, 1, 1], [0, VOID, 1, 1], [2, 2, 2, 2]]], np.int32)
    expected = [[0, 2, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]]
    np.testing.assert_array_equal(class_boundary_map(labels, 3)[0], expected)


@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_class_boundary_map_matches_reference(rng, num_classes):
    labels = random_labels(rng, (2, 9, 13), num_classes)
    np.testing.assert_array_equal(class_boundary_map(labels, num_classes), ref_edges(labels, num_classes))


@pytest.mark.parametrize("kind,size,sigma", [("gaussian", 35, 3.0), ("gaussian", 5, 1.0), ("linear", 7, 3.0),
                                             ("linear", 1, 3.0)])
def test_boundary_kernel_peak_one_not_unit_sum(kind, size, sigma):
    kernel = boundary_kernel(kind, size, sigma, dtype=jnp.float64)
    np.testing.assert_allclose(kernel, ref_kernel(kind, size, sigma), rtol=1e-12)
    assert kernel[size // 2, size // 2] == 1.0 and float(kernel.min()) > 0
    if kind == "linear":
        assert float(kernel[0, 0]) == pytest.approx(1 / size)


@pytest.mark.parametrize("kind,size,sigma,beta,down,num_classes,shape", [
    ("gaussian", 35, 3.0, 0.5, 4, 21, (2, 30, 45)),
    ("gaussian", 5, 1.0, 0.3, 3, 5, (1, 17, 22)),
    ("linear", 7, 1.0, 0.5, 2, 2, (2, 11, 9)),
    ("linear", 3, 1.0, 0.0, 1, 5, (1, 8, 10)),
])
def test_boundary_weight_map_matches_reference(rng, kind, size, sigma, beta, down, num_classes, shape):
    labels = random_labels(rng, shape, num_classes)
    params = dict(kernel=kind, size=size, sigma=sigma, beta=beta, down=down)
    got = boundary_weight_map(labels, num_classes, **params, dtype=jnp.float64)
    assert got.shape == shape and got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref_weight_map(labels, num_classes, kind, size, sigma, beta, down),
                               rtol=1e-10, atol=1e-12)


def straight_boundary(width=256, column=64):
    labels = np.zeros((1, 128, width), np.int32)
    labels[..., column:] = 1
    return labels


def test_straight_boundary_paper_settings():
    """SPEC 0.1: with the best settings E_G is ~9.4 on the boundary and exactly beta far from it."""
    weights = np.asarray(boundary_weight_map(straight_boundary(), 2, dtype=jnp.float64))[0, 64]
    boundary, near, far = weights[63], weights[[63 - 16, 64 + 16]], weights[200:]
    assert boundary / 0.5 > 10 and 9.0 < boundary < 9.6
    assert np.all((7.5 < near) & (near < 8.5))
    np.testing.assert_allclose(far, 0.5, rtol=0, atol=1e-12)


def test_area_downsample_keeps_one_pixel_edges():
    """A point-sampled x4 bilinear resize reads columns 4i+1, 4i+2 and misses an edge in column 63 = 4*15+3."""
    labels = straight_boundary()
    edges = np.asarray(class_boundary_map(labels, 2), float)[0]
    assert edges[:, 63].min() == 2 and edges.sum() == 2 * 128
    assert np.all(ref_bilinear(edges, 32, 64) == 0)
    assert float(boundary_weight_map(labels, 2)[0, 64, 63]) > 0.5 + 1


def logits_and_labels(rng, num_classes, logit_shape, label_shape):
    logits = rng.normal(scale=2.0, size=logit_shape + (num_classes,))
    return logits, random_labels(rng, label_shape, num_classes)


@pytest.mark.parametrize("num_classes,logit_shape,label_shape,down", [
    (2, (2, 13, 10), (2, 13, 10), 4),
    (5, (1, 6, 7), (1, 21, 26), 3),
    (21, (2, 9, 11), (2, 9, 11), 2),
])
def test_boundary_aware_loss_matches_reference(rng, num_classes, logit_shape, label_shape, down):
    logits, labels = logits_and_labels(rng, num_classes, logit_shape, label_shape)
    params = dict(kind="gaussian", size=9, sigma=2.0, beta=0.5, down=down)
    got = boundary_aware_loss(logits, labels, kernel="gaussian", size=9, sigma=2.0, beta=0.5, down=down)
    np.testing.assert_allclose(got, ref_loss(logits, labels, **params), rtol=1e-10)


def test_all_void_batch_gives_zero(rng):
    logits, _ = logits_and_labels(rng, 3, (1, 5, 6), (1, 5, 6))
    assert float(boundary_aware_loss(logits, np.full((1, 5, 6), VOID, np.int32))) == 0.0


def test_gradients_and_zero_gradient_at_void(rng):
    logits, labels = logits_and_labels(rng, 5, (2, 7, 9), (2, 7, 9))
    loss = lambda x: boundary_aware_loss(x, labels, size=5, down=2)  # noqa: E731
    check_grads(loss, (logits,), order=1)
    grad = np.asarray(jax.grad(loss)(logits))
    void = labels == VOID
    assert void.any() and np.all(grad[void] == 0) and np.all(np.abs(grad[~void]).sum(-1) > 0)
    np.testing.assert_allclose(jax.jit(loss)(logits), loss(logits), rtol=1e-12)


@pytest.mark.parametrize("logit_shape,label_shape,labels_value,params,match", [
    ((5, 5, 3), (1, 5, 5), 0, {}, "logits: expected rank 4"),
    ((1, 5, 5, 3), (5, 5), 0, {}, "labels: expected rank 3"),
    ((2, 5, 5, 3), (1, 5, 5), 0, {}, "batch sizes differ"),
    ((1, 5, 5, 3), (1, 5, 5), 7, {}, r"labels: values \{7\}"),
    ((1, 5, 5, 3), (1, 5, 5), 0, {"kernel": "box"}, "kernel: .*'box'"),
    ((1, 5, 5, 3), (1, 5, 5), 0, {"size": 4}, "size: expected an odd integer >= 1, got 4"),
    ((1, 5, 5, 3), (1, 5, 5), 0, {"down": 0}, "down: expected an integer >= 1, got 0"),
    ((1, 5, 5, 3), (1, 5, 5), 0, {"sigma": 0.0}, "sigma: expected a positive number"),
])
def test_bad_input_raises(logit_shape, label_shape, labels_value, params, match):
    with pytest.raises(InputError, match=match):
        boundary_aware_loss(np.zeros(logit_shape), np.full(label_shape, labels_value, np.int32), **params)


def test_bad_weight_map_input_raises():
    with pytest.raises(InputError, match="num_classes: expected an integer >= 1, got 0"):
        boundary_weight_map(np.zeros((1, 4, 4), np.int32), 0)
    with pytest.raises(InputError, match="labels: expected an integer label map"):
        class_boundary_map(np.zeros((1, 4, 4)), 2)
