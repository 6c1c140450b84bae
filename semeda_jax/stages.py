"""The stages a config lists, each a function of (config, workdir): edge_pretrain, train, eval, predict, compile.

    edge_pretrain  g_phi on the training masks -> WORKDIR/edge_net (SEMEDA Algorithm 1, stage 1)
    train          f_theta with the loss mix; runs edge_pretrain first when the loss needs g_phi and neither
                   config.edge_net.checkpoint nor WORKDIR/edge_net holds one
    eval           the best (else latest) checkpoint on the validation split -> WORKDIR/report.{json,md} + plots
    learn_fusion   per-class view weights of the test-time ensemble on config.eval.learn_fusion.split, network
                   frozen (fusion.py, guidance paper Eqs. 9-10) -> WORKDIR/fusion_weights.json
    predict        colourised masks and entropy maps for every file Pillow reads in the folder `images=`
                   (--images), each image padded to its size bucket as eval pads (predict.py) -> WORKDIR/predictions
    export         the best (else latest) checkpoint's eval-time inference as jax.export and TF SavedModel
                   artifacts with a symbolic batch + manifest.json (export.py) -> WORKDIR/export
    compile        the train and eval steps compiled for `topology=` (--topology: v5p-32, v5e-16, v4-32, v6e-8,
                   cpu:8) from abstract shapes, no data or weights -> WORKDIR/compile_report.{json,md}: memory
                   per chip against the HBM, GFLOP, bytes, collectives, roofline (compile_report.py); with
                   --fit_batch also the largest per-chip train batch that fits
Eval and predict with config.eval.inference.fusion = "learned" read WORKDIR/fusion_weights.json.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import ml_collections

from semeda_jax import (compile_report, edge_pretrain, evaluate, export, fusion, inference, objective, optim,
                        parallel, phases, predict, reporting, train)
from semeda_jax.checkpointing import (Checkpoints, edge_net_fingerprint, edge_net_training_fingerprint,
                                      model_fingerprint, resume_changes)
from semeda_jax.data import DATASETS, build_reader, dataset_fields, pipeline
from semeda_jax.models import builder
from semeda_jax.preemption import StopSignal
from semeda_jax.validation import ConfigError, InputError, check_fields, check_pair, check_positive_ints, is_number

Log = Callable[[str], None]

# The sections and top-level fields of a config. Each section's fields are declared by the module that reads
# it (configs/common.py sets them all; a test keeps the two in step): CONFIG_FIELDS of edge_pretrain.py
# (edge_net), optim.py (optimizer), train.py (train), evaluate.py (eval), parallel.py (parallel), crf.py
# (eval.crf), fusion.py (eval.learn_fusion), export.py (export); DATA_FIELDS here (data); a dataset's builder
# (dataset, data/__init__.py); phases.FIELDS; TERMS' hyperparameters (losses, objective.py); InferenceSpec
# (eval.inference); the model's components (model, models/builder.py).
TOP_FIELDS = ("seed", "stages", "dataset", "data", "model", "mixed_precision", "parallel", "loss", "losses",
              "sampler", "edge_net", "optimizer", "train", "eval", "phases", "export")
# config.data: what the stages hand to the input pipeline (data/ imports no jax-side code, ConfigError included,
# so its sections are checked here: check_data, check_dataset).
DATA_FIELDS = ("crop_size", "scale_range", "batch_size", "mean", "std", "eval_pad_size", "eval_batch_size",
               "input_scale")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fail fast (before data, compilation or training) with a one-line ConfigError naming the key: each
    section is checked by the module that reads it (its fields, then its values); the model is traced on a
    1x33x33 input and every loss term's and the inference's outputs must be among its outputs."""
    check_fields(config, TOP_FIELDS, "config")
    objective.check_config(config)
    train.check_config(config)
    check_data(config)
    edge_pretrain.check_config(config)
    optim.check_config(config)
    parallel.check_config(config)
    evaluate.check_config(config)
    phases.check_phases(config)
    spec = inference.check_config(config)
    fusion.check_config(config)
    export.check_config(config)
    check_dataset(config.dataset)
    outputs = builder.check_config(config)
    inference.check_outputs(spec, outputs)
    for key, mix in objective.all_mixes(config).items():
        objective.check_outputs(config, outputs, mix, key)


def check_run(config: ml_collections.ConfigDict, stages: Sequence[str], workdir: str) -> None:
    """The run plan, before any work: a ConfigError when a stage would read what neither WORKDIR nor an earlier
    stage of `stages` provides (fusion "learned" without WORKDIR/fusion_weights.json or learn_fusion)."""
    fusion.check_run(config, stages, workdir)


def check_data(config: ml_collections.ConfigDict) -> None:
    """config.data: only DATA_FIELDS; global batch sizes integers >= 1, crop and pad sizes (H, W) (a crop side
    below config.model.output_stride leaves the deepest features without one full cell), scale range
    0 < min <= max, input_scale > 0."""
    check_fields(config.data, DATA_FIELDS, "config.data")
    check_positive_ints(config, ["data.batch_size", "data.eval_batch_size"])
    stride = config.model.get("output_stride") or 1
    crop = check_pair(config, "data.crop_size")
    if min(crop) < stride:
        raise ConfigError(f"config.data.crop_size: {crop} is smaller than config.model.output_stride={stride} "
                          f"(the deepest features would not hold one full cell); use a crop >= {stride} per side")
    check_pair(config, "data.eval_pad_size")
    low, high = (tuple(config.data.scale_range) + (None, None))[:2]
    if len(config.data.scale_range) != 2 or not (is_number(low) and is_number(high) and 0 < low <= high):
        raise ConfigError(f"config.data.scale_range: expected (min, max) with 0 < min <= max, "
                          f"got {tuple(config.data.scale_range)!r}")
    if not config.data.input_scale > 0:
        raise ConfigError(f"config.data.input_scale: {config.data.input_scale!r} must be > 0 (1 = full resolution)")


def check_dataset(section: ml_collections.ConfigDict) -> None:
    """config.dataset (build_readers' section): a known name, and no key set (not None) that the dataset's code
    does not read (data.dataset_fields), e.g. `num_train`, the synthetic generator's, for "voc"."""
    if section.name not in DATASETS:
        raise ConfigError(f"config.dataset.name: unknown {section.name!r}; valid: {sorted(DATASETS)}")
    valid = dataset_fields(section.name)
    for key in section:
        if key not in valid and section[key] is not None:
            raise ConfigError(f"config.dataset.{key}: no code reads this field for dataset {section.name!r}; valid "
                              f"fields: {list(valid)}")


def build_readers(config: ml_collections.ConfigDict) -> dict:
    """{"train": reader, "val": reader, "phase:<name>": reader of a phase's own data} of config.dataset
    (generating the synthetic data on first use); a val image larger than config.data.eval_pad_size fails
    here, before any training (image headers only)."""
    readers = {"train": build_reader(config.dataset, config.dataset.train_split),
               "val": build_reader(config.dataset, config.dataset.val_split)}
    for name, (dataset, split) in phases.phase_data(config).items():  # phases with their own training data
        readers[f"phase:{name}"] = build_reader(dataset, split)
    pipeline.check_pad_size(readers["val"], config.data.eval_pad_size, name="config.data.eval_pad_size")
    return readers


def _edge_net_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.edge_net.checkpoint or os.path.join(workdir, "edge_net")


def run_edge_pretrain(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    """Pre-train g_phi on the training masks into WORKDIR/edge_net, resuming an interrupted pre-training (its
    state every config.train.checkpoint_every steps and at a SIGTERM); returns its parameters."""
    num_classes, steps = config.dataset.num_classes, config.edge_net.steps
    checkpoints = Checkpoints(os.path.join(workdir, "edge_net"), keep=1, fingerprint=edge_net_fingerprint(config),
                              training=edge_net_training_fingerprint(config), accept=resume_changes(config),
                              writer=True, log=log)
    state = edge_pretrain.init_state(num_classes, steps=steps, learning_rate=config.edge_net.learning_rate,
                                     seed=config.seed)
    start = 0
    if checkpoints.latest_step() is not None:
        if "edge_f_score" in checkpoints.read_meta():  # finished: its final save holds the parameters only
            params, meta = checkpoints.restore(state["params"])
            log(f"[edge_pretrain] g_phi in {checkpoints.root} is complete (val edge F-score "
                f"{meta['edge_f_score']:.4f})")
            checkpoints.close()
            return params
        state, meta = checkpoints.restore(state)
        start = meta["step"]
        log(f"[edge_pretrain] resumed from {checkpoints.restored} at step {start}")
    readers = build_readers(config)
    labels = (batch["label"] for batch in pipeline.train_dataset(
        readers["train"], crop_size=config.data.crop_size, batch_size=config.edge_net.batch_size,
        scale_range=config.data.scale_range, input_scale=config.data.input_scale,
        seed=config.seed + 1, start_step=start).as_numpy_iterator())
    val_labels = (batch["label"] for batch in pipeline.eval_dataset(
        readers["val"], pad_size=config.data.eval_pad_size, batch_size=config.data.eval_batch_size,
        check=False).as_numpy_iterator())

    def save(step, state, **scores):  # as host arrays: every process trained the same g_phi, written once
        checkpoints.save(step, jax.device_get(state), {"step": step, "num_classes": num_classes, **scores})

    try:
        with StopSignal() as stop:
            params, scores = edge_pretrain.pretrain_edge_net(
                labels, val_labels, num_classes=num_classes, steps=steps,
                learning_rate=config.edge_net.learning_rate, seed=config.seed, log=log, state=state,
                start_step=start, save=save, save_every=config.train.checkpoint_every,
                should_stop=stop.should_stop)
        save(steps, params, **scores)
    finally:
        checkpoints.close()
    log(f"[edge_pretrain] saved g_phi to {checkpoints.root}")
    return params


def load_frozen(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    """The frozen networks the loss terms need, {"edge_net": g_phi params} or {} (objective.frozen_nets)."""
    return {"edge_net": load_edge_net(config, workdir, log)} if objective.needs_edge_net(config) else {}


def load_edge_net(config: ml_collections.ConfigDict, workdir: str, log: Log = print):
    """g_phi's parameters for the SEMEDA term: from its finished checkpoint (refused, naming the fields, when it
    was trained for another number of classes), else pre-trained (or its pre-training resumed) now."""
    path = _edge_net_dir(config, workdir)
    if os.path.isdir(os.path.join(path, "latest")):
        checkpoints = Checkpoints(path, fingerprint=edge_net_fingerprint(config), log=log)
        if "edge_f_score" in checkpoints.read_meta():
            target = objective.FROZEN_NETS["edge_net"](jax.random.PRNGKey(0), config.dataset.num_classes)
            params, meta = checkpoints.restore(target)
            checkpoints.close()
            log(f"[train] edge net from {path} (val edge F-score {meta['edge_f_score']:.4f})")
            return params
        checkpoints.close()
    if config.edge_net.checkpoint:
        raise FileNotFoundError(f"config.edge_net.checkpoint: {path} holds no finished edge-net checkpoint "
                                f"(expected {path}/latest/<step> of a completed edge_pretrain stage)")
    return run_edge_pretrain(config, workdir, log)


def run_train(config: ml_collections.ConfigDict, workdir: str, log: Log = print, **train_kwargs):
    """Train f_theta (train.train_and_evaluate) with g_phi loaded or pre-trained first; -> (state, history)."""
    readers = build_readers(config)
    return train.train_and_evaluate(config, workdir, readers, load_frozen(config, workdir, log), log,
                                    **train_kwargs)


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, log: Log = print):
    """The trained model (train.ModelState: parameters and BN statistics, no optimiser state) from
    WORKDIR/checkpoints (the best by val mIoU, else the latest; a damaged one is skipped with a warning).
    Only the model's fields are checked: training-only changes (data, optimizer, ...) do not matter here."""
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), best_metric="miou",
                              fingerprint=model_fingerprint(config), log=log)
    best = checkpoints.best_step() is not None
    if not best and checkpoints.latest_step() is None:
        raise FileNotFoundError(f"{checkpoints.root}: no checkpoint to evaluate; run the train stage first")
    state, meta = train.restore_model_state(config, checkpoints, parallel.make_mesh(config), best=best)
    kind = os.path.basename(os.path.dirname(checkpoints.restored))
    log(f"[{kind} checkpoint] step {meta['step']} from {checkpoints.restored}")
    checkpoints.close()
    return state


def inference_spec(config: ml_collections.ConfigDict, workdir: str) -> inference.InferenceSpec:
    """config.eval.inference's spec; fusion "learned" with its weights from WORKDIR/fusion_weights.json."""
    spec = inference.spec_for(config)
    if spec.fusion != "learned":
        return spec
    return fusion.with_learned_weights(spec, workdir, config.dataset.num_classes)


def predict_fn(config: ml_collections.ConfigDict, state, workdir: str):
    """The inference of config.eval.inference for `state`'s model: f(variables, images, size) -> probabilities."""
    return inference.build_predict_fn(inference_spec(config, workdir), state.apply_fn,
                                      output_stride=int(config.model.output_stride))


def run_learn_fusion(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    """Fit the learned fusion's view weights on config.eval.learn_fusion.split with the trained network frozen
    -> WORKDIR/fusion_weights.json (fusion.py); returns the saved record."""
    options = fusion.options_from_config(config)
    reader = build_reader(config.dataset, options["split"])
    pipeline.check_pad_size(reader, config.data.eval_pad_size, name="config.data.eval_pad_size")
    state = restore_for_inference(config, workdir, log)
    record = fusion.learn_view_weights(state, reader, config, log)
    if jax.process_index() == 0:
        path = fusion.save(record, workdir)
        log(f"[learn_fusion] cross-entropy {record['loss_avg']:.4f} (avg) -> {record['loss_learned']:.4f} "
            f"(learned), pixel accuracy {record['accuracy_avg']:.4f} -> {record['accuracy_learned']:.4f}; "
            f"weights written to {path}")
    return record


def run_eval(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    readers = build_readers(config)
    state = restore_for_inference(config, workdir, log)
    report = evaluate.evaluate(state, readers["val"], config, num_samples=config.eval.num_plot_images,
                               num_worst=config.eval.get("num_worst_images") or 0,
                               class_names=readers["val"].class_names, spec=inference_spec(config, workdir))
    if jax.process_index() == 0:
        path = reporting.write_report(report, workdir, title=f"{config.model.name}, loss {config.loss}")
        log(f"[eval] mIoU {report['miou']:.4f}  mean F1 {report['mean_f1']:.4f}  E-measure {report['emeasure']:.4f}  "
            f"boundary IoU {report['boundary_iou']:.4f}  boundary F {report['boundary_fscore']:.4f}")
        log(f"[eval] report written to {path}")
    return report


def run_predict(config: ml_collections.ConfigDict, workdir: str, log: Log = print, *, images: str) -> list[str]:
    """Masks and entropy maps of every image of the folder `images` with the inference of config.eval.inference
    -> WORKDIR/predictions (predict.predict_folder); returns the mask paths. A missing or empty folder fails
    before the checkpoint loads; files Pillow cannot read end it, after the others are predicted, with an
    InputError naming them; SIGTERM stops it before the next image (predict.Preempted)."""
    predict.list_images(images)
    state = restore_for_inference(config, workdir, log)
    out_dir = os.path.join(workdir, "predictions")
    written, skipped = predict.predict_folder(state, images, out_dir, mean=config.data.mean, std=config.data.std,
                                              input_scale=config.data.input_scale, log=log,
                                              predict_fn=predict_fn(config, state, workdir))
    if skipped:
        names = ", ".join(os.path.basename(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        raise InputError(f"--images: {len(skipped)} of {len(written) + len(skipped)} files in {images} "
                         f"could not be read and were skipped ({names}); the other masks are in {out_dir}")
    return written


def run_export(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict:
    """The inference of config.eval.inference on the best (else latest) checkpoint -> WORKDIR/export (jax.export
    artifact, SavedModel, manifest.json; export.py) -> the manifest; process 0 writes, the others return {}."""
    state = restore_for_inference(config, workdir, log)  # on every process (a collective read)
    if jax.process_index() != 0:
        return {}
    class_names = build_reader(config.dataset, config.dataset.val_split).class_names
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return export.export_model(predict_fn(config, state, workdir), variables, config, inference_spec(config, workdir),
                               os.path.join(workdir, "export"), class_names=class_names, log=log)


def run_compile(config: ml_collections.ConfigDict, workdir: str, log: Log = print, *, topology: str | None,
                fit_batch: bool = False) -> dict:
    """Will it fit? The train and eval steps compiled for `topology` without data or weights ->
    WORKDIR/compile_report.{json,md} (compile_report.py); a step that does not fit is a one-line ConfigError.
    `fit_batch`: also the largest per-chip train batch that fits the chip's HBM."""
    if not topology:
        raise ConfigError("--topology: the compile stage needs a topology, e.g. v5p-32, v5e-16, v4-32, v6e-8 or "
                          "cpu:8")
    report = compile_report.compile_report(config, topology, log, fit_batch=fit_batch)
    if jax.process_index() == 0:
        path = compile_report.write_report(report, workdir, f"{config.model.name}, loss {config.loss}")
        log(f"[compile] report written to {path}")
    return report


STAGES = {"edge_pretrain": run_edge_pretrain, "train": run_train, "learn_fusion": run_learn_fusion,
          "eval": run_eval, "predict": run_predict, "export": run_export, "compile": run_compile}
