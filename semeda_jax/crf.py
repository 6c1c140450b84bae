"""The guidance paper's mean-field CRF (SPEC.md 4(c)): a guided filter (He et al.) as the pairwise kernel, the
Potts or the content-sensitive compatibility (Eqs. 6-7), T unrolled mean-field iterations (pure, jit-able and
differentiable), and its post-processing of the inference seam (inference.POSTPROCESSORS["guided_crf"]).

Guided filter of p [B,H,W,C] with colour guide I [B,H,W,3] (intensities 0-255), window radius r, eps:
    N_k = pixels of the (2r+1)^2 window w_k centred at k, clipped to the image; means are over those pixels
    mu_k, Sigma_k = mean and 3x3 covariance of I in w_k; pbar_k = mean of p in w_k
    a_k = (Sigma_k + eps U)^-1 (mean_k(I p) - mu_k pbar_k)   [3, C];   b_k = pbar_k - a_k^T mu_k   [C]
    q_i = mean_{k: i in w_k}(a_k)^T I_i + mean_{k: i in w_k}(b_k)
Every mean is a box filter by prefix sums (O(N) per channel, any radius; direct window sums for r <= 8); the
filter is linear in p and normalised (it maps 1 to 1), i.e. q = W p with sum_j W_ij = 1. In float32 the prefix
sums lose digits on large images (differences of large prefix sums); the guide is centred per image first,
which leaves q unchanged.

Mean field (reward convention: the unary U is the network's scores, s = -phi):
    Q^0 = softmax(U);  T times:  m = GF_I(Q);  M(l) = sum_l' mu(l, l') m(l');  Q = softmax(U + w M)
This is the energy form softmax(-phi - w sum_l' (1 - mu(l, l')) m(l')) up to a constant per pixel, so with the
Potts mu = delta it is the usual "unary minus pairwise penalty" update. Choices the paper leaves open: the
message includes the pixel itself (j = i; the guided-filter weights as they are, as in the kernel of [7]); the
compatibility mu [C,C] or per image [B,C,C]; w, r, T and lambda (not given by the paper).

Content-sensitive compatibility (Eqs. 6-7) from the class guidance scores s_g [B,C] (the network's
"class_logits", = -phi_g): mu = delta + lambda (s_g(l) + s_g(l')). Because the filter is normalised, the l'-sum
of the second part is a constant per pixel, so mu acts exactly as the Potts message plus the per-class global
bias w lambda s_g(l) (SPEC.md 4(c); tested).

Two uses: post-processing of the inference seam (crf_postprocess: the unary is log p of the fused
probabilities, the class scores the views' mean class_logits) and, our extension (the paper trains piecewise,
its CRF is never in the training loop), a parameter-free layer on a model's logits in training and inference
(CRFLayer, config.model.crf_layer; differentiable: T unrolled iterations).
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semeda_jax.validation import ConfigError, InputError, check_int, check_rank

# config.eval.crf.compatibility values: Potts, or Eqs. 6-7 from the model's "class_logits" (lambda = lam).
COMPATIBILITIES = ("potts", "content")
# The fields of config.eval.crf (configs/common.py sets the defaults: eps 10 is the paper's; r, T, w, lam ours).
CONFIG_FIELDS = ("radius", "eps", "iterations", "weight", "compatibility", "lam")


WINDOW_SUM_MAX_RADIUS = 8  # box_sum: radii up to this use a direct window sum, larger ones prefix sums


def box_sum(x: jax.Array, radius: int) -> jax.Array:
    """x [B,H,W,...] -> the sum over the (2r+1)^2 window around each pixel clipped to the image, same shape;
    per spatial axis a prefix sum (an associative scan: O(N) work; XLA:CPU's cumsum is a reduce_window, ~10x
    slower here) and the difference of two shifted slices of it, O(N) whatever the radius. For r <= 8
    (WINDOW_SUM_MAX_RADIUS) the same sums come from a separable zero-padded window sum, O(N r) but several times
    faster on XLA:CPU at such radii (both exact; tested against each other). Trailing axes are flattened into
    one first (XLA:CPU scans a [B,H,W,3,C] array several times slower than [B,H,W,3C])."""
    shape = x.shape
    x = x.reshape(*shape[:3], -1)
    if radius <= WINDOW_SUM_MAX_RADIUS:
        for axis in (1, 2):
            window, pad = [1] * 4, [(0, 0)] * 4
            window[axis], pad[axis] = 2 * radius + 1, (radius, radius)
            x = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, window, (1, 1, 1, 1), pad)
        return x.reshape(shape)
    for axis in (1, 2):
        n = x.shape[axis]
        prefix = jax.lax.associative_scan(jnp.add, x, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, radius)
        # S[k] = sum x[:k] for k = 0..n, then S[n] repeated r times: window [i - r, i + r] = S[min(i + r + 1, n)]
        # - S[max(i - r, 0)]
        prefix = jnp.pad(jnp.concatenate([jnp.zeros_like(jax.lax.slice_in_dim(prefix, 0, 1, axis=axis)), prefix],
                                         axis), pad, mode="edge")
        hi = jax.lax.slice_in_dim(prefix, radius + 1, radius + 1 + n, axis=axis) if radius + 1 <= n \
            else jnp.repeat(jax.lax.slice_in_dim(prefix, n, n + 1, axis=axis), n, axis=axis)
        lo = jnp.concatenate([jnp.zeros_like(jax.lax.slice_in_dim(prefix, 0, min(radius, n), axis=axis)),
                              jax.lax.slice_in_dim(prefix, 0, max(n - radius, 0), axis=axis)], axis)
        x = hi - lo
    return x.reshape(shape)


def window_counts(height: int, width: int, radius: int) -> np.ndarray:
    """[H,W] number of image pixels in each pixel's clipped window (the box sum of ones)."""
    def along(n):
        idx = np.arange(n)
        return np.minimum(idx + radius, n - 1) - np.maximum(idx - radius, 0) + 1
    return np.outer(along(height), along(width)).astype(np.float64)


def _inverse_sym3(m: jax.Array) -> jax.Array:
    """[...,3,3] symmetric positive definite -> its inverse (adjugate / determinant; jit- and grad-friendly)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 1], m[..., 1, 2], m[..., 2, 2]
    c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
    c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * c00 + b * c01 + c * c02
    adj = jnp.stack([jnp.stack([c00, c01, c02], -1), jnp.stack([c01, c11, c12], -1),
                     jnp.stack([c02, c12, c22], -1)], -2)
    return adj / det[..., None, None]


def _check_pair(name: str, p, guide, radius, eps) -> None:
    check_rank(name, p, 4, "[B,H,W,C]")
    check_rank("guide", guide, 4, "[B,H,W,3]")
    if not jnp.issubdtype(p.dtype, jnp.floating):
        raise InputError(f"{name}: expected a floating-point array, got dtype {p.dtype}")
    if guide.shape[-1] != 3 or guide.shape[:3] != p.shape[:3]:
        raise InputError(f"guide: expected [B,H,W,3] with the B,H,W of {name} {tuple(p.shape)}, got "
                         f"{tuple(guide.shape)}")
    check_int("radius", radius, minimum=0)
    if isinstance(eps, bool) or not (isinstance(eps, numbers.Real) and np.isfinite(eps) and eps > 0):
        raise InputError(f"eps: expected a finite number > 0 (on 0-255 intensities), got {eps!r}")


def guided_filter_setup(guide: jax.Array, radius: int, eps: float, dtype) -> dict:
    """The guide's part of the filter, computed once per image: {"guide": centred guide [B,H,W,3],
    "counts": [1,H,W,1], "mean": mu [B,H,W,3], "inverse": (Sigma + eps U)^-1 [B,H,W,3,3]}."""
    guide = guide.astype(dtype)
    guide = guide - jnp.mean(guide, axis=(1, 2), keepdims=True)
    counts = jnp.asarray(window_counts(guide.shape[1], guide.shape[2], radius), dtype)[None, :, :, None]
    mean = box_sum(guide, radius) / counts
    second = box_sum(guide[..., :, None] * guide[..., None, :], radius) / counts[..., None]
    cov = second - mean[..., :, None] * mean[..., None, :]
    return {"guide": guide, "counts": counts, "mean": mean,
            "inverse": _inverse_sym3(cov + eps * jnp.eye(3, dtype=dtype)), "radius": radius}


def guided_filter_apply(setup: dict, p: jax.Array) -> jax.Array:
    """q = W p [B,H,W,C] for the guide of `setup` (guided_filter_setup)."""
    radius, counts, guide, mean = setup["radius"], setup["counts"], setup["guide"], setup["mean"]
    mean_p = box_sum(p, radius) / counts
    cov_ip = box_sum(guide[..., :, None] * p[..., None, :], radius) / counts[..., None] \
        - mean[..., :, None] * mean_p[..., None, :]                          # [B,H,W,3,C]
    a = jnp.einsum("bhwij,bhwjc->bhwic", setup["inverse"], cov_ip)
    b = mean_p - jnp.einsum("bhwic,bhwi->bhwc", a, mean)
    mean_a = box_sum(a, radius) / counts[..., None]
    return jnp.einsum("bhwic,bhwi->bhwc", mean_a, guide) + box_sum(b, radius) / counts


def guided_filter(p: jax.Array, guide: jax.Array, radius: int, eps: float = 10.0) -> jax.Array:
    """The guided filter (module docstring) of p [B,H,W,C] (float) with the colour guide [B,H,W,3] (0-255
    intensities; eps = 10 on that scale is the paper's) -> q [B,H,W,C] in p's dtype (computed in at least
    float32)."""
    _check_pair("p", p, guide, radius, eps)
    dtype = jnp.promote_types(p.dtype, jnp.float32)
    return guided_filter_apply(guided_filter_setup(guide, radius, eps, dtype), p.astype(dtype)).astype(p.dtype)


def potts_compatibility(num_classes: int, dtype=jnp.float32) -> jax.Array:
    """mu = delta(l = l') [C,C] (the reward form of the Potts model)."""
    return jnp.eye(num_classes, dtype=dtype)


def content_compatibility(class_scores: jax.Array, lam: float) -> jax.Array:
    """Eqs. 6-7: mu(l, l') = delta(l = l') + lam mu_2, mu_2 = -phi_g(l) - phi_g(l') = s_g(l) + s_g(l') with the
    class guidance scores s_g = -phi_g [B,C] -> [B,C,C]."""
    check_rank("class_scores", class_scores, 2, "[B,C]")
    mu_2 = class_scores[:, :, None] + class_scores[:, None, :]
    return jnp.eye(class_scores.shape[1], dtype=class_scores.dtype) + lam * mu_2


def _check_compatibility(compatibility, num_classes: int, batch: int) -> None:
    shape = tuple(np.shape(compatibility))
    if shape not in ((num_classes, num_classes), (batch, num_classes, num_classes)):
        raise InputError(f"compatibility: expected [C,C] or [B,C,C] with C = {num_classes}, B = {batch}, got "
                         f"{shape}")


def pairwise_message(q: jax.Array, setup: dict, compatibility: jax.Array) -> jax.Array:
    """M(l) = sum_l' mu(l, l') GF(Q)(l') [B,H,W,C] of Q [B,H,W,C]; mu [C,C] or [B,C,C]."""
    message = guided_filter_apply(setup, q)
    spec = "lk,bhwk->bhwl" if compatibility.ndim == 2 else "blk,bhwk->bhwl"
    return jnp.einsum(spec, compatibility, message)


def mean_field_update(q: jax.Array, unary: jax.Array, setup: dict, weight, compatibility: jax.Array) -> jax.Array:
    """One iteration: Q [B,H,W,C] -> softmax(U + w sum_l' mu(l, l') GF(Q)(l')) (module docstring)."""
    return jax.nn.softmax(unary + weight * pairwise_message(q, setup, compatibility), axis=-1)


def mean_field_logits(unary: jax.Array, guide: jax.Array, *, radius: int, eps: float = 10.0, iterations: int = 5,
                      weight=1.0, compatibility: jax.Array | None = None) -> jax.Array:
    """The guidance CRF's scores after `iterations` updates: U + w M(Q^{T-1}) [B,H,W,C] (U for T = 0), so that
    softmax of them is mean_field's Q (a stable log Q up to a constant per pixel, for use as logits).
    Arguments as mean_field's."""
    _check_pair("unary", unary, guide, radius, eps)
    check_int("iterations", iterations, minimum=0)
    unary = unary.astype(jnp.promote_types(unary.dtype, jnp.float32))
    if compatibility is None:
        compatibility = potts_compatibility(unary.shape[-1], unary.dtype)
    _check_compatibility(compatibility, unary.shape[-1], unary.shape[0])
    setup = guided_filter_setup(guide, radius, eps, unary.dtype)
    compatibility = jnp.asarray(compatibility, unary.dtype)

    def update(_, scores):
        return unary + weight * pairwise_message(jax.nn.softmax(scores, axis=-1), setup, compatibility)

    return jax.lax.fori_loop(0, iterations, update, unary)


def mean_field(unary: jax.Array, guide: jax.Array, *, radius: int, eps: float = 10.0, iterations: int = 5,
               weight=1.0, compatibility: jax.Array | None = None) -> jax.Array:
    """The guidance CRF: unary scores U [B,H,W,C] (logits), guide [B,H,W,3] (0-255) -> Q [B,H,W,C] after
    `iterations` mean-field updates (0 = softmax(U)); compatibility mu [C,C] or [B,C,C] (potts_compatibility,
    content_compatibility; None = Potts). Unrolled (a fori_loop of fixed length), so differentiable in U, w, mu
    and the guide: usable as a layer in training (our extension; the paper trains piecewise). Computed in at
    least float32."""
    return jax.nn.softmax(mean_field_logits(unary, guide, radius=radius, eps=eps, iterations=iterations,
                                            weight=weight, compatibility=compatibility), axis=-1)


def missing_class_scores(where: str) -> ConfigError:
    """The error of the content-sensitive compatibility on a model without "class_logits" (`where`: its use)."""
    return ConfigError(f"config.eval.crf.compatibility: 'content' reads the model output 'class_logits', which "
                       f"the model does not produce ({where}); use 'potts' or a model with the classification "
                       f"branch")


def compatibility_of(name: str, class_scores: jax.Array | None, lam: float, where: str) -> jax.Array | None:
    """The compatibility `name` ("potts" -> None, i.e. Potts; "content" -> Eqs. 6-7 of class_scores [B,C]);
    missing_class_scores(where) when "content" has none."""
    if name == "potts":
        return None
    if class_scores is None:
        raise missing_class_scores(where)
    return content_compatibility(class_scores.astype(jnp.promote_types(class_scores.dtype, jnp.float32)), lam)


def _guide_0_255(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Normalised images [B,H,W,3] -> 0-255 intensities (x std + mean, as config.data normalised them)."""
    return images * jnp.asarray(std, images.dtype) + jnp.asarray(mean, images.dtype)


def crf_postprocess(probabilities: jax.Array, images: jax.Array, class_scores: jax.Array | None = None, *,
                    mean: Sequence[float], std: Sequence[float], radius: int, eps: float, iterations: int,
                    weight: float, compatibility: str = "potts", lam: float = 1.0) -> jax.Array:
    """inference.POSTPROCESSORS["guided_crf"]: probabilities [B,H,W,C], normalised images [B,H,W,3] and the
    network's class scores [B,C] (its class_logits fused over the views; None for a model without them) ->
    probabilities [B,H,W,C] (same dtype). The unary is log p (softmax(log p) = p, so weight 0 returns p), the
    guide the images un-normalised to 0-255, the compatibility Potts or content-sensitive (lambda = lam)."""
    unary = jnp.log(jnp.maximum(probabilities, jnp.finfo(probabilities.dtype).tiny))
    mu = compatibility_of(compatibility, class_scores, lam, "post-processing")
    return mean_field(unary, _guide_0_255(images, mean, std), radius=radius, eps=eps, iterations=iterations,
                      weight=weight, compatibility=mu)


@dataclasses.dataclass(frozen=True)
class CRFLayer:
    """The guidance CRF as a parameter-free layer on a model's outputs (config.model.crf_layer; our extension,
    the paper trains piecewise): outputs {"logits" [B,h,w,C], ("class_logits" [B,C])}, normalised images
    [B,H,W,3] -> the outputs with "logits" replaced by mean_field_logits of them. It runs at the logits'
    resolution (the output stride), the guide being the images resized to it (bilinear, antialiased) and
    un-normalised to 0-255: T unrolled iterations keep several [B,h,w,3,C] tensors for the backward pass, which
    at full resolution would cost the network's own memory many times over; every inference mode then sees
    ordinary stride-OS logits. Settings as config.eval.crf's (the same section serves both uses)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    radius: int
    eps: float
    iterations: int
    weight: float
    compatibility: str = "potts"
    lam: float = 1.0

    def __call__(self, outputs: dict, images: jax.Array) -> dict:
        logits = outputs["logits"]
        size = (images.shape[0], *logits.shape[1:3], 3)
        guide = _guide_0_255(jax.image.resize(images.astype(logits.dtype), size, method="bilinear",
                                              antialias=True), self.mean, self.std)
        mu = compatibility_of(self.compatibility, outputs.get("class_logits"), self.lam, "config.model.crf_layer")
        refined = mean_field_logits(logits, guide, radius=self.radius, eps=self.eps, iterations=self.iterations,
                                    weight=self.weight, compatibility=mu)
        return {**outputs, "logits": refined.astype(logits.dtype)}


def options_from_config(section: Mapping, data: Mapping) -> dict:
    """config.eval.crf (and config.data's mean/std) -> the keyword options of crf_postprocess / CRFLayer,
    checked: ConfigError names the field (config.eval.crf.<field>) and what is expected."""
    section = dict(section.to_dict() if isinstance(section, ml_collections.ConfigDict) else section)
    unknown = sorted(set(section) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"config.eval.crf.{unknown[0]}: no such CRF field; valid: {list(CONFIG_FIELDS)}")
    missing = [f for f in CONFIG_FIELDS if f not in section]
    if missing:
        raise ConfigError(f"config.eval.crf.{missing[0]}: missing; the CRF needs {list(CONFIG_FIELDS)}")
    for name, minimum in (("radius", 0), ("iterations", 0)):
        try:
            check_int(name, section[name], minimum=minimum)
        except InputError as error:
            raise ConfigError(f"config.eval.crf.{error}") from None
    for name, positive in (("eps", True), ("weight", False), ("lam", False)):
        value = section[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or (positive and value <= 0):
            raise ConfigError(f"config.eval.crf.{name}: expected a finite number{' > 0' if positive else ''}, "
                              f"got {value!r}")
    if section["compatibility"] not in COMPATIBILITIES:
        raise ConfigError(f"config.eval.crf.compatibility: unknown {section['compatibility']!r}; valid: "
                          f"{list(COMPATIBILITIES)}")
    return {"mean": tuple(float(v) for v in data["mean"]), "std": tuple(float(v) for v in data["std"]),
            "radius": int(section["radius"]), "eps": float(section["eps"]),
            "iterations": int(section["iterations"]), "weight": float(section["weight"]),
            "compatibility": str(section["compatibility"]), "lam": float(section["lam"])}
