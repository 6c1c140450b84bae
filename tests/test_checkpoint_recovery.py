"""Checkpoints on disk that were damaged, left half-written or written by other settings, in process (no
training): each failure is named for what it is (incomplete, damaged, another model, other training
settings), a damaged checkpoint is skipped for the newest readable one with one warning, a best record
interrupted by a kill is completed by the next writer, and training-only changes are refused on resume unless
accepted, never on inference."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from configs import demo
from semeda_jax import checkpointing
from semeda_jax.checkpointing import CheckpointError, Checkpoints
from semeda_jax.validation import ConfigError

MODEL = {"model.base_width": 4}
TRAINING = {"data.batch_size": 4, "optimizer.learning_rate": 0.02}


def state_of(step):
    """A state big enough that orbax writes its array to a file of its own."""
    return {"w": np.random.default_rng(step).random((64, 64)).astype(np.float32), "step": np.array(step, np.int32)}


def saved(root, steps, best=(), keep=3, training=TRAINING):
    """A checkpoint root with `steps` saved (miou = step / 100 for those in `best`)."""
    checkpoints = Checkpoints(str(root), keep=keep, best_metric="miou", fingerprint=MODEL, training=training)
    for step in steps:
        checkpoints.save(step, state_of(step), {"step": step},
                         metrics={"miou": step / 100} if step in best else None)
    checkpoints.close()
    return str(root)


def damage(folder, how):
    """Truncate or delete the biggest array file of a checkpoint folder, or remove a part of it."""
    if how in ("state", "meta"):
        shutil.rmtree(os.path.join(folder, how))
        return
    if how == "index":
        os.remove(os.path.join(folder, "state", "_METADATA"))
        return
    biggest = max(glob.glob(os.path.join(folder, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)
    if how == "truncate":
        os.truncate(biggest, os.path.getsize(biggest) // 2)
    else:
        os.remove(biggest)


def reader(root, **kwargs):
    lines = []
    return Checkpoints(root, best_metric="miou", fingerprint=MODEL, log=lines.append, **kwargs), lines


@pytest.mark.parametrize("how,problem", [("truncate", "is damaged ("), ("delete", "is damaged ("),
                                         ("state", "is incomplete (no state)"),
                                         ("meta", "is incomplete (no meta/metadata)"),
                                         ("index", "is incomplete (no state/_METADATA)")])
def test_damaged_latest_falls_back_to_the_next_newest(tmp_path, how, problem):
    root = saved(tmp_path, [2, 4, 6])
    damage(os.path.join(root, "latest", "6"), how)
    checkpoints, lines = reader(root)
    state, meta = checkpoints.restore(state_of(0))
    assert meta["step"] == 4 and checkpoints.restored == os.path.join(root, "latest", "4")
    np.testing.assert_array_equal(state["w"], state_of(4)["w"])
    assert len(lines) == 1 and lines[0].startswith(f"[checkpoint] warning: {root}/latest/6 {problem}")
    assert lines[0].endswith(f"; restored {root}/latest/4 instead") and "\n" not in lines[0]


def test_damaged_best_falls_back_to_latest_and_none_readable_is_one_error(tmp_path):
    root = saved(tmp_path, [2, 4, 6], best=(4,), keep=1)
    damage(os.path.join(root, "best", "4"), "truncate")
    checkpoints, lines = reader(root)
    _, meta = checkpoints.restore(state_of(0), best=True)
    assert meta["step"] == 6 and len(lines) == 1 and f"{root}/best/4 is damaged" in lines[0]
    damage(os.path.join(root, "latest", "6"), "delete")
    with pytest.raises(CheckpointError) as error:
        reader(root)[0].restore(state_of(0))
    assert str(error.value).startswith(f"{root}: no checkpoint can be read ({root}/latest/6 is damaged (")
    assert f"{root}/best/4 is damaged (" in str(error.value) and "\n" not in str(error.value)


def test_another_model_is_named_not_skipped(tmp_path):
    root = saved(tmp_path, [2, 4])
    with pytest.raises(CheckpointError) as error:
        reader(root)[0].restore({"w": np.zeros((64, 32), np.float32), "step": np.array(0, np.int32)})
    assert str(error.value) == (f"{root}/latest/4: the checkpoint's arrays do not fit this config's model and "
                                f"optimiser (1 differ, e.g. w: checkpoint (64, 64), config (64, 32)); use another "
                                f"workdir, or the config it was trained with")
    with pytest.raises(CheckpointError, match=r"another model, refusing to load it \(model.base_width: checkpoint "
                                              r"4, config 8\)"):
        Checkpoints(root, fingerprint={"model.base_width": 8}).restore(state_of(0))


def test_kill_during_the_best_copy_keeps_the_best_record(tmp_path):
    """A kill after latest/6 was saved, while its copy to best/ was being written: the next writer removes the
    half-written folder and completes the copy, so a later, worse step does not become the best."""
    root = saved(tmp_path, [6], best=(6,))
    os.remove(os.path.join(root, "best.json"))
    os.rename(os.path.join(root, "best", "6"), os.path.join(root, "best", "6.orbax-checkpoint-tmp"))
    lines = []
    checkpoints = Checkpoints(root, keep=3, best_metric="miou", writer=True, log=lines.append)
    assert lines == [f"[checkpoint] removed {root}/best/6.orbax-checkpoint-tmp, left unfinished by a stopped run"]
    assert checkpoints.best_step() == 6 and sorted(os.listdir(os.path.join(root, "best"))) == ["6"]
    checkpoints.save(12, state_of(12), {"step": 12}, metrics={"miou": 0.03})  # worse than step 6's 0.06
    assert checkpoints.best_step() == 6
    with open(os.path.join(root, "best.json")) as f:
        assert json.load(f) == {"step": 6, "metric": "miou", "value": 0.06}
    checkpoints.save(18, state_of(18), {"step": 18}, metrics={"miou": 0.18})
    assert checkpoints.best_step() == 18 and os.listdir(os.path.join(root, "best")) == ["18"]
    _, meta = checkpoints.restore(state_of(0), best=True)
    assert meta["step"] == 18 and checkpoints.restored == os.path.join(root, "best", "18")


def test_training_changes_are_refused_unless_accepted(tmp_path):
    root = saved(tmp_path, [2])
    changed = {**TRAINING, "data.batch_size": 8}
    with pytest.raises(CheckpointError) as error:
        Checkpoints(root, fingerprint=MODEL, training=changed).restore(state_of(0))
    assert str(error.value) == (f"{root}/latest/2: the run was trained with other settings, refusing to resume "
                                f"it (data.batch_size: checkpoint 4, config 8); use the config it was trained "
                                f"with, or accept the changes with --config.train.resume_changes=data.batch_size")
    lines = []
    Checkpoints(root, fingerprint=MODEL, training=changed, accept=("data.batch_size",),
                log=lines.append).restore(state_of(0))
    assert lines == [("[checkpoint] resuming with changes accepted by config.train.resume_changes: "
                      "data.batch_size: checkpoint 4, config 8")]
    reader(root)[0].restore(state_of(0))  # inference checks the model only
    with pytest.raises(ConfigError, match=r"config.train.resume_changes: \['data.batch'\] are not fields a "
                                          r"resume checks; valid: \['data.batch_size', "):
        Checkpoints(root, training=changed, accept=("data.batch",))


def test_checkpoint_of_an_older_version_resumes_with_one_warning(tmp_path):
    root = saved(tmp_path, [2, 4], training=None)
    lines = []
    checkpoints = Checkpoints(root, fingerprint=MODEL, training=TRAINING, log=lines.append)
    checkpoints.restore(state_of(0))
    checkpoints.restore(state_of(0), 2)
    assert lines == [(f"[checkpoint] warning: {root}/latest/4 records no training settings (written by an older "
                      f"version): resuming without checking that data, optimizer, loss and schedule are unchanged")]


def test_training_fingerprint_covers_what_training_does_only():
    config = demo.get_config("smoke")
    fields = checkpointing.training_fingerprint(config)
    for name in ("data.batch_size", "optimizer.learning_rate", "losses.semeda.lambdas", "seed", "train.steps",
                 "train.grad_accum_steps", "loss", "edge_net.steps", "dataset.num_train", "phases.order"):
        assert name in fields, name
    for name in ("train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
                 "data.eval_batch_size", "dataset.root", "losses.bal.sigma", "model.depth"):
        assert name not in fields, name
    config.loss = "ce"
    assert "edge_net.steps" not in checkpointing.training_fingerprint(config)
    assert "losses.ce.class_weights" not in checkpointing.training_fingerprint(config)  # unset: not recorded
    assert not any(name.startswith("sampler") for name in checkpointing.training_fingerprint(config))
    config.sampler.name = "ohem"
    fields = checkpointing.training_fingerprint(config)
    assert fields["sampler.name"] == "ohem" and "sampler.ohem.threshold" in fields


def test_model_fingerprint_covers_the_parameter_tree_only():
    # A field that leaves the tree as it is (remat: same parameters) must not make older or differently
    # rematerialised checkpoints unloadable; one that changes it (depth) must be recorded.
    config = demo.get_config("smoke")
    fields = checkpointing.model_fingerprint(config)
    assert "model.depth" in fields and fields["dataset.num_classes"] == config.dataset.num_classes
    for name in checkpointing.MODEL_FIELDS_NOT_IN_TREE:
        assert f"model.{name}" not in fields, name
    config.model.remat = "blocks"
    assert checkpointing.model_fingerprint(config) == fields


def test_best_without_its_record_is_found_by_its_meta(tmp_path):
    """best/ of an older version (no best.json), and a kill between the copy of a new best and its record."""
    root = saved(tmp_path, [2, 4], best=(2, 4))
    os.remove(os.path.join(root, "best.json"))
    assert Checkpoints(root, best_metric="miou").best_step() == 4
    shutil.copytree(os.path.join(root, "latest", "2"), os.path.join(root, "best", "2"))  # the older, worse one
    with open(os.path.join(root, "best.json"), "w") as f:
        json.dump({"step": 2, "metric": "miou", "value": 0.02}, f)
    checkpoints = Checkpoints(root, best_metric="miou", writer=True, log=lambda line: None)
    assert checkpoints.best_step() == 4 and os.listdir(os.path.join(root, "best")) == ["4"]
