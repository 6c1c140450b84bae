"""The main job and the R-101 train step under glibc's malloc and under page-keeping allocators, one run.

    python -m benchmarks.allocator                                 # demo job + R-101 step: glibc vs the chosen one
    python -m benchmarks.allocator --allocators glibc mimalloc tcmalloc --rounds 2
    python -m benchmarks.allocator --workloads main step peer      # + the PyTorch peer's R-101 step
    python -m benchmarks.allocator --smoke                         # seconds to minutes: checks the script works

Each row is one child process: the main job (`python -m semeda_jax.main --config=CONFIG`, its allocator picked
with SEMEDA_JAX_ALLOCATOR; `--steps` shortens its training) or our DeepLab v3+ R-101 OS 16 train step (batch
`--batch`, `--crop` px, `--step-count` timed steps after one warm-up; LD_PRELOAD set here) or the PyTorch peer's
step of benchmarks/peer.py's R-101 row (smp DeepLabV3Plus, same batch and crop, in the peer venv of
`python -m benchmarks.peer --setup-peer`, its own process under the same LD_PRELOAD, so the CPU ratio between
the frameworks is taken under one allocator). Rounds alternate the
allocators so that machine noise hits all of them. Columns, from getrusage of the children: minor page faults,
system and user CPU seconds, wall seconds, and for the step its median time; ratios are to glibc's row of the
same workload and round. semeda_jax/allocator.py says why the allocator matters on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peer import PEER_VENV, WORKER as PEER_WORKER, peer_spec
from semeda_jax import allocator

STEP_MARK = "step-result: "


def step_worker(args) -> None:
    """In the child: compile the R-101 step once, time `--step-count` steps -> one STEP_MARK json line."""
    from benchmarks.peer import our_config
    from benchmarks.train_step import compile_step, time_steps

    compiled = compile_step(our_config("resnet101", 16, "ce", "fp32", args.batch, args.crop))
    times = time_steps(compiled, args.step_count + 1)[1:]  # the first step warms up
    print(STEP_MARK + json.dumps({"median_s": statistics.median(times)}), flush=True)


def environment(name: str, library: str | None) -> dict:
    """This process's environment for a child running under allocator `name` (glibc: no preload)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.MARKER)}
    env[allocator.SETTING] = "system" if name == "glibc" else name
    if library:
        env["LD_PRELOAD"] = library
    return env


def peer_requests(args) -> str:
    """The JSON lines that make the peer worker (benchmarks/peer_torch.py) build the R-101 step, time
    `--step-count` steps after one warm-up and quit."""
    spec = peer_spec("resnet101", 16, "fp32", args.batch, args.crop, compiled=False, threads=os.cpu_count(),
                     device="cpu")  # benchmarks/peer.py's R-101 row on CPU, its default threads
    requests = [{"cmd": "setup", **spec}, {"cmd": "time", "steps": 1}, {"cmd": "time", "steps": args.step_count},
                {"cmd": "quit"}]
    return "".join(json.dumps(request) + "\n" for request in requests)


def marked_median(stdout: str) -> float:
    """The median step time our step worker printed after STEP_MARK (nan without one: the main job)."""
    marked = [line for line in stdout.splitlines() if line.startswith(STEP_MARK)]
    return json.loads(marked[0][len(STEP_MARK):])["median_s"] if marked else float("nan")


def peer_median(stdout: str) -> float:
    """The median step time of the peer's last "time" reply."""
    replies = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return statistics.median([r for r in replies if "step_s" in r][-1]["step_s"])


def run_child(command: list[str], env: dict, stdin: str | None = None, read_step=marked_median) -> dict:
    """Run `command` (fed `stdin`) to its end -> its wall seconds, getrusage deltas and the step's median,
    read_step(its stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, input=stdin)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return {"wall_s": wall, "faults": after.ru_minflt - before.ru_minflt, "sys_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime, "step_s": read_step(result.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allocators", nargs="+", default=None,
                        help="glibc, mimalloc, tcmalloc (default: glibc and the one main.py would choose)")
    parser.add_argument("--config", default="configs/demo.py", help="the main job's config")
    parser.add_argument("--steps", type=int, default=0, help="the main job's train steps (0: the config's)")
    parser.add_argument("--batch", type=int, default=2, help="R-101 step: global batch")
    parser.add_argument("--crop", type=int, default=192, help="R-101 step: crop size")
    parser.add_argument("--step-count", type=int, default=8, help="R-101 step: timed steps")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workloads", nargs="+", default=["main", "step"], choices=["main", "step", "peer"])
    parser.add_argument("--peer-python", type=Path, default=PEER_VENV / "bin" / "python",
                        help="the peer workload's python (default: benchmarks/peer.py's venv)")
    parser.add_argument("--smoke", action="store_true",
                        help="configs/demo.py:smoke, 2 steps at batch 2 x 64 px (torch's train-mode BN needs 2)")
    parser.add_argument("--step-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_worker:
        return step_worker(args)
    if args.smoke:
        args.config, args.batch, args.crop, args.step_count = "configs/demo.py:smoke", 2, 64, 2
    if "peer" in args.workloads and not args.peer_python.exists():
        raise SystemExit(f"--workloads peer: no python at {args.peer_python} (create the peer venv with "
                         f"`python -m benchmarks.peer --setup-peer`)")
    chosen = allocator.find()
    names = list(dict.fromkeys(["glibc", *(args.allocators or [chosen[0] if chosen else "glibc"])]))  # glibc first
    libraries = {"glibc": None}
    for name in names[1:]:
        found = allocator.find(name) if name in allocator.ALLOCATORS else None
        if found is None:
            raise SystemExit(f"--allocators: {name} is not installed (known: {', '.join(allocator.ALLOCATORS)})")
        libraries[name] = found[1]
    listed = ", ".join(f"{name} ({libraries[name] or 'libc'})" for name in names)
    print(f"allocators: {listed}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print(f"{'workload':<28}{'allocator':<11}{'faults (M)':>11}{'x glibc':>8}{'sys (s)':>9}{'x glibc':>8}"
          f"{'user (s)':>9}{'wall (s)':>9}{'x glibc':>8}{'step (s)':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for workload in args.workloads:
                if workload == "main":
                    label = args.config + (f" {args.steps} steps" if args.steps else "")
                    extra = [f"--config.train.steps={args.steps}"] if args.steps else []
                else:
                    label = f"{'peer ' if workload == 'peer' else ''}R-101 step {args.batch}x{args.crop}"
                    extra = []
                glibc = None
                for name in names:
                    if workload == "main":
                        workdir = os.path.join(scratch, f"{round_index}-{name}")
                        command = [sys.executable, "-m", "semeda_jax.main", f"--config={args.config}",
                                   f"--workdir={workdir}", *extra]
                        row = run_child(command, environment(name, None))  # main.py preloads it itself
                    elif workload == "peer":
                        env = {**environment(name, libraries[name]), "PYTHONWARNINGS": "ignore"}
                        row = run_child([str(args.peer_python), str(PEER_WORKER)], env, peer_requests(args),
                                        peer_median)
                    else:
                        command = [sys.executable, "-m", "benchmarks.allocator", "--step-worker",
                                   f"--batch={args.batch}", f"--crop={args.crop}", f"--step-count={args.step_count}"]
                        row = run_child(command, environment(name, libraries[name]))
                    glibc = glibc or row
                    print(f"{label:<28}{name:<11}{row['faults'] / 1e6:>11.2f}{row['faults'] / glibc['faults']:>8.2f}"
                          f"{row['sys_s']:>9.1f}{row['sys_s'] / glibc['sys_s']:>8.2f}{row['user_s']:>9.1f}"
                          f"{row['wall_s']:>9.1f}{row['wall_s'] / glibc['wall_s']:>8.2f}{row['step_s']:>9.3f}",
                          flush=True)


if __name__ == "__main__":
    main()
