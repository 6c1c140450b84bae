"""Subprocesses for the multi-process and preemption tests: each in its own session on the CPU backend, and
killed with everything it started when the test is done with it (pass, failure or timeout)."""
import contextlib
import os
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(command: list[str]) -> subprocess.Popen:
    """`command` run from the repository root, stdout and stderr merged into one text pipe."""
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@contextlib.contextmanager
def killed_on_exit(proc: subprocess.Popen):
    """On leaving the block, SIGKILL the process group of `proc` if it still runs."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_two_processes(data_root: str, workdir: str, overrides: dict, stages: str = "train") -> subprocess.Popen:
    """launch/local.sh --processes=2 on configs/demo.py:smoke with `overrides` ({"train.steps": 3, ...})."""
    return start(["bash", "launch/local.sh", "--processes=2", "configs/demo.py:smoke", workdir, f"--stages={stages}",
                  f"--config.dataset.root={data_root}", *(f"--config.{k}={v}" for k, v in overrides.items())])


def child_with_argument(pid: int, argument: str) -> int | None:
    """The pid of the child process of `pid` whose command line holds `argument` (None while there is none)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    for child in children:
        with open(f"/proc/{child}/cmdline") as f:
            if argument in f.read().split("\0"):
                return child
    return None


def latest_checkpoint_step(workdir: str) -> int | None:
    """The newest step under WORKDIR/checkpoints/latest (a directory listing: safe while a run is writing)."""
    folder = os.path.join(workdir, "checkpoints", "latest")
    steps = [int(name) for name in os.listdir(folder) if name.isdigit()] if os.path.isdir(folder) else []
    return max(steps, default=None)


def wait_for_checkpoint(proc: subprocess.Popen, workdir: str, after_step: int, timeout: float) -> int:
    """Poll while `proc` runs until a checkpoint newer than `after_step` is on disk -> its step."""
    deadline = time.monotonic() + timeout
    while (latest_checkpoint_step(workdir) or 0) <= after_step:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    return latest_checkpoint_step(workdir)
