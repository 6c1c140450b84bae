"""Subprocesses for the multi-process and preemption tests: each in its own session on the CPU backend, and
killed with everything it started when the test is done with it (pass, failure or timeout)."""
import contextlib
import os
import signal
import subprocess

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
