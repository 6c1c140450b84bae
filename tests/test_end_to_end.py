"""End to end on the tiny `demo.py:smoke` config: train, checkpoint, resume bit for bit, report, predict."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fake_datasets import smoke_config
from semeda_jax import checkpointing, data, evaluate, inference, predict, preemption, stages, train
from semeda_jax.data import generate_scene

pytestmark = pytest.mark.usefixtures("float32_jax")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One full smoke run (edge_pretrain -> train -> eval) shared by the tests that only read its outputs."""
    jax.config.update("jax_enable_x64", False)
    workdir = str(tmp_path_factory.mktemp("run"))
    config = smoke_config(data_root, **{"train.steps": 16, "train.log_every": 4, "train.eval_every": 8})
    steps, jit_train_step = [], train.jit_train_step
    train.jit_train_step = lambda *args, **kwargs: steps.append(jit_train_step(*args, **kwargs)) or steps[-1]
    try:
        _, history = stages.run_train(config, workdir, log=lambda line: None)
    finally:
        train.jit_train_step = jit_train_step
    report = stages.run_eval(config, workdir, log=lambda line: None)
    jax.config.update("jax_enable_x64", True)
    return config, workdir, history, report, steps


def test_training_decreases_the_loss(trained):
    _, _, history, _, _ = trained
    losses = [metrics["loss"] for _, metrics in history]
    assert [step for step, _ in history] == [4, 8, 12, 16]
    # generator v2 scenes (more void, more occlusion): 3.55 -> 3.32 in 16 smoke steps at seed 0
    assert losses[-1] < 0.95 * losses[0] and losses == sorted(losses, reverse=True), losses
    assert {"loss_ce", "loss_semeda", "learning_rate", "grad_norm"} <= set(history[0][1])


def test_the_train_step_compiles_once_across_steps_checkpoints_and_evals(trained):
    """16 steps with 4 checkpoints and 2 periodic evaluations: one jitted step, traced and compiled once (a
    changed shape, dtype, sharding or Python constant between steps would add a cache entry)."""
    config, _, _, _, steps = trained
    assert config.train.checkpoint_every < config.train.eval_every < config.train.steps
    assert len(steps) == 1 and steps[0]._cache_size() == 1


def test_checkpoints_and_edge_net_are_written(trained):
    _, workdir, _, _, _ = trained
    assert max(int(step) for step in os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == 16
    assert os.listdir(os.path.join(workdir, "checkpoints", "best"))
    assert os.listdir(os.path.join(workdir, "edge_net", "latest"))


def test_report_files_have_the_expected_keys(trained):
    config, workdir, _, report, _ = trained
    with open(os.path.join(workdir, "report.json")) as f:
        saved = json.load(f)
    assert {"miou", "pixel_acc", "mean_acc", "mean_f1", "emeasure", "iou", "f1", "emeasure_per_class",
            "trimap", "boundary_iou", "boundary_fscore", "boundary_iou_per_class", "boundary_fscore_per_class",
            "boundary", "confusion_matrix", "worst_images"} <= set(saved)
    assert saved["boundary_iou"] == pytest.approx(report["boundary_iou"]) and 0 <= saved["boundary_fscore"] <= 1
    assert list(saved["boundary_iou_per_class"]) == list(saved["iou"]) == list(data.synthetic_class_names(
        config.dataset.num_classes))
    # num_worst_images 8 of the 6 val images: every image in each list, lowest first.
    for key in ("miou", "boundary_iou"):
        scores = [entry[key] for entry in saved["worst_images"][key]]
        assert len(scores) == 6 and scores == sorted(scores)
    assert saved["trimap"]["widths"] == list(config.eval.trimap_widths)
    assert len(saved["trimap"]["boundary_miou"]) == len(config.eval.trimap_widths)
    assert np.asarray(saved["confusion_matrix"]).shape == (config.dataset.num_classes,) * 2
    # Every valid pixel of the 6 val images is counted once.
    assert np.asarray(saved["confusion_matrix"]).sum() > 0.5 * 6 * 40 * 48
    assert saved["miou"] == pytest.approx(report["miou"])
    for name in ("report.md", "trimap.png", "confusion.png", "samples.png", "worst_miou.png", "worst_boundary.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0


def test_predict_writes_one_mask_per_image(trained, tmp_path):
    config, workdir, _, _, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    from PIL import Image
    for i, size in enumerate([(40, 48), (33, 57), (64, 40)]):
        Image.fromarray(generate_scene(rng, size, config.dataset.num_classes)[0]).save(images / f"im{i}.jpg")
    state = stages.restore_for_inference(config, workdir, log=lambda line: None)
    written, skipped = predict.predict_folder(state, str(images), str(tmp_path / "out"), mean=config.data.mean,
                                              std=config.data.std, log=lambda line: None)
    assert [os.path.basename(p) for p in written] == ["im0.jpg.png", "im1.jpg.png", "im2.jpg.png"] and not skipped
    with Image.open(written[1]) as mask:
        assert mask.mode == "P" and mask.size == (57, 33)
        assert np.asarray(mask).max() < config.dataset.num_classes
    assert sorted(os.listdir(tmp_path / "out")) == ["entropy", "im0.jpg.png", "im1.jpg.png", "im2.jpg.png"]
    assert sorted(os.listdir(tmp_path / "out" / "entropy")) == ["im0.jpg.png", "im1.jpg.png", "im2.jpg.png"]

    # At input_scale 0.5 the network sees 16x28 (33x57 halved, rounded) and the mask is upsampled to 33x57.
    one = tmp_path / "one"
    one.mkdir()
    os.replace(images / "im1.jpg", one / "im1.jpg")
    half, _ = predict.predict_folder(state, str(one), str(tmp_path / "half"), mean=config.data.mean,
                                     std=config.data.std, input_scale=0.5, log=lambda line: None)
    with Image.open(one / "im1.jpg") as image:
        small = np.asarray(image.convert("RGB").resize((28, 16), Image.BILINEAR), np.float32)
    normalised = (small - np.asarray(config.data.mean, np.float32)) / np.asarray(config.data.std, np.float32)
    probs = inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn)(
        {"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(normalised[None]), (33, 57))
    assert probs.shape == (1, 33, 57, config.dataset.num_classes)
    with Image.open(half[0]) as mask:  # the same up to argmax ties that jit's float rounding may flip
        assert np.mean(np.asarray(mask) == np.asarray(probs[0].argmax(-1))) > 0.99


def test_interrupted_run_resumes_bitwise(trained, tmp_path):
    """The shared run (16 steps, evaluations at 8 and 16) against the same run stopped after step 5 and resumed;
    same config and g_phi, so the compiled steps come from the compilation cache."""
    config, workdir, _, _, _ = trained
    config = config.copy_and_resolve_references()
    config.edge_net.checkpoint = os.path.join(workdir, "edge_net")
    stages.run_train(config, str(tmp_path / "resumed"), log=lambda line: None, stop_after=5)
    resumed, _ = stages.run_train(config, str(tmp_path / "resumed"), log=lambda line: None)
    straight = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints")).restore(resumed)[0]
    assert int(resumed.step) == int(straight.step) == 16
    for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.batch_stats, straight.opt_state)),
                    jax.tree_util.tree_leaves((resumed.params, resumed.batch_stats, resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_during_a_periodic_eval_checkpoints_its_step(trained, tmp_path, monkeypatch):
    """A SIGTERM at the first batch of the evaluation of step 8: the pass stops, step 8 is checkpointed (no
    mIoU, so not a best candidate) and the run raises Preempted."""
    config, workdir, _, _, _ = trained
    config = config.copy_and_resolve_references()
    config.edge_net.checkpoint = os.path.join(workdir, "edge_net")
    eval_batches = evaluate.eval_batches

    def signal_after_the_first_batch(*args, **kwargs):
        batches = eval_batches(*args, **kwargs)
        yield next(batches)
        signal.raise_signal(signal.SIGTERM)
        yield from batches

    monkeypatch.setattr(evaluate, "eval_batches", signal_after_the_first_batch)
    with pytest.raises(preemption.Preempted, match="checkpoint saved at step 8;"):
        stages.run_train(config, str(tmp_path / "run"), log=lambda line: None)
    checkpoints = checkpointing.Checkpoints(str(tmp_path / "run" / "checkpoints"), best_metric="miou")
    assert checkpoints.latest_step() == 8 and checkpoints.best_step() is None
    checkpoints.close()
