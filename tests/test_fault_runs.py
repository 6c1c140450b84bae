"""Faults during real runs of configs/demo.py:smoke through the command line (and in process where that is
cheaper): a diverged run stops with one line and keeps only finite checkpoints, a checkpoint of another model
is refused by name, a busy workdir is refused, SIGTERM at start-up or during eval exits 0, unreadable predict
inputs are skipped then reported, a full disk stops the run at the failed save with the earlier
checkpoints intact, a damaged checkpoint is skipped for the newest readable one, changed training settings
are refused on resume (not on eval) unless accepted, g_phi of another class count is refused by name, and
SIGTERM during g_phi pre-training stops it in seconds with a checkpoint it resumes from bit for bit."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from configs import demo
from semeda_jax import checkpointing, stages, workdir as workdir_lib
from semeda_jax.data import generate_scene

import processes
from test_main import assert_one_line_error, run_main

pytestmark = pytest.mark.usefixtures("float32_jax")

# Divergence: lr 1e4 with no warm-up turns the smoke run's state non-finite within a few steps; every step is
# logged, evaluated (a best candidate) and saved until then.
DIVERGING = {"loss": "ce", "optimizer.learning_rate": 1e4, "optimizer.warmup_steps": 0, "train.steps": 24,
             "train.log_every": 1, "train.eval_every": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 3}


def flags(data_root, overrides):
    return [f"--config.dataset.root={data_root}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def smoke_config(data_root, overrides):
    config = demo.get_config("smoke")
    config.dataset.root = str(data_root)
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    stages.build_readers(smoke_config(root, {}))  # generate it once, before any subprocess reads it
    return root


@pytest.fixture(scope="module")
def diverged(data_root, tmp_path_factory):
    """A run that diverges: (its workdir, the CLI result)."""
    workdir = tmp_path_factory.mktemp("diverged")
    return workdir, run_main(workdir, "--stages=train", *flags(data_root, DIVERGING))


def test_divergence_stops_the_run_and_keeps_finite_checkpoints(diverged, data_root):
    workdir, result = diverged
    # Stopped at the first log (loss terms named) or save (state counted) after the state went non-finite.
    assert_one_line_error(result, "training diverged by step ", "non-finite", "the last finite checkpoint, step ")
    assert "non-finite loss nan" in result.stderr or "arrays of the state are non-finite" in result.stderr
    step = int(result.stderr.split("training diverged by step ")[1].split(":")[0])
    assert step < DIVERGING["train.steps"]
    config = smoke_config(data_root, DIVERGING)
    checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"), best_metric="miou")
    saved = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints", "latest")) if n.isdigit())
    assert saved and max(saved) < step and checkpoints.best_step() is not None
    assert str(max(saved)) in result.stderr.split("the last finite checkpoint, step ")[1].split(",")[0]
    model = stages.restore_for_inference(config, str(workdir), log=lambda line: None)
    target = {"params": model.params, "batch_stats": model.batch_stats}
    for saved_step in saved:
        state, _ = checkpoints.restore(target, saved_step, partial=True)
        assert checkpointing.count_non_finite(state)[0] == 0, saved_step
    state, _ = checkpoints.restore(target, best=True, partial=True)
    assert checkpointing.count_non_finite(state)[0] == 0
    checkpoints.close()


def test_non_finite_state_is_never_saved(tmp_path):
    checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=2, best_metric="miou")
    good = {"w": np.ones(3, np.float32), "step": np.int32(1)}
    checkpoints.save(1, good, {"step": 1}, metrics={"miou": 0.1})
    with pytest.raises(checkpointing.NonFiniteError, match=r"training diverged by step 2: 1 of 1 arrays of the state are non-finite, "
                                                           r"not saved; the last finite checkpoint, step 1"):
        checkpoints.save(2, {"w": np.array([1, np.nan, 2], np.float32), "step": np.int32(2)}, {"step": 2},
                         metrics={"miou": 0.9})
    assert checkpoints.latest_step() == 1 and checkpoints.best_step() == 1
    with pytest.raises(checkpointing.NonFiniteError) as error:
        checkpoints.check_finite(12, {"loss": float("nan"), "loss_ce": float("nan"), "grad_norm": float("inf"),
                                      "learning_rate": 1e4})
    assert str(error.value) == (f"training diverged by step 12: non-finite loss nan, loss_ce nan, grad_norm inf; "
                                f"the last finite checkpoint, step 1, stays in {tmp_path}/latest (lower "
                                f"optimizer.learning_rate, or check the data)")
    checkpoints.check_finite(13, {"loss": 0.5, "grad_norm": 2.0})
    checkpoints.close()


def test_resume_with_another_model_is_refused(diverged, data_root):
    workdir, _ = diverged
    other = smoke_config(data_root, {**DIVERGING, "model.base_width": 8, "model.output_stride": 8})
    with pytest.raises(checkpointing.CheckpointError) as error:
        stages.run_train(other, str(workdir), log=lambda line: None)
    message = str(error.value)
    assert "the checkpoint is of another model, refusing to load it" in message and "\n" not in message
    assert "model.base_width: checkpoint 4, config 8" in message
    assert "model.output_stride: checkpoint 16, config 8" in message


def test_second_training_on_a_workdir_is_refused_eval_runs_beside_it(diverged, data_root):
    workdir, _ = diverged
    with workdir_lib.WorkdirLock(str(workdir)):  # a training holds the workdir
        refused = run_main(workdir, "--stages=train", *flags(data_root, DIVERGING))
        evaluated = run_main(workdir, "--stages=eval", *flags(data_root, DIVERGING))
    assert_one_line_error(refused, f"--workdir: {workdir} is in use by another run (pid {os.getpid()}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "[eval] mIoU" in evaluated.stdout
    # A holder killed with SIGKILL leaves its lock file, not its lock.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from semeda_jax.workdir import WorkdirLock; "
                               f"WorkdirLock({str(workdir)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=processes.REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    workdir_lib.WorkdirLock(str(workdir)).acquire().release()


def test_unreadable_predict_input_is_skipped_then_reported(diverged, data_root, tmp_path):
    workdir, _ = diverged
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(generate_scene(np.random.default_rng(0), (40, 48), 8)[0]).save(images / "good.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_main(workdir, f"--images={images}", *flags(data_root, DIVERGING))
    assert_one_line_error(result, f"--images: 1 of 2 files in {images} could not be read and were skipped "
                                  f"(broken.png)")
    assert f"[predict] warning: skipped {images}/broken.png: cannot read the image" in result.stdout
    assert os.listdir(workdir / "predictions") == ["good.jpg.png", "entropy"] or sorted(
        os.listdir(workdir / "predictions")) == ["entropy", "good.jpg.png"]


def wait_for_line(proc, fragment, timeout=240):
    """Read `proc`'s output until a line holds `fragment` -> the output so far."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if fragment in line:
            return "".join(seen)
    raise AssertionError(f"no line with {fragment!r}: {''.join(seen)[-3000:]}")


def test_sigterm_during_eval_and_at_start_up_exit_0(diverged, data_root, tmp_path):
    workdir, _ = diverged
    command = [sys.executable, "-m", "semeda_jax.main", "--config=configs/demo.py:smoke", *flags(data_root, DIVERGING)]
    with processes.killed_on_exit(processes.start([*command, f"--workdir={workdir}", "--stages=eval"])) as proc:
        wait_for_line(proc, "checkpoint] step")  # the eval stage has restored its state: now it evaluates
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output

    fresh = tmp_path / "fresh"
    with processes.killed_on_exit(processes.start([*command, f"--workdir={fresh}", "--stages=train"])) as proc:
        time.sleep(1.0)  # imports are under way
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0 and "preempted (SIGTERM)" in output and "Traceback" not in output, output[-3000:]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs mounted at tmp_path/disk (root only; the test skips where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_stops_at_the_failed_save(small_disk, data_root):
    config = smoke_config(data_root, {"loss": "ce", "train.steps": 12, "train.log_every": 2,
                                      "train.eval_every": 100, "train.checkpoint_every": 2})
    workdir = str(small_disk / "run")
    stages.run_train(config, workdir, log=lambda line: None, stop_after=2)
    free = workdir_lib.free_bytes(workdir)
    with open(small_disk / "filler", "wb") as f:  # leave 16 KiB: less than a checkpoint
        f.write(b"\0" * (free - 16384))
    lines = []
    with pytest.raises(checkpointing.CheckpointError) as error:
        stages.run_train(config, workdir, log=lines.append)
    message = str(error.value)
    assert message.startswith(f"{workdir}/checkpoints: writing the checkpoint of step 4 failed (no space left on "
                              f"device); "), message
    assert "bytes free there; the earlier checkpoints are kept (latest: steps [2])" in message
    assert not any("step 6" in line for line in lines)  # training did not go on after the failed save
    os.remove(small_disk / "filler")
    checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"))
    assert checkpoints.latest_step() == 2
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints", "latest")) if "tmp" in n]
    model = stages.restore_for_inference(config, workdir, log=lambda line: None)
    state, meta = checkpoints.restore({"params": model.params, "batch_stats": model.batch_stats}, partial=True)
    assert meta["step"] == 2 and checkpointing.count_non_finite(state)[0] == 0
    checkpoints.close()


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A finished smoke run with g_phi (ce+semeda): latest/{6,8,12}, best/6 or best/12, edge_net/."""
    workdir = tmp_path_factory.mktemp("trained")
    stages.run_train(smoke_config(data_root, {}), str(workdir), log=lambda line: None)
    return workdir


def copy_of(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    return workdir


def truncate_arrays(folder):
    """Cut every array file of a checkpoint folder to half its size (a disk or copy fault; each file may hold
    several arrays, so cutting them all reaches the parameters that eval reads)."""
    for path in glob.glob(os.path.join(folder, "state", "**", "d", "*"), recursive=True):
        os.truncate(path, os.path.getsize(path) // 2)


def test_damaged_latest_resumes_from_the_newest_good_one(trained, data_root, tmp_path):
    workdir = copy_of(trained, tmp_path)
    truncate_arrays(workdir / "checkpoints" / "latest" / "12")
    lines = []
    state, _ = stages.run_train(smoke_config(data_root, {}), str(workdir), log=lines.append)
    warnings = [line for line in lines if "warning: " in line and "checkpoint" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"[checkpoint] warning: {workdir}/checkpoints/latest/12 is damaged ("), lines
    assert warnings[0].endswith(f"; restored {workdir}/checkpoints/latest/8 instead, moved it to "
                                f"{workdir}/checkpoints/unreadable/latest-12")
    assert int(state.step) == 12 and any(line.startswith("[train] step 12/12") for line in lines)


def test_damaged_best_evaluates_latest_and_none_readable_is_one_error(trained, data_root, tmp_path):
    workdir = copy_of(trained, tmp_path)
    best = json.loads((workdir / "checkpoints" / "best.json").read_text())["step"]
    truncate_arrays(workdir / "checkpoints" / "best" / str(best))
    result = run_main(workdir, "--stages=eval", f"--config.dataset.root={data_root}")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (f"[checkpoint] warning: {workdir}/checkpoints/best/{best} is damaged (" in result.stdout
            and f"; restored {workdir}/checkpoints/latest/12 instead" in result.stdout), result.stdout
    assert f"[latest checkpoint] step 12 from {workdir}/checkpoints/latest/12" in result.stdout
    for step in (6, 8, 12):
        truncate_arrays(workdir / "checkpoints" / "latest" / str(step))
    result = run_main(workdir, "--stages=eval", f"--config.dataset.root={data_root}")
    assert_one_line_error(result, f"error: {workdir}/checkpoints: no checkpoint can be read (",
                          f"{workdir}/checkpoints/latest/6 is damaged (", "move the folder away to start over")


def test_kill_while_the_best_is_copied_keeps_the_best_record(trained, data_root, tmp_path):
    """The state of a run killed while best/6 was written (latest/6 saved, nothing after): the rerun removes
    the half-written folder and records step 6 as the best, so the worse step 12 does not replace it."""
    workdir = copy_of(trained, tmp_path)
    root = workdir / "checkpoints"
    record = json.loads((root / "best.json").read_text())
    assert record["step"] == 6, record  # the smoke run's val mIoU is higher at step 6 than at step 12
    for step in (8, 12):
        shutil.rmtree(root / "latest" / str(step))
    (root / "best.json").unlink()
    os.rename(root / "best" / "6", root / "best" / "6.orbax-checkpoint-tmp")
    lines = []
    stages.run_train(smoke_config(data_root, {}), str(workdir), log=lines.append)
    assert f"[checkpoint] removed {root}/best/6.orbax-checkpoint-tmp, left unfinished by a stopped run" in lines
    assert any(line.startswith("[eval] step 12: ") for line in lines)
    assert json.loads((root / "best.json").read_text()) == record and os.listdir(root / "best") == ["6"]


def test_changed_training_settings_are_refused_on_resume_not_on_eval(trained, data_root, tmp_path):
    workdir = copy_of(trained, tmp_path)
    changed = smoke_config(data_root, {"data.batch_size": 8, "optimizer.learning_rate": 0.05})
    with pytest.raises(checkpointing.CheckpointError) as error:
        stages.run_train(changed, str(workdir), log=lambda line: None)
    assert str(error.value) == (
        f"{workdir}/checkpoints/latest/12: the run was trained with other settings, refusing to resume it "
        f"(data.batch_size: checkpoint 4, config 8; optimizer.learning_rate: checkpoint 0.02, config 0.05); use "
        f"the config it was trained with, or accept the changes with "
        f"--config.train.resume_changes=data.batch_size,optimizer.learning_rate")
    stages.restore_for_inference(changed, str(workdir), log=lambda line: None)  # eval checks the model only
    with changed.unlocked():
        changed.train.resume_changes = "data.batch_size,optimizer.learning_rate"
    lines = []
    stages.run_train(changed, str(workdir), log=lines.append)
    assert ("[checkpoint] resuming with changes accepted by config.train.resume_changes: data.batch_size: "
            "checkpoint 4, config 8; optimizer.learning_rate: checkpoint 0.02, config 0.05") in lines


def test_edge_net_of_another_class_count_is_refused_by_name(trained, data_root, tmp_path):
    workdir = copy_of(trained, tmp_path)
    with pytest.raises(checkpointing.CheckpointError) as error:
        stages.run_train(smoke_config(data_root, {"dataset.num_classes": 9}), str(workdir), log=lambda line: None)
    assert str(error.value).startswith(f"{workdir}/edge_net/latest/30: the checkpoint is of another model, "
                                       f"refusing to load it (dataset.num_classes: checkpoint 8, config 9)")


def test_sigterm_during_edge_pretraining_stops_it_and_resumes_bit_for_bit(data_root, tmp_path):
    overrides = {"edge_net.steps": 400, "train.checkpoint_every": 20}
    workdir = tmp_path / "interrupted"
    command = [sys.executable, "-m", "semeda_jax.main", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
               "--stages=train", *flags(data_root, overrides)]
    with processes.killed_on_exit(processes.start(command)) as proc:
        folder = workdir / "edge_net" / "latest"
        deadline = time.monotonic() + 240
        while not (folder.is_dir() and [n for n in os.listdir(folder) if n.isdigit()]):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and time.monotonic() - signalled < 30, output[-3000:]
    step = int(output.split("[edge_pretrain] preempted (SIGTERM): checkpoint saved at step ")[1].split(";")[0])
    assert 20 <= step < 400 and os.listdir(workdir / "edge_net" / "latest") == [str(step)], output[-3000:]
    assert not (workdir / "checkpoints").exists()  # f_theta's training did not start
    config = smoke_config(data_root, overrides)
    lines = []
    resumed = stages.run_edge_pretrain(config, str(workdir), log=lines.append)
    assert f"[edge_pretrain] resumed from {workdir}/edge_net/latest/{step} at step {step}" in lines
    straight = stages.run_edge_pretrain(config, str(tmp_path / "straight"), log=lambda line: None)
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
