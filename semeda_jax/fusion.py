"""Learned per-class view weights for the test-time ensemble (guidance paper §3.3.1, Eqs. 9-10), fitted offline
with the network frozen: the learn_fusion stage (config.eval.learn_fusion), used by fusion "learned".

    python -m semeda_jax.main --config=configs/guidance_voc.py:resnet101,learned --workdir=W \
        --stages=train,learn_fusion,eval

Stored candidates. For every image of `split` (the training split by default; the validation split is refused,
it is the one reported), the views of config.eval.inference (its mode, scales x flips; no post-processing) give
probabilities p_v [V,H,W,C] at the labels' resolution. `pixels_per_image` valid pixels per image (void and
padding excluded) are drawn uniformly without replacement (Gumbel top-k, keys from config.seed), so the stored
candidates are [N,V,C] rather than V full score maps per image; the objective is a mean over pixels, so its
value on the sample is an unbiased estimate of the one on all pixels.
Model (inference.learned_fusion): q_c = sum_v w_vc p_vc / sum_c' sum_v w_vc' p_vc' with w = exp(theta) > 0 (the
fused map stays a distribution); a factor common to all of w changes nothing, so the saved w are scaled to mean 1.
Objective: L = mean over the sampled pixels of -log q_y (cross-entropy of the fused probabilities; the paper
names no L), minimised by Adam (optax) from w = 1, i.e. from the "avg" fusion; its gradient is Eq. 10's
dL/dlambda_v = dL/dq * p_v, through the renormalisation and the exp. The paper weighs the views' score maps
s_i; the inference seam fuses probabilities, so we weigh those.
Saved: WORKDIR/fusion_weights.json {"views": [[scale, mirrored], ...], "weights": [V][C], "num_classes",
"split", "pixels", "steps", "loss_avg", "loss_learned", "accuracy_avg", "accuracy_learned"} (loss and pixel
accuracy of the sample under w = 1 and the learned w); eval and predict read it (with_learned_weights).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semeda_jax import inference, parallel
from semeda_jax.validation import IGNORE_LABEL, ConfigError

WEIGHTS_FILE = "fusion_weights.json"
CONFIG_FIELDS = ("split", "pixels_per_image", "steps", "learning_rate")  # of config.eval.learn_fusion


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.eval.learn_fusion (options_from_config) when config.eval.inference.fusion is "learned"
    (stages.check_config; the learn_fusion stage checks it itself)."""
    if inference.spec_from_config(config.eval.inference).fusion == "learned":
        options_from_config(config)


def check_run(config: ml_collections.ConfigDict, stages: Sequence[str], workdir: str) -> None:
    """A ConfigError when fusion "learned" would read WORKDIR/fusion_weights.json that neither exists nor is
    written by a learn_fusion stage of `stages` before the eval or predict stage reads it."""
    if inference.spec_from_config(config.eval.inference).fusion != "learned":
        return
    readers = [stage for stage in stages if stage in ("eval", "predict")]
    path = os.path.join(workdir, WEIGHTS_FILE)
    if readers and "learn_fusion" not in stages[:stages.index(readers[0])] and not os.path.isfile(path):
        raise ConfigError(f"config.eval.inference.fusion: 'learned' reads {path}, which does not exist; add "
                          f"learn_fusion to --stages before {readers[0]} (or use fusion 'avg')")


def options_from_config(config: ml_collections.ConfigDict) -> dict:
    """config.eval.learn_fusion checked -> {split, pixels_per_image, steps, learning_rate}; ConfigError names
    the field (the split must not be config.dataset.val_split: the reported numbers would be fitted on)."""
    section = config.eval.learn_fusion
    unknown = sorted(set(section) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"config.eval.learn_fusion.{unknown[0]}: no such field; valid: {list(CONFIG_FIELDS)}")
    if section.split == config.dataset.val_split:
        raise ConfigError(f"config.eval.learn_fusion.split: {section.split!r} is the validation split "
                          f"(config.dataset.val_split), on which results are reported; fit on another split")
    for name in ("pixels_per_image", "steps"):
        value = section[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.eval.learn_fusion.{name}: expected an integer >= 1, got {value!r}")
    if isinstance(section.learning_rate, bool) or not (isinstance(section.learning_rate, (int, float))
                                                        and section.learning_rate > 0):
        raise ConfigError(f"config.eval.learn_fusion.learning_rate: expected a number > 0, got "
                          f"{section.learning_rate!r}")
    return {name: section[name] for name in CONFIG_FIELDS}


def sample_views(views_fn: Callable, variables, batch: dict, key: jax.Array, pixels: int) -> dict:
    """One padded eval batch -> {"probs" [B,k,V,C], "labels" [B,k]}: the views' probabilities at k = min(pixels,
    H W) pixels per image drawn uniformly without replacement among its valid ones (labels 255 where an image
    has fewer than k valid pixels, or is a filler example)."""
    probs, _ = views_fn(variables, batch["image"], batch["label"].shape[1:3])  # [V,B,H,W,C]
    labels = jnp.where(batch["mask"][:, None, None], batch["label"], IGNORE_LABEL)
    labels = labels.reshape(labels.shape[0], -1)
    valid = labels != IGNORE_LABEL
    order = jnp.where(valid, jax.random.gumbel(key, labels.shape), -jnp.inf)
    _, index = jax.lax.top_k(order, min(pixels, labels.shape[1]))  # [B,k]
    picked = jnp.take_along_axis(probs.reshape(*probs.shape[:2], -1, probs.shape[-1]), index[None, :, :, None],
                                 axis=2)
    return {"probs": picked.transpose(1, 2, 0, 3),
            "labels": jnp.where(jnp.take_along_axis(valid, index, 1), jnp.take_along_axis(labels, index, 1),
                                IGNORE_LABEL)}


def collect_candidates(state, reader, config: ml_collections.ConfigDict, spec: inference.InferenceSpec,
                       pixels_per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored candidates of `reader`'s split: (probabilities [N,V,C] float32, labels [N] int) of the
    sampled valid pixels (module docstring), the same on every process."""
    from semeda_jax.data import pipeline  # TensorFlow is imported where data is read

    mesh = parallel.make_mesh(config)
    views_fn = inference.build_views_fn(spec, state.apply_fn, output_stride=int(config.model.output_stride))
    step = jax.jit(lambda variables, batch, key: sample_views(views_fn, variables, batch, key, pixels_per_image),
                   out_shardings=parallel.replicated(mesh))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    dataset = pipeline.eval_dataset(reader, pad_size=config.data.eval_pad_size,
                                    batch_size=parallel.local_eval_batch_size(config.data.eval_batch_size, mesh),
                                    mean=config.data.mean, std=config.data.std, process_index=jax.process_index(),
                                    process_count=jax.process_count(), input_scale=config.data.input_scale)
    key = jax.random.PRNGKey(config.seed)
    probs, labels = [], []
    for index, batch in enumerate(dataset.as_numpy_iterator()):
        out = jax.device_get(step(variables, parallel.global_batch(
            {k: batch[k] for k in ("image", "label", "mask")}, mesh), jax.random.fold_in(key, index)))
        keep = out["labels"] != IGNORE_LABEL
        probs.append(np.asarray(out["probs"], np.float32)[keep])
        labels.append(np.asarray(out["labels"])[keep])
    return np.concatenate(probs), np.concatenate(labels)


def fusion_loss(theta: jax.Array, probs: jax.Array, labels: jax.Array) -> jax.Array:
    """The objective: mean -log q_y of the learned fusion with w = exp(theta) [V,C] of probs [N,V,C], labels
    [N] (module docstring)."""
    fused = inference.learned_fusion(jnp.exp(theta))(probs.transpose(1, 0, 2)[:, None, None])[0, 0]  # [N,C]
    picked = jnp.take_along_axis(fused, labels[:, None], axis=1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(picked, jnp.finfo(fused.dtype).tiny)))


def fit_view_weights(probs, labels, *, steps: int, learning_rate: float) -> np.ndarray:
    """Minimise fusion_loss over theta by Adam from theta = 0 (w = 1, the "avg" fusion) -> w [V,C] > 0 scaled to
    mean 1 (probs [N,V,C], labels [N] valid classes)."""
    probs, labels = jnp.asarray(probs, jnp.float32), jnp.asarray(labels, jnp.int32)
    optimizer = optax.adam(learning_rate)
    theta = jnp.zeros(probs.shape[1:], jnp.float32)

    @jax.jit
    def run(theta):
        def step(carry, _):
            theta, opt_state = carry
            grads = jax.grad(fusion_loss)(theta, probs, labels)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(theta, updates), opt_state), None
        return jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=steps)[0][0]

    weights = np.exp(np.asarray(run(theta), np.float64))
    return weights / weights.mean()


def fusion_accuracy(weights, probs, labels) -> float:
    """Pixel accuracy of the argmax of the learned fusion with `weights` [V,C] on probs [N,V,C], labels [N]."""
    fused = np.einsum("vc,nvc->nc", np.asarray(weights, np.float64), np.asarray(probs, np.float64))
    return float(np.mean(np.argmax(fused, -1) == np.asarray(labels)))


def learn_view_weights(state, reader, config: ml_collections.ConfigDict, log: Callable[[str], None] = print) -> dict:
    """The learn_fusion stage's work on `reader`'s split -> the record saved as WORKDIR/fusion_weights.json."""
    options = options_from_config(config)
    spec = inference.spec_for(config)
    probs, labels = collect_candidates(state, reader, config, spec, options["pixels_per_image"])
    log(f"[learn_fusion] {len(labels)} pixels x {spec.num_views} views from {len(reader.ids)} images of split "
        f"{options['split']!r}")
    weights = fit_view_weights(probs, labels, steps=options["steps"], learning_rate=options["learning_rate"])
    ones = np.ones_like(weights)
    loss = {name: float(fusion_loss(jnp.log(jnp.asarray(w, jnp.float32)), jnp.asarray(probs), jnp.asarray(labels)))
            for name, w in (("avg", ones), ("learned", weights))}
    return {"views": [[float(s), bool(f)] for s, f in inference.views(spec)], "weights": weights.tolist(),
            "num_classes": int(config.dataset.num_classes), "split": options["split"], "pixels": int(len(labels)),
            "steps": options["steps"], "loss_avg": loss["avg"], "loss_learned": loss["learned"],
            "accuracy_avg": fusion_accuracy(ones, probs, labels),
            "accuracy_learned": fusion_accuracy(weights, probs, labels)}


def save(record: dict, workdir: str) -> str:
    """Write the record as WORKDIR/fusion_weights.json (temp file, then rename) -> its path."""
    path = os.path.join(workdir, WEIGHTS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def with_learned_weights(spec: inference.InferenceSpec, workdir: str, num_classes: int) -> inference.InferenceSpec:
    """`spec` (fusion "learned") with the view weights of WORKDIR/fusion_weights.json; FileNotFoundError naming
    the file when it is missing, ConfigError when its views or classes are not the config's."""
    path = os.path.join(workdir, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no learned view weights for config.eval.inference.fusion='learned'; "
                                f"run the learn_fusion stage first (--stages=learn_fusion)")
    with open(path) as f:
        record = json.load(f)
    views = [[float(s), bool(m)] for s, m in inference.views(spec)]
    if record["views"] != views or np.shape(record["weights"]) != (len(views), num_classes):
        raise ConfigError(f"config.eval.inference: {path} holds weights for the views {record['views']} and "
                          f"{record['num_classes']} classes, the config has the views {views} and {num_classes} "
                          f"classes; run the learn_fusion stage again")
    return dataclasses.replace(spec, view_weights=tuple(tuple(float(v) for v in row) for row in record["weights"]))
