"""The main job and the R-101 train step under glibc's malloc and under page-keeping allocators, one run.

    python -m benchmarks.allocator                                 # demo job + R-101 step: glibc vs the chosen one
    python -m benchmarks.allocator --allocators glibc mimalloc tcmalloc --rounds 2
    python -m benchmarks.allocator --smoke                         # seconds to minutes: checks the script works

Each row is one child process: the main job (`python -m semeda_jax.main --config=CONFIG`, its allocator picked
with SEMEDA_JAX_ALLOCATOR; `--steps` shortens its training) or our DeepLab v3+ R-101 OS 16 train step (batch
`--batch`, `--crop` px, `--step-count` timed steps after one warm-up; LD_PRELOAD set here). Rounds alternate the
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


def run_child(command: list[str], env: dict) -> dict:
    """Run `command` to its end -> its wall seconds, getrusage deltas and the step's median (step rows)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    marked = [line for line in result.stdout.splitlines() if line.startswith(STEP_MARK)]
    return {"wall_s": wall, "faults": after.ru_minflt - before.ru_minflt, "sys_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime,
            "step_s": json.loads(marked[0][len(STEP_MARK):])["median_s"] if marked else float("nan")}


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
    parser.add_argument("--workloads", nargs="+", default=["main", "step"], choices=["main", "step"])
    parser.add_argument("--smoke", action="store_true", help="configs/demo.py:smoke, 2 steps at batch 1 x 64 px")
    parser.add_argument("--step-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_worker:
        return step_worker(args)
    if args.smoke:
        args.config, args.batch, args.crop, args.step_count = "configs/demo.py:smoke", 1, 64, 2
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
                    label = f"R-101 step {args.batch}x{args.crop}"
                    extra = []
                glibc = None
                for name in names:
                    if workload == "main":
                        workdir = os.path.join(scratch, f"{round_index}-{name}")
                        command = [sys.executable, "-m", "semeda_jax.main", f"--config={args.config}",
                                   f"--workdir={workdir}", *extra]
                        row = run_child(command, environment(name, None))  # main.py preloads it itself
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
