"""The workdir of a run: created and checked writable before any work, and locked by the runs that write it.

`WorkdirLock(workdir, process_index)` (exclusive: the stages that write checkpoints, edge_pretrain, train,
learn_fusion) takes `fcntl.flock(LOCK_EX | LOCK_NB)` on WORKDIR/.lock.<process_index> for the life of the
process: a second such run on the same workdir is refused at once with one line naming the holder's pid,
instead of two runs interleaving checkpoints. The kernel drops a flock when its process ends in any way
(SIGKILL included), so a stale lock file never blocks the next run. Each process of a multi-process run locks
its own index, so the processes of one run do not block each other.

`WorkdirLock(..., exclusive=False)` (eval, predict alone) takes no lock and is never refused: those stages read
only finished checkpoints (orbax and best/ copies appear by an atomic rename; one removed by the training
while read is skipped for the next readable one, checkpointing.py) and write only what training never writes
(report.*, plots, predictions/), so they can run while the workdir trains.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import tempfile


class WorkdirError(RuntimeError):
    """The workdir cannot be used (not writable, full, or held by another run). The message names it."""


def free_bytes(path: str) -> int | None:
    """Bytes free to this user on the file system holding `path` (its nearest existing parent); None if unknown."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def prepare(workdir: str) -> str:
    """Create `workdir` if needed and check that a file can be written there -> its absolute path.
    WorkdirError (one line) when it is a file, cannot be created, is read-only or full."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_") as probe:
            probe.write(b"0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        why = error.strerror or str(error)
        if error.errno == errno.ENOSPC:
            why += f", {free_bytes(workdir)} bytes free"
        raise WorkdirError(f"--workdir: {workdir} is not a writable folder ({why})") from None
    return workdir


class WorkdirLock:
    """Stale-safe lock on a workdir for this process: exclusive for a run that writes checkpoints, none for one
    that only reads them (see the module docstring)."""

    def __init__(self, workdir: str, process_index: int = 0, *, exclusive: bool = True):
        self.path = os.path.join(workdir, f".lock.{process_index}")
        self.exclusive = exclusive
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        if not self.exclusive:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirError(f"--workdir: {os.path.dirname(self.path)} is in use by another run ({holder}); "
                               f"wait for it to end or use another workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
