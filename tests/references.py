"""Independent NumPy float64 references shared by the loss tests (loops and explicit formulas, no JAX)."""
from __future__ import annotations

import numpy as np

VOID = 255


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bilinear_upsample(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[B,h,w,C] -> [B,H,W,C], half-pixel centres, clamped at the border (align_corners=False)."""
    def axis_weights(n_in, n_out):
        pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo
    ylo, yhi, wy = axis_weights(x.shape[1], height)
    xlo, xhi, wx = axis_weights(x.shape[2], width)
    out = np.zeros((x.shape[0], height, width, x.shape[3]))
    for i in range(height):
        for j in range(width):
            top = (1 - wx[j]) * x[:, ylo[i], xlo[j]] + wx[j] * x[:, ylo[i], xhi[j]]
            bottom = (1 - wx[j]) * x[:, yhi[i], xlo[j]] + wx[j] * x[:, yhi[i], xhi[j]]
            out[:, i, j] = (1 - wy[i]) * top + wy[i] * bottom
    return out


def conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None,
                pad_mode: str = "constant") -> np.ndarray:
    """Cross-correlation of x [B,H,W,Cin] with kernel [k,k,Cin,Cout], `same` size, explicit offset loop."""
    k = kernel.shape[0]
    r = k // 2
    padded = np.pad(x, ((0, 0), (r, k - 1 - r), (r, k - 1 - r), (0, 0)), mode=pad_mode)
    height, width = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("bhwi,io->bhwo", padded[:, dy:dy + height, dx:dx + width], kernel[dy, dx])
    return out if bias is None else out + bias


def edge_net_embeddings(params: dict, masks: np.ndarray) -> list[np.ndarray]:
    """g_phi in NumPy: conv-ReLU, conv-ReLU, conv-softmax; returns [psi_1, psi_2, psi_3]."""
    layer = lambda name, x: conv2d_same(x, np.asarray(params[name]["kernel"], np.float64),
                                        np.asarray(params[name]["bias"], np.float64))
    psi_1 = np.maximum(layer("conv1", masks), 0.0)
    psi_2 = np.maximum(layer("conv2", psi_1), 0.0)
    return [psi_1, psi_2, softmax(layer("conv3", psi_2))]


def semantic_edges(labels: np.ndarray) -> np.ndarray:
    """[B,H,W] -> bool: a pixel is an edge iff an in-image 8-neighbour has another label (255 included)."""
    batch, height, width = labels.shape
    edges = np.zeros(labels.shape, bool)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        ni, nj = i + di, j + dj
                        if 0 <= ni < height and 0 <= nj < width and labels[b, ni, nj] != labels[b, i, j]:
                            edges[b, i, j] = True
    return edges


def random_labels(rng: np.random.Generator, shape, num_classes: int, void_fraction: float = 0.2) -> np.ndarray:
    """Blocky random labels with a random void mask (blocks make real boundaries, not salt-and-pepper)."""
    batch, height, width = shape
    coarse = rng.integers(0, num_classes, (batch, (height + 2) // 3, (width + 2) // 3))
    labels = np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, :height, :width]
    flip = rng.random(shape) < 0.1
    labels = np.where(flip, rng.integers(0, num_classes, shape), labels)
    return np.where(rng.random(shape) < void_fraction, VOID, labels).astype(np.int32)


def void_neutral_masks(logits: np.ndarray, labels: np.ndarray, num_classes: int):
    """(S_hat, S*, valid) at label resolution; S* copies S_hat at void pixels."""
    height, width = labels.shape[1:]
    if logits.shape[1:3] != (height, width):
        logits = bilinear_upsample(logits, height, width)
    probs = softmax(logits)
    valid = labels != VOID
    truth = np.zeros_like(probs)
    for c in range(num_classes):
        truth[..., c] = labels == c
    truth[~valid] = probs[~valid]
    return probs, truth, valid


def semeda_layer_losses(logits: np.ndarray, labels: np.ndarray, params: dict, reduction: str,
                        normalize: bool = False) -> np.ndarray:
    """[L_1, L_2, L_3] of SEMEDA Eq. 5 (unweighted); `normalize` divides each layer's L1 by the same reduction of
    |psi_l(S*)| (the scale-normalised extension)."""
    num_classes = logits.shape[-1]
    probs, truth, valid = void_neutral_masks(logits, labels, num_classes)
    out = []
    for psi_hat, psi_star in zip(edge_net_embeddings(params, probs), edge_net_embeddings(params, truth)):
        reduce = lambda per_pixel: {"mean_pixels_sum_channels": per_pixel.sum() / max(valid.sum(), 1),
                                    "mean": per_pixel.sum() / (max(valid.sum(), 1) * psi_hat.shape[-1]),
                                    "sum": per_pixel.sum() / labels.shape[0]}[reduction]
        value = reduce(np.abs(psi_hat - psi_star).sum(-1)[valid])
        if normalize:
            value /= max(reduce(np.abs(psi_star).sum(-1)[valid]), 1e-6)
        out.append(value)
    return np.array(out)
