"""The stages a config lists, each a function of (config, workdir): edge_pretrain, train, eval, predict.

    edge_pretrain  g_phi on the training masks -> WORKDIR/edge_net (SEMEDA Algorithm 1, stage 1)
    train          f_theta with the loss mix; runs edge_pretrain first when the loss needs g_phi and neither
                   config.edge_net.checkpoint nor WORKDIR/edge_net holds one
    eval           the best (else latest) checkpoint on the validation split -> WORKDIR/report.{json,md} + plots
    predict        colourised masks and entropy maps for every image of a folder -> WORKDIR/predictions
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from semeda_jax import edge_pretrain, evaluate, objective, parallel, reporting, train
from semeda_jax.checkpointing import Checkpoints
from semeda_jax.data import DATASETS, build_reader, pipeline
from semeda_jax.losses import init_edge_net
from semeda_jax.validation import ConfigError

Log = Callable[[str], None]


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fail fast (before data, compilation or training) with a one-line ConfigError on a bad loss mix, dataset
    name, model setting (the model is traced on a 1x33x33 input), BN group, report option, input scale or
    weights path."""
    objective.loss_terms(config)
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    if config.dataset.name not in DATASETS:
        raise ConfigError(f"config.dataset.name: unknown {config.dataset.name!r}; valid: {sorted(DATASETS)}")
    if config.eval.get("f1_groups", "") not in evaluate.F1_GROUPS:
        raise ConfigError(f"config.eval.f1_groups: unknown {config.eval.f1_groups!r}; "
                          f"valid: {sorted(evaluate.F1_GROUPS)}")
    group = config.model.get("bn_group_size") or 0
    micro_batch = config.data.batch_size // max(int(config.train.grad_accum_steps), 1)
    if group < 0 or (group and micro_batch % group):
        raise ConfigError(f"config.model.bn_group_size: {group} must be >= 0 and divide the (micro-)batch of "
                          f"{micro_batch} images")
    key = jax.random.PRNGKey(0)
    try:
        jax.eval_shape(functools.partial(model.init, train=False), {"params": key, "dropout": key},
                       jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None
    if not config.data.input_scale > 0:
        raise ConfigError(f"config.data.input_scale: {config.data.input_scale!r} must be > 0 (1 = full resolution)")
    pretrained = config.model.get("pretrained")
    if pretrained and not (os.path.isfile(os.path.expanduser(pretrained))
                           and pretrained.endswith((".safetensors", ".npz"))):
        raise ConfigError(f"config.model.pretrained: {pretrained} is not a .safetensors or .npz file (expected "
                          f"a state dict of the {config.model.get('backbone', 'resnet')} backbone)")


def build_readers(config: ml_collections.ConfigDict) -> dict:
    """{"train": reader, "val": reader} of config.dataset (generating the synthetic data on first use)."""
    return {"train": build_reader(config.dataset, config.dataset.train_split),
            "val": build_reader(config.dataset, config.dataset.val_split)}


def _edge_net_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.edge_net.checkpoint or os.path.join(workdir, "edge_net")


def run_edge_pretrain(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    """Pre-train g_phi on the training masks and save it to WORKDIR/edge_net; returns its parameters."""
    readers = build_readers(config)
    num_classes = config.dataset.num_classes
    labels = (batch["label"] for batch in pipeline.train_dataset(
        readers["train"], crop_size=config.data.crop_size, batch_size=config.edge_net.batch_size,
        scale_range=config.data.scale_range, input_scale=config.data.input_scale,
        seed=config.seed + 1).as_numpy_iterator())
    val_labels = (batch["label"] for batch in pipeline.eval_dataset(
        readers["val"], pad_size=config.data.eval_pad_size, batch_size=config.data.eval_batch_size,
        check=False).as_numpy_iterator())
    params, scores = edge_pretrain.pretrain_edge_net(
        labels, val_labels, num_classes=num_classes, steps=config.edge_net.steps,
        learning_rate=config.edge_net.learning_rate, seed=config.seed, log=log)
    checkpoints = Checkpoints(os.path.join(workdir, "edge_net"), keep=1)
    # As host NumPy arrays: every process trained the same g_phi, orbax writes it once (from process 0).
    checkpoints.save(config.edge_net.steps, jax.device_get(params), {"num_classes": num_classes, **scores})
    checkpoints.close()
    log(f"[edge_pretrain] saved g_phi to {checkpoints.root}")
    return params


def load_edge_net(config: ml_collections.ConfigDict, workdir: str, log: Log = print):
    """g_phi's parameters for the SEMEDA term: from its checkpoint, else pre-trained now; None if unused."""
    if not objective.needs_edge_net(config):
        return None
    path = _edge_net_dir(config, workdir)
    if os.path.isdir(os.path.join(path, "latest")):
        checkpoints = Checkpoints(path)
        if checkpoints.latest_step() is not None:
            target = init_edge_net(jax.random.PRNGKey(0), config.dataset.num_classes)
            params, meta = checkpoints.restore(target)
            log(f"[train] edge net from {path} (val edge F-score {meta.get('edge_f_score', float('nan')):.4f})")
            return params
    if config.edge_net.checkpoint:
        raise FileNotFoundError(f"config.edge_net.checkpoint: {path} holds no edge-net checkpoint "
                                f"(expected {path}/latest/<step>)")
    return run_edge_pretrain(config, workdir, log)


def run_train(config: ml_collections.ConfigDict, workdir: str, log: Log = print, **train_kwargs):
    """Train f_theta (train.train_and_evaluate) with g_phi loaded or pre-trained first; -> (state, history)."""
    readers = build_readers(config)
    return train.train_and_evaluate(config, workdir, readers, load_edge_net(config, workdir, log), log,
                                    **train_kwargs)


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, log: Log = print):
    """The trained state from WORKDIR/checkpoints (the best by val mIoU, else the latest)."""
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    state = train.create_train_state(config, model, jax.random.PRNGKey(config.seed), parallel.make_mesh(config))
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), best_metric="miou")
    best = checkpoints.best_step() is not None
    if not best and checkpoints.latest_step() is None:
        raise FileNotFoundError(f"{checkpoints.root}: no checkpoint to evaluate; run the train stage first")
    state, meta = checkpoints.restore(state, best=best)
    log(f"[{'best' if best else 'latest'} checkpoint] step {meta['step']} from {checkpoints.root}")
    return state


def run_eval(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    readers = build_readers(config)
    state = restore_for_inference(config, workdir, log)
    report = evaluate.evaluate(state, readers["val"], config, num_samples=config.eval.num_plot_images,
                               class_names=readers["val"].class_names)
    if jax.process_index() == 0:
        path = reporting.write_report(report, workdir, title=f"{config.model.name}, loss {config.loss}")
        log(f"[eval] mIoU {report['miou']:.4f}  mean F1 {report['mean_f1']:.4f}  E-measure {report['emeasure']:.4f}")
        log(f"[eval] report written to {path}")
    return report


STAGES = {"edge_pretrain": run_edge_pretrain, "train": run_train, "eval": run_eval}
