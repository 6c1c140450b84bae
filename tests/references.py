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


# ---- The loss zoo (dice, focal, Lovasz, surface): per-class loops over explicit pixel lists, from the papers.

def label_probs(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax of the logits bilinearly resized to the labels: [B,H,W,C]."""
    if logits.shape[1:3] != labels.shape[1:]:
        logits = bilinear_upsample(logits, *labels.shape[1:])
    return softmax(logits)


def counted(labels: np.ndarray, pixel_mask: np.ndarray | None = None) -> np.ndarray:
    keep = labels != VOID
    return keep if pixel_mask is None else keep & pixel_mask


def numeric_grad(fn, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central finite differences of a float64 scalar function of x."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (fn(plus) - fn(minus)) / (2 * step)
    return grad


def mean_of_class_means(per_row: list[dict], class_weights=None) -> float:
    """per_row: for each image (or the batch) {class: loss} of the classes that count -> mean over rows with a
    counted class of sum w_c L_c / sum w_c."""
    means = []
    for row in per_row:
        weights = {c: 1.0 if class_weights is None else class_weights[c] for c in row}
        if sum(weights.values()) > 0:
            means.append(sum(weights[c] * row[c] for c in row) / sum(weights.values()))
    return float(np.mean(means)) if means else 0.0


def overlap_rows(logits, labels, pixel_mask=None, per_image=False):
    """[(pixel list of probabilities [N,C], per class c its truth indicator [N] float)] per image, or one for the
    batch; rows without a counted pixel are left out."""
    probs, keep = label_probs(logits, labels), counted(labels, pixel_mask)
    rows = ([(probs[b][keep[b]], labels[b][keep[b]]) for b in range(labels.shape[0])] if per_image
            else [(probs[keep], labels[keep])])
    return [(p, [(y == c).astype(float) for c in range(logits.shape[-1])]) for p, y in rows if len(y)]


def tversky_family(logits, labels, kind, alpha=0.3, beta=0.7, smooth=0.0, eps=1e-7, per_image=False,
                   absent="zero", squared=False, class_weights=None, pixel_mask=None) -> float:
    """Dice (kind "dice": 1 - (2 TP + s) / (sum p + sum g + s)) or Tversky (1 - (TP + s) / (TP + a FP + b FN + s))."""
    per_row = []
    for p, truths in overlap_rows(logits, labels, pixel_mask, per_image):
        row = {}
        for c, g in enumerate(truths):
            tp, fp, fn = np.sum(p[:, c] * g), np.sum(p[:, c] * (1 - g)), np.sum((1 - p[:, c]) * g)
            if kind == "dice":
                denominator = (np.sum(p[:, c] ** 2) if squared else np.sum(p[:, c])) + np.sum(g) + smooth
                loss = 1 - (2 * tp + smooth) / max(denominator, eps)
            else:
                loss = 1 - (tp + smooth) / max(tp + alpha * fp + beta * fn + smooth, eps)
            if g.sum() > 0 or absent == "include":
                row[c] = loss
            elif absent == "zero":
                row[c] = 0.0
        per_row.append(row)
    return mean_of_class_means(per_row, class_weights)


def generalized_dice(logits, labels, smooth=0.0, eps=1e-7, per_image=False, class_weights=None,
                     pixel_mask=None) -> float:
    """Sudre et al. Eq. 2 with w_c = 1 / (sum_n r_cn)^2; an absent class takes the largest present weight."""
    losses = []
    for p, truths in overlap_rows(logits, labels, pixel_mask, per_image):
        volumes = np.array([np.sum(r) for r in truths])
        weights = np.array([1 / v ** 2 if v else 0.0 for v in volumes])
        weights[volumes == 0] = weights.max()
        if class_weights is not None:
            weights = weights * np.asarray(class_weights)
        numerator, denominator = smooth, smooth
        for c, r in enumerate(truths):
            numerator += 2 * weights[c] * np.sum(r * p[:, c])
            denominator += weights[c] * np.sum(r + p[:, c])
        losses.append(1 - numerator / max(denominator, eps))
    return float(np.mean(losses)) if losses else 0.0


def focal(logits, labels, gamma=2.0, alpha=None, class_weights=None, pixel_mask=None) -> float:
    """sum_i w_y alpha_y (1 - p_t)^gamma (-log p_t) / sum_i w_y over counted pixels (Lin et al. Eq. 5)."""
    probs, keep = label_probs(logits, labels), counted(labels, pixel_mask)
    total, weight_sum = 0.0, 0.0
    for index in zip(*np.nonzero(keep)):
        y = labels[index]
        p_t = probs[index + (y,)]
        w = 1.0 if class_weights is None else class_weights[y]
        a = 1.0 if alpha is None else alpha[y]
        total += w * a * (1 - p_t) ** gamma * -np.log(p_t)
        weight_sum += w
    return total / weight_sum if weight_sum else 0.0


def jaccard_set_loss(mistakes: set, truth: set) -> float:
    """Delta_J(M) = 1 - |truth minus M| / |truth union M| = |M| / |truth union M| (0 for two empty sets)."""
    union = truth | mistakes
    return len(mistakes) / len(union) if union else 0.0


def lovasz_extension_by_levels(errors: np.ndarray, truth: np.ndarray) -> float:
    """The Lovasz extension of Delta_J at errors >= 0 as the Choquet integral int_0^inf Delta_J({m >= t}) dt: a
    sum over the distinct error levels t_1 > t_2 > ... of (t_k - t_{k+1}) Delta_J({i : m_i >= t_k}), t_{K+1} = 0
    (no sorting of pixels, no cumulative sums)."""
    truth_set = set(np.flatnonzero(truth).tolist())
    levels = sorted(set(errors.tolist()), reverse=True) + [0.0]
    return sum((levels[k] - levels[k + 1]) * jaccard_set_loss(set(np.flatnonzero(errors >= levels[k]).tolist()),
                                                              truth_set)
               for k in range(len(levels) - 1))


def lovasz_softmax(logits, labels, per_image=False, classes="present", class_weights=None,
                   pixel_mask=None) -> float:
    per_row = [{c: lovasz_extension_by_levels(np.abs(g - p[:, c]), g) for c, g in enumerate(truths)
                if classes == "all" or g.sum() > 0}
               for p, truths in overlap_rows(logits, labels, pixel_mask, per_image)]
    return mean_of_class_means(per_row, class_weights)


def signed_distance_maps(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Kervadec's phi by brute force over all pixel pairs: outside class c the distance to the nearest class-c
    pixel, inside minus (the distance to the nearest other pixel, void included) plus 1; 0 for a class that is
    absent or covers the image. [B,H,W] -> [B,H,W,C] float64."""
    batch, height, width = labels.shape
    coords = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), -1).reshape(-1, 2)
    out = np.zeros(labels.shape + (num_classes,))
    for b in range(batch):
        flat = labels[b].reshape(-1)
        for c in range(num_classes):
            inside = flat == c
            if inside.all() or not inside.any():
                continue
            for q in range(flat.size):
                others = coords[~inside] if inside[q] else coords[inside]
                nearest = np.sqrt(((others - coords[q]) ** 2).sum(-1)).min()
                out[b, q // width, q % width, c] = 1 - nearest if inside[q] else nearest
    return out


def surface(logits, labels, distance_maps, class_weights=None, pixel_mask=None) -> float:
    """(1/N) sum over counted pixels q and classes c of w_c s_c(q) phi_c(q)."""
    probs, keep = label_probs(logits, labels), counted(labels, pixel_mask)
    weights = np.ones(logits.shape[-1]) if class_weights is None else np.asarray(class_weights, float)
    total = sum(float(np.sum(weights * probs[index] * distance_maps[index])) for index in zip(*np.nonzero(keep)))
    return total / max(keep.sum(), 1)


def loss_case(rng: np.random.Generator, num_classes: int, shape=(2, 6, 7), logits_hw=None, absent=(),
              void_fraction: float = 0.2, scale: float = 2.0):
    """(logits [B,h,w,C], labels [B,H,W], pixel_mask [B,H,W] bool) for the loss zoo tests: blocky labels with
    void, the classes in `absent` relabelled 0, logits at `logits_hw` (default: the labels' size)."""
    labels = random_labels(rng, shape, num_classes, void_fraction)
    labels = np.where(np.isin(labels, absent), 0, labels).astype(np.int32)
    logits = rng.normal(scale=scale, size=(shape[0],) + (logits_hw or shape[1:]) + (num_classes,))
    return logits, labels, rng.random(shape) < 0.6


def inner_band(mask: np.ndarray, width: int) -> np.ndarray:
    """bool [H,W] -> bool [H,W]: mask pixels with a non-mask pixel, or the outside of the image, within
    chessboard distance <= width (Cheng et al.'s mask minus its eroded zero-padded copy), pixel by pixel."""
    padded = np.pad(mask, width)  # outside the image = not in the mask
    band = np.zeros_like(mask)
    for i, j in np.argwhere(mask):
        band[i, j] = not padded[i:i + 2 * width + 1, j:j + 2 * width + 1].all()
    return band


def inner_contour(mask: np.ndarray) -> np.ndarray:
    """bool [H,W] -> bool [H,W]: mask pixels with an in-image 8-neighbour outside the mask, by pixel loops."""
    height, width = mask.shape
    contour = np.zeros_like(mask)
    for i in range(height):
        for j in range(width):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ni, nj = i + di, j + dj
                    if mask[i, j] and 0 <= ni < height and 0 <= nj < width and not mask[ni, nj]:
                        contour[i, j] = True
    return contour


def matched_points(points: np.ndarray, targets: np.ndarray, tolerance: float) -> int:
    """Number of True pixels of `points` with a True pixel of `targets` at Euclidean distance <= tolerance."""
    target_yx = np.argwhere(targets).astype(np.float64)
    if not len(target_yx):
        return 0
    return sum(int(np.min(np.hypot(*(target_yx - yx).T)) <= tolerance) for yx in np.argwhere(points))


def boundary_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int, band_widths, tolerances,
                    sizes) -> dict[str, np.ndarray]:
    """Boundary IoU and F-score counts, int64 [C] each, image by image on the [:height, :width] crops; a pixel
    whose truth is void is in no mask of either map."""
    keys = ("iou_intersection", "iou_union", "pred_matched", "pred_contour", "truth_matched", "truth_contour")
    out = {key: np.zeros(num_classes, np.int64) for key in keys}
    for b, (height, width) in enumerate(sizes):
        truth, pred = labels[b, :height, :width], predictions[b, :height, :width]
        for c in range(num_classes):
            g, p = truth == c, (pred == c) & (truth != VOID)
            g_band, p_band = inner_band(g, band_widths[b]), inner_band(p, band_widths[b])
            out["iou_intersection"][c] += np.sum(g_band & p_band)
            out["iou_union"][c] += np.sum(g_band | p_band)
            g_contour, p_contour = inner_contour(g), inner_contour(p)
            out["pred_matched"][c] += matched_points(p_contour, g_contour, tolerances[b])
            out["pred_contour"][c] += np.sum(p_contour)
            out["truth_matched"][c] += matched_points(g_contour, p_contour, tolerances[b])
            out["truth_contour"][c] += np.sum(g_contour)
    return out


def blob_labels(rng: np.random.Generator, shape, num_classes: int, num_blobs: int = 6) -> np.ndarray:
    """int32 [B,H,W]: a random background class painted with random rectangles and discs of random classes
    (objects of any size, some cut by the image border)."""
    batch, height, width = shape
    rows, cols = np.mgrid[:height, :width]
    labels = np.zeros(shape, np.int32)
    for b in range(batch):
        labels[b] = rng.integers(num_classes)
        for _ in range(num_blobs):
            cy, cx = rng.integers(-2, height + 2), rng.integers(-2, width + 2)
            ry, rx = rng.integers(0, max(height, width) // 2, 2)
            if rng.random() < 0.5:
                blob = (np.abs(rows - cy) <= ry) & (np.abs(cols - cx) <= rx)
            else:
                blob = (rows - cy) ** 2 + (cols - cx) ** 2 <= ry ** 2
            labels[b][blob] = rng.integers(num_classes)
    return labels
