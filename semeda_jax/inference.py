"""One inference seam: `predict_fn(variables, images, size) -> class probabilities`, built from an inference
spec (config.eval.inference), used by periodic evaluation, the eval stage and predict.

    images [B,H,W,3] (normalised) -> probabilities [B,size[0],size[1],C] float32 (sum 1 over C)

For every view (scale s in `scales` x {unflipped, mirrored if `flip`}) the images are resized by s (bilinear,
antialiased when shrinking) and mirrored, the network runs in `mode`, and its logits are unmirrored and resized
to `size`, then turned into probabilities; the views are fused by `fusion`:
    avg      mean over views                      (guidance paper Eq. 8, "avg")
    max      per-class max over views, renormalised to sum 1
    avg+max  (avg + max) / 2, renormalised        (guidance paper Eq. 8, its best fixed rule)
    learned  sum_v w[v, c] p_v[c], renormalised, with per-class view weights w [V, C] (InferenceSpec.view_weights
             or `build_predict_fn(view_weights=...)`; the guidance paper's learned combination, Eqs. 9-10,
             fitted offline by the learn_fusion stage, semeda_jax/fusion.py)
Views are in the order of `views(spec)`: scale-major, unflipped first. A model with the classification branch
also gives "class_logits" [B,C]; a view's class scores are their mean over its network calls (windows, shifted
copies), and the views' class scores are averaged (the guidance paper ensembles the global scores by averaging)
for the post-processing.
Modes, for one view [B,H,W,3] -> logits at the input resolution:
    whole    the network on the whole image (upsampled from its output stride)
    sliding  windows of `window` (h, w) every `stride` (the last one flush with the border; a window at least
             the image size is the whole image), logits upsampled per window and blended: "uniform" (mean of the
             overlapping windows) or "gaussian" (weights exp(-d^2 / (2 (size/4)^2)) from the window centre)
    shifted  `shifts` = n^2 copies of the image shifted by (a, b) * output_stride / n pixels (a, b < n; edge
             padding), their logit grids interleaved into one grid of stride output_stride / n, then upsampled
             with the whole-image map's alignment (upsample_interleaved; RelationNet's 4-step testing,
             SPEC.md 3(a): n = 2, offsets 0 and 4 at output stride 8)
Then `postprocess` (a name of POSTPROCESSORS; "" = none) maps (probabilities, images resized to `size`, class
scores [B,C] or None) to probabilities, with the keyword options of its config section (spec_for): "guided_crf"
is the guidance paper's mean-field CRF with a guided-filter kernel, Potts or content-sensitive compatibility
(semeda_jax/crf.py; options from config.eval.crf and config.data).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semeda_jax import crf
from semeda_jax.models.layers import resize_bilinear
from semeda_jax.validation import ConfigError

MODES = ("whole", "sliding", "shifted")
BLENDS = ("uniform", "gaussian")
# name -> fn(probabilities [B,H,W,C], images [B,H,W,3] normalised, class scores [B,C] | None, **options)
# -> probabilities.
POSTPROCESSORS: dict[str, Callable[..., jax.Array]] = {"guided_crf": crf.crf_postprocess}
# name -> fn(config) -> its checked keyword options (spec_for puts them in InferenceSpec.postprocess_options).
POSTPROCESS_OPTIONS: dict[str, Callable[[ml_collections.ConfigDict], dict]] = {
    "guided_crf": lambda config: crf.options_from_config(config.eval.crf, config.data)}


def _normalised(p: jax.Array) -> jax.Array:
    return p / jnp.sum(p, axis=-1, keepdims=True)


def fuse_avg(probs: jax.Array) -> jax.Array:
    """probs [V,B,H,W,C] -> [B,H,W,C]: the mean over views."""
    return jnp.mean(probs, axis=0)


def fuse_max(probs: jax.Array) -> jax.Array:
    """probs [V,B,H,W,C] -> [B,H,W,C]: the per-class max over views, renormalised to sum 1."""
    return _normalised(jnp.max(probs, axis=0))


def fuse_avg_max(probs: jax.Array) -> jax.Array:
    """probs [V,B,H,W,C] -> [B,H,W,C]: (avg + max) / 2 (max not renormalised first), renormalised."""
    return _normalised((jnp.mean(probs, axis=0) + jnp.max(probs, axis=0)) / 2)


def learned_fusion(view_weights) -> Callable[[jax.Array], jax.Array]:
    """Per-class view weights w [V, C] -> fusion probs [V,B,H,W,C] -> sum_v w[v, c] p_v / its sum over c."""
    w = jnp.asarray(view_weights)
    w = w.astype(jnp.promote_types(w.dtype, jnp.float32))  # (traced weights: the learn_fusion objective)
    return lambda probs: _normalised(jnp.einsum("vc,vbhwc->bhwc", w, probs))


FUSIONS = {"avg": fuse_avg, "max": fuse_max, "avg+max": fuse_avg_max}


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """config.eval.inference as a hashable value (see the module docstring for the fields)."""
    mode: str = "whole"
    window: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (0, 0)
    blend: str = "uniform"
    shifts: int = 4
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    fusion: str = "avg"
    postprocess: str = ""
    postprocess_options: tuple[tuple[str, object], ...] = ()  # (name, value) pairs, set by spec_for
    view_weights: tuple[tuple[float, ...], ...] = ()  # fusion "learned": w [V][C] (fusion.with_learned_weights)

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)


def spec_from_config(section: Mapping, key: str = "config.eval.inference") -> InferenceSpec:
    """A checked InferenceSpec of a config section; ConfigError names the bad field and its valid values."""
    section = dict(section.to_dict() if isinstance(section, ml_collections.ConfigDict) else section)
    fields = {f.name for f in dataclasses.fields(InferenceSpec)} - {"postprocess_options", "view_weights"}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: no such inference field; valid: {sorted(fields)}")
    for name in ("window", "stride"):
        if name in section:
            section[name] = tuple(int(v) for v in section[name])
    if "scales" in section:
        section["scales"] = tuple(float(v) for v in section["scales"])
    spec = InferenceSpec(**section)
    choices = {"mode": MODES, "blend": BLENDS, "fusion": (*FUSIONS, "learned"), "postprocess": ("", *POSTPROCESSORS)}
    for name, valid in choices.items():
        if getattr(spec, name) not in valid:
            raise ConfigError(f"{key}.{name}: unknown {getattr(spec, name)!r}; valid: {list(valid)}")
    if not spec.scales or min(spec.scales) <= 0:
        raise ConfigError(f"{key}.scales: {spec.scales} must be a non-empty list of positive factors")
    if spec.mode == "sliding" and (len(spec.window) != 2 or min(spec.window) < 1 or len(spec.stride) != 2
                                   or min(spec.stride) < 1 or any(s > w for s, w in zip(spec.stride, spec.window))):
        raise ConfigError(f"{key}: sliding needs window (h, w) >= 1 and stride (h, w) in [1, window], got window "
                          f"{spec.window}, stride {spec.stride}")
    if spec.mode == "shifted" and math.isqrt(spec.shifts) ** 2 != spec.shifts:
        raise ConfigError(f"{key}.shifts: {spec.shifts} is not a square (n x n shifts: 1, 4, 9, ...)")
    return spec


def spec_for(config: ml_collections.ConfigDict) -> InferenceSpec:
    """The checked InferenceSpec of config.eval.inference with its post-processor's options (POSTPROCESS_OPTIONS;
    none without a post-processor)."""
    spec = spec_from_config(config.eval.inference)
    if not spec.postprocess:
        return spec
    options = POSTPROCESS_OPTIONS[spec.postprocess](config)
    return dataclasses.replace(spec, postprocess_options=tuple(sorted(options.items())))


def check_config(config: ml_collections.ConfigDict) -> InferenceSpec:
    """config.eval.inference checked (spec_for; stages.check_config) -> its spec; a ConfigError also when the
    CRF would post-process logits that config.model.crf_layer already refined."""
    spec = spec_for(config)
    if config.model.get("crf_layer") and spec.postprocess == "guided_crf":
        raise ConfigError("config.eval.inference.postprocess: 'guided_crf' would apply the CRF a second time, "
                          "config.model.crf_layer already puts it on the model's logits")
    return spec


def check_outputs(spec: InferenceSpec, outputs: Mapping) -> None:
    """ConfigError when the post-processing reads a model output the model does not produce (the content-
    sensitive compatibility reads "class_logits")."""
    if dict(spec.postprocess_options).get("compatibility") == "content" and "class_logits" not in outputs:
        raise crf.missing_class_scores("post-processing")


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: 0, stride, 2 stride, ... and the last one flush with the end."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def _blend_weights(window: Sequence[int], blend: str) -> np.ndarray:
    """[h, w] weights of one window's pixels: ones, or a Gaussian of the distance to the window centre."""
    if blend == "uniform":
        return np.ones(tuple(window))
    axes = [np.exp(-((np.arange(n) + 0.5 - n / 2) ** 2) / (2 * (n / 4) ** 2)) for n in window]
    return np.outer(*axes)


def _float32_up(x):
    return None if x is None else x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _network_outputs(apply_fn, variables, images, copies: int = 1):
    """The network (eval mode) on images [copies * B,H,W,3] stacked copy-major -> (logits [copies * B,h,w,C],
    class scores [B,C] = the mean of "class_logits" over the copies, or None without them), in at least
    float32 (bfloat16 compute is cast up)."""
    outputs = apply_fn(variables, images, train=False)
    scores = _float32_up(outputs.get("class_logits"))
    if scores is not None:
        scores = jnp.mean(scores.reshape(copies, -1, scores.shape[-1]), axis=0)
    return _float32_up(outputs["logits"]), scores


def whole_logits(apply_fn, variables, images: jax.Array, copies: int = 1):
    """images [B,H,W,3] -> (logits [B,H,W,C] (the network's, bilinearly upsampled), class scores [B,C] | None);
    `copies` as _network_outputs'."""
    logits, scores = _network_outputs(apply_fn, variables, images, copies)
    return resize_bilinear(logits, images.shape[1:3]), scores


def sliding_logits(apply_fn, variables, images: jax.Array, window: Sequence[int], stride: Sequence[int],
                   blend: str = "uniform"):
    """images [B,H,W,3] -> (logits [B,H,W,C] blended from windows (see the module docstring), class scores
    [B,C] averaged over the windows | None); one network call on all windows stacked along the batch."""
    height, width = images.shape[1:3]
    wh, ww = min(window[0], height), min(window[1], width)
    starts = [(y, x) for y in window_starts(height, wh, stride[0]) for x in window_starts(width, ww, stride[1])]
    if len(starts) == 1:
        return whole_logits(apply_fn, variables, images)
    crops = jnp.concatenate([images[:, y:y + wh, x:x + ww] for y, x in starts], axis=0)
    logits, scores = whole_logits(apply_fn, variables, crops, copies=len(starts))
    logits = logits.reshape(len(starts), images.shape[0], wh, ww, -1)
    weight = jnp.asarray(_blend_weights((wh, ww), blend), logits.dtype)[None, :, :, None]
    total = jnp.zeros((*images.shape[:3], logits.shape[-1]), logits.dtype)
    norm = jnp.zeros((1, height, width, 1), logits.dtype)
    for i, (y, x) in enumerate(starts):
        total = total.at[:, y:y + wh, x:x + ww].add(weight * logits[i])
        norm = norm.at[:, y:y + wh, x:x + ww].add(weight)
    return total / norm, scores


def shift_images(images: jax.Array, dy: int, dx: int) -> jax.Array:
    """[B,H,W,3] -> the same size, content moved up by dy and left by dx (edge padding at the bottom / right):
    out[:, i, j] = images[:, min(i + dy, H - 1), min(j + dx, W - 1)]."""
    padded = jnp.pad(images, ((0, 0), (0, dy), (0, dx), (0, 0)), mode="edge")
    return padded[:, dy:dy + images.shape[1], dx:dx + images.shape[2]]


def upsample_interleaved(fine: jax.Array, size: Sequence[int], n: int) -> jax.Array:
    """fine [B,n h,n w,C] (cell n i + a = coarse cell i + a / n) -> [B,size,C], bilinear with the alignment of
    whole-image inference: where resize_bilinear puts coarse cell i of the [h, w] grid (pixel (i + 1/2) H / h -
    1/2), fine cell n i + a goes a / n of a coarse cell further; clamped at the borders. So the unshifted copy's
    values stay where whole-image inference puts them and the shifted copies' land between them (the coarse
    cells represent those positions: training resizes the logits to the labels the same way)."""
    for axis, out in ((1, size[0]), (2, size[1])):
        length = fine.shape[axis]
        coords = (np.arange(out) + 0.5) * length / out - n / 2  # each output pixel's fine-grid coordinate
        low = np.floor(coords)
        shape = [1] * fine.ndim
        shape[axis] = out
        weight = jnp.asarray((coords - low).reshape(shape), fine.dtype)
        below = jnp.take(fine, np.clip(low, 0, length - 1).astype(np.int32), axis=axis)
        above = jnp.take(fine, np.clip(low + 1, 0, length - 1).astype(np.int32), axis=axis)
        fine = below + weight * (above - below)
    return fine


def shifted_logits(apply_fn, variables, images: jax.Array, shifts: int, output_stride: int):
    """images [B,H,W,3] -> (logits [B,H,W,C] from shifts = n^2 shifted copies interleaved (module docstring),
    class scores [B,C] averaged over the copies | None)."""
    n = math.isqrt(shifts)
    if n == 1:
        return whole_logits(apply_fn, variables, images)
    if output_stride % n:
        raise ConfigError(f"config.eval.inference.shifts: {shifts} shifts need an output stride divisible by "
                          f"{n}, got {output_stride}")
    step = output_stride // n
    offsets = [(a, b) for a in range(n) for b in range(n)]
    copies = jnp.concatenate([shift_images(images, a * step, b * step) for a, b in offsets], axis=0)
    grids, scores = _network_outputs(apply_fn, variables, copies, copies=shifts)
    batch, h, w, c = images.shape[0], *grids.shape[1:]
    grids = grids.reshape(n, n, batch, h, w, c)  # [a, b, B, i, j, C] -> fine cell (i n + a, j n + b)
    fine = grids.transpose(2, 3, 0, 4, 1, 5).reshape(batch, h * n, w * n, c)
    return upsample_interleaved(fine, images.shape[1:3], n), scores


def scale_images(images: jax.Array, scale: float) -> jax.Array:
    """[B,H,W,3] -> [B,round(H s),round(W s),3] (bilinear, antialiased when shrinking); s = 1 is the identity."""
    if scale == 1.0:
        return images
    size = (max(1, round(images.shape[1] * scale)), max(1, round(images.shape[2] * scale)))
    return jax.image.resize(images, (images.shape[0], *size, images.shape[3]), method="bilinear",
                            antialias=scale < 1)


def to_view(images: jax.Array, scale: float, flip: bool) -> jax.Array:
    """The view (scale, mirrored or not) of images [B,H,W,3]."""
    images = scale_images(images, scale)
    return images[:, :, ::-1] if flip else images


def from_view(logits: jax.Array, size: Sequence[int], flip: bool) -> jax.Array:
    """A view's logits [B,h,w,C] -> [B,size,C]: unmirrored, then resized back to `size` (identity if equal)."""
    logits = logits[:, :, ::-1] if flip else logits
    if tuple(logits.shape[1:3]) == tuple(size):
        return logits
    return resize_bilinear(logits, size)


def views(spec: InferenceSpec) -> list[tuple[float, bool]]:
    """The (scale, mirrored) views of `spec` in fusion order: scale-major, unflipped first."""
    return [(scale, flip) for scale in spec.scales for flip in ((False, True) if spec.flip else (False,))]


def build_views_fn(spec: InferenceSpec, apply_fn, *, output_stride: int = 16):
    """-> views_fn(variables, images [B,H,W,3], size (h, w)) -> (probabilities [V,B,h,w,C] of every view of
    `views(spec)` in `spec.mode`, class scores [V,B,C] or None for a model without "class_logits")."""
    def network(variables, images):  # (logits at the network's resolution (whole) or the input's, scores)
        if spec.mode == "sliding":
            return sliding_logits(apply_fn, variables, images, spec.window, spec.stride, spec.blend)
        if spec.mode == "shifted":
            return shifted_logits(apply_fn, variables, images, spec.shifts, output_stride)
        return _network_outputs(apply_fn, variables, images)

    def views_fn(variables, images, size):
        size = tuple(size)
        probs, scores = [], []
        for scale, flip in views(spec):
            logits, class_scores = network(variables, to_view(images, scale, flip))
            probs.append(jax.nn.softmax(from_view(logits, size, flip)))
            scores.append(class_scores)
        return jnp.stack(probs), None if scores[0] is None else jnp.stack(scores)

    return views_fn


def build_predict_fn(spec: InferenceSpec, apply_fn, *, output_stride: int = 16,
                     view_weights=None) -> Callable[[dict, jax.Array, Sequence[int]], jax.Array]:
    """-> predict_fn(variables, images [B,H,W,3], size (h, w)) -> probabilities [B,h,w,C] (pure, jit-able;
    `size` static). Fusion "learned" takes its weights [V, C] from `view_weights`, else spec.view_weights
    (views in the order of `views(spec)`)."""
    if spec.fusion == "learned":
        weights = view_weights if view_weights is not None else (spec.view_weights or None)
        if weights is None or np.shape(weights)[0] != spec.num_views:
            raise ConfigError(f"config.eval.inference.fusion: 'learned' needs view weights [{spec.num_views}, C] "
                              f"(one row per view; the learn_fusion stage writes them to WORKDIR/"
                              f"fusion_weights.json), got {None if weights is None else np.shape(weights)}")
        fuse = learned_fusion(weights)
    else:
        fuse = FUSIONS[spec.fusion]
    views_fn = build_views_fn(spec, apply_fn, output_stride=output_stride)

    def predict_fn(variables, images, size):
        size = tuple(size)
        probs, scores = views_fn(variables, images, size)
        probs = probs[0] if len(probs) == 1 else fuse(probs)
        if spec.postprocess:
            probs = POSTPROCESSORS[spec.postprocess](probs, resize_bilinear(images, size),
                                                     None if scores is None else jnp.mean(scores, axis=0),
                                                     **dict(spec.postprocess_options))
        return probs

    return predict_fn
