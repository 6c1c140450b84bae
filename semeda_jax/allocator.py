"""Run the main job under a malloc that keeps freed pages: re-execute the process once with LD_PRELOAD set.

Why: each execution of a compiled XLA:CPU program allocates its temporaries and frees them at its end; glibc's
malloc serves such large blocks with fresh mappings and hands them back to the system on free, so every step
faults in and zeroes hundreds of MB of new pages. On the 2-core machine that was a third of the demo job's wall
time (51 M minor page faults, 117 s of system CPU in 340 s). mimalloc and tcmalloc keep the memory for the next
step.

`reexec()` is the first thing main.py does: it finds an allocator (the system's tcmalloc when installed, else
mimalloc from the pinned pip package cmeel-mimalloc; tcmalloc spent less system CPU in a first comparison, which
`python -m benchmarks.allocator --allocators tcmalloc mimalloc` repeats), checks that it preloads, and replaces
the process with the same interpreter, argv and environment plus LD_PRELOAD; the new process names its allocator
in its first log line, e.g. `[allocator] mimalloc (/.../cmeel.prefix/lib/libmimalloc.so)`. It happens at most
once (an environment marker), not when LD_PRELOAD already names an allocator (TPU VMs preload tcmalloc), and
never on import: library use and tests in-process keep glibc. An allocator that is missing or does not load
leaves the run on glibc with one warning line. SEMEDA_JAX_ALLOCATOR picks: auto (default), tcmalloc, mimalloc,
or system (glibc).
"""
from __future__ import annotations

import ctypes.util
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable

SETTING = "SEMEDA_JAX_ALLOCATOR"
MARKER = "SEMEDA_JAX_ALLOCATOR_REEXEC"  # "name=library", set for the re-executed process only
PRELOADED = re.compile(r"(mi|tc|je)malloc")  # an allocator some launcher already preloads


def _mimalloc() -> str | None:
    """libmimalloc.so of the pip package cmeel-mimalloc (requirements.txt), None when not installed."""
    try:
        path = importlib.metadata.distribution("cmeel-mimalloc").locate_file("cmeel.prefix/lib/libmimalloc.so")
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(path) if os.path.isfile(path) else None


def _tcmalloc() -> str | None:
    """The system's tcmalloc (Debian libtcmalloc-minimal4, or gperftools' full one) by soname, None without."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


ALLOCATORS: dict[str, Callable[[], str | None]] = {"tcmalloc": _tcmalloc, "mimalloc": _mimalloc}  # auto: in order


def find(setting: str = "auto") -> tuple[str, str] | None:
    """(name, library) of the allocator `setting` names, or of the first one installed for "auto"; None if none."""
    for name in ALLOCATORS if setting == "auto" else [setting]:
        library = ALLOCATORS[name]()
        if library:
            return name, library
    return None


def preload_problem(library: str) -> str | None:
    """Why `library` cannot be preloaded into this interpreter (missing, broken, another architecture: the
    dynamic loader's message), or None when it loads."""
    probe = subprocess.run([sys.executable, "-I", "-S", "-c", ""], env={**os.environ, "LD_PRELOAD": library},
                           capture_output=True, text=True)
    if probe.returncode == 0 and "LD_PRELOAD" not in probe.stderr:
        return None
    return (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]


def _warn(message: str) -> None:
    print(f"[allocator] warning: {message}; running on glibc's malloc", file=sys.stderr, flush=True)


def reexec(stop_requested: Callable[[], bool] = lambda: False, hold: tuple[int, ...] = (signal.SIGTERM,)) -> None:
    """Replace this process by itself under a page-keeping allocator, once (module docstring), or return.

    Call it first thing, after installing the handlers of the `hold` signals: they stay blocked across the exec,
    so one that arrives meanwhile waits, and the new process unblocks them here, where its handlers are in place
    again. No exec once `stop_requested()` (a stop asked for before the block: the run ends at once anyway).
    """
    setting, preload = os.environ.get(SETTING, "auto"), os.environ.get("LD_PRELOAD", "")
    if MARKER in os.environ:  # the re-executed process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, hold)
        name, library = os.environ.pop(MARKER).split("=", 1)
        with open("/proc/self/maps") as maps:
            loaded = os.path.basename(library) in maps.read()
        if loaded:
            print(f"[allocator] {name} ({library})", flush=True)
        else:
            _warn(f"{name} ({library}) is in LD_PRELOAD but not loaded")
        return
    if setting == "system":
        print(f"[allocator] glibc ({SETTING}=system)", flush=True)
        return
    if setting not in ("auto", *ALLOCATORS):
        _warn(f"{SETTING}={setting} is none of auto, {', '.join(ALLOCATORS)}, system")
        return
    if PRELOADED.search(preload):
        print(f"[allocator] LD_PRELOAD={preload}", flush=True)
        return
    if not sys.platform.startswith("linux"):
        print("[allocator] the system's (LD_PRELOAD is for Linux)", flush=True)
        return
    found = find(setting)
    if found is None:
        _warn("no tcmalloc or mimalloc (pip install -r requirements.txt) found" if setting == "auto"
              else f"{SETTING}={setting} but {setting} is not installed")
        return
    name, library = found
    problem = preload_problem(library)
    if problem:
        _warn(f"{name} ({library}) does not load: {problem}")
        return
    env = {**os.environ, "LD_PRELOAD": ":".join(filter(None, (library, preload))), MARKER: f"{name}={library}"}
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, hold)
    if not stop_requested():
        try:
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError as error:
            _warn(f"re-executing {sys.executable} failed: {error}")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, hold)
