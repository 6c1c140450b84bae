"""allocator.py: main.py re-executes itself once under mimalloc/tcmalloc, keeping argv, environment, a pending
SIGTERM and the job's results bit for bit; a missing or broken library leaves glibc with one warning line."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import allocator, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_allocator = pytest.mark.skipif(allocator.find() is None, reason="neither mimalloc nor tcmalloc is installed")

# Runs reexec() as main.py does; what it prints before the call shows every exec, what it prints after it runs once.
ENTRY = """
import json, os, signal, sys
from semeda_jax import allocator, preemption
if os.environ.get("SELF_SIGTERM") and allocator.MARKER not in os.environ:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)  # pending: the handler below never sees it before the exec
print("start", os.getpid(), flush=True)
preemption.install()
allocator.reexec(stop_requested=preemption.received)
print("after " + json.dumps({"argv": sys.argv, "orig_argv": sys.orig_argv, "pid": os.getpid(),
                             "env": os.environ.get("KEEP_ME"), "stop": preemption.received()}), flush=True)
"""


def run_entry(tmp_path, *argv, **env):
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.SETTING)}
    environment["PYTHONPATH"] = REPO  # the script lives in tmp_path: import this checkout's semeda_jax
    command = [sys.executable, "-u", str(script), *argv]
    result = subprocess.run(command, cwd=REPO, env={**environment, **env}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    after = [json.loads(line[len("after "):]) for line in lines if line.startswith("after ")]
    assert len(after) == 1, result.stdout
    return lines, after[0], result.stderr, command


@needs_allocator
def test_reexec_happens_once_and_keeps_argv_and_environment(tmp_path):
    argv = ["--config=configs/demo.py:smoke", "--config.train.steps=3", "two words", "--stages=train,eval"]
    lines, after, stderr, command = run_entry(tmp_path, *argv, KEEP_ME="kept")
    starts = [line for line in lines if line.startswith("start ")]
    assert len(starts) == 2 and len(set(starts)) == 1, lines  # one exec, same process id
    name, library = allocator.find()
    assert [line for line in lines if line.startswith("[allocator]")] == [f"[allocator] {name} ({library})"]
    assert after["argv"][1:] == argv and after["orig_argv"][1:] == command[1:] and after["env"] == "kept"
    assert not after["stop"] and not stderr


@needs_allocator
def test_a_sigterm_pending_at_the_exec_reaches_the_new_process(tmp_path):
    lines, after, _, _ = run_entry(tmp_path, SELF_SIGTERM="1")
    assert len([line for line in lines if line.startswith("start ")]) == 2 and after["stop"]


def test_no_reexec_when_off_or_already_preloaded(tmp_path):
    lines, _, _, _ = run_entry(tmp_path, **{allocator.SETTING: "system"})
    assert len([line for line in lines if line.startswith("start ")]) == 1
    assert "[allocator] glibc (SEMEDA_JAX_ALLOCATOR=system)" in lines
    with pytest.MonkeyPatch.context() as patch:  # in-process: an exec would be a bug
        patch.setenv("LD_PRELOAD", "/opt/lib/libtcmalloc.so.4")
        patch.setattr(os, "execve", lambda *args: pytest.fail("re-executed"))
        allocator.reexec()


@pytest.mark.parametrize("library", ["missing", "broken"])
def test_a_missing_or_broken_library_leaves_glibc_with_one_warning(tmp_path, monkeypatch, capfd, library):
    path = tmp_path / "libmimalloc.so"
    if library == "broken":
        path.write_bytes(b"\x7fELF not really a library")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(allocator.SETTING, raising=False)
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("re-executed"))
    monkeypatch.setitem(allocator.ALLOCATORS, "mimalloc", lambda: str(path) if library == "broken" else None)
    monkeypatch.setitem(allocator.ALLOCATORS, "tcmalloc", lambda: None)
    allocator.reexec()
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("[allocator] warning: ") and err.rstrip().endswith("running on glibc's malloc")
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@needs_allocator
def test_the_main_job_is_bitwise_identical_under_the_allocator(tmp_path):
    """Two short train stages of configs/demo.py:smoke from the command line, glibc and the re-exec: the same
    parameters and BN statistics, bit for bit."""
    config = demo.get_config("smoke")
    config.dataset.root = str(tmp_path / "data")
    config.update_from_flattened_dict({"loss": "ce", "train.steps": 3})
    stages.build_readers(config)  # the data, generated once for both runs
    states = {}
    for setting in ("system", "auto"):
        workdir = str(tmp_path / setting)
        command = [sys.executable, "-m", "semeda_jax.main", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
                   "--stages=train", f"--config.dataset.root={config.dataset.root}", "--config.loss=ce",
                   "--config.train.steps=3"]
        env = {**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, allocator.SETTING: setting}
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.startswith("[allocator] " + ("glibc" if setting == "system" else allocator.find()[0]))
        states[setting] = stages.restore_for_inference(config, workdir, log=lambda line: None)
    for a, b in zip(*(jax.tree_util.tree_leaves((s.params, s.batch_stats)) for s in states.values()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
