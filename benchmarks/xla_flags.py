"""Our train step under candidate XLA_FLAGS, each in its own process, interleaved, against the default flags.

    python -m benchmarks.xla_flags                        # DeepLab v3+ R-101 OS 16, batch 2 of 192x192, CE
    python -m benchmarks.xla_flags --crop 321 --rounds 2 --flags=--xla_cpu_use_onednn=true
    python -m benchmarks.xla_flags --flags xla_cpu_use_xnnpack=true "xla_cpu_use_onednn=true xla_cpu_use_xnnpack=true"
    python -m benchmarks.xla_flags --config demo --rounds 3  # configs/demo.py's step (CE + SEMEDA)
    python -m benchmarks.xla_flags --tiny                 # seconds: the script's own check

XLA reads XLA_FLAGS once, when the backend starts, so every candidate runs `--rounds` times in a fresh worker
process (this module with --worker), in alternation with the default (flags of the caller's XLA_FLAGS only), so
that machine noise hits all of them. A worker compiles the step of benchmarks/peer.py's row (random weights, one
fixed random batch), runs one warm-up step and `--steps` timed steps, and reports the median and the first step's
loss and gradient norm; the table prints each candidate's median over its rounds, the ratio of its images/s to the
default's, and the relative change of loss and gradient norm (a flag that changes the numbers beyond float
rounding is not a speed option). Candidates that this jaxlib rejects are reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# Candidates from XLA:CPU's options in jaxlib 0.10 (`strings libjax_common.so | grep xla_cpu_`): the oneDNN and
# XNNPACK / YNNPACK paths for convolutions and dots, Eigen's threading, and the fast-math / vector-width knobs.
CANDIDATES = (
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution",
    "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_enable_fast_math=true",
)


def worker(args) -> None:
    """Time the step under this process's XLA_FLAGS -> one JSON line on stdout."""
    import jax

    from benchmarks.peer import our_config
    from benchmarks.train_step import compile_step, load_config, time_steps

    config = (load_config(args.config) if args.config
              else our_config(args.model, args.stride, "ce", "fp32", args.batch, args.crop))
    compiled = compile_step(config)
    state, *inputs = compiled["args"]
    state, metrics = compiled["step"](state, *inputs)  # warm-up (donates the initial state)
    first = {key: float(jax.device_get(metrics[key])) for key in ("loss", "grad_norm")}
    compiled["args"] = (state, *inputs)
    times = time_steps(compiled, args.steps)
    print(json.dumps(dict(step_s=statistics.median(times), compile_s=compiled["compile_s"], **first)))


def run_worker(flags: str, args) -> dict:
    env = {**os.environ, "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flags]))}
    command = [sys.executable, "-m", "benchmarks.xla_flags", "--worker", "--model", args.model, "--stride",
               str(args.stride), "--batch", str(args.batch), "--crop", str(args.crop), "--steps", str(args.steps),
               "--config", args.config]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flags", nargs="+", default=list(CANDIDATES),
                        help="candidate XLA_FLAGS strings; the leading -- of each flag may be left out, "
                             "which several candidates need (one: --flags=--xla_...)")
    parser.add_argument("--model", default="resnet101")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--config", default="",
                        help="time this config's own step instead (e.g. demo, voc:ppce; model options ignored)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny model and crop, one candidate")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.flags = [" ".join(flag if flag.startswith("--") else "--" + flag for flag in candidate.split())
                  for candidate in args.flags]
    if args.tiny:
        args.model, args.crop, args.steps, args.rounds, args.flags = "tiny", 32, 1, 1, args.flags[:1]
    if args.worker:
        worker(args)
        return
    row = (f"configs/{args.config}'s step" if args.config
           else f"{args.model} OS {args.stride}, batch {args.batch}x{args.crop}x{args.crop}, CE, fp32")
    print(f"{row}; {os.cpu_count()} "
          f"CPU core(s); base XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {args.rounds} round(s) of "
          f"{args.steps} steps per candidate")
    runs: dict[str, list[dict]] = {flags: [] for flags in ["", *args.flags]}
    for _ in range(args.rounds):
        for flags in runs:
            runs[flags].append(run_worker(flags, args))
            print(f"  {flags or 'default':<64} {runs[flags][-1]}", flush=True)
    default = [r for r in runs[""] if "error" not in r]
    if not default:
        raise SystemExit(f"the default step failed: {runs[''][0]['error']}")
    base = {key: statistics.median(r[key] for r in default) for key in ("step_s", "loss", "grad_norm")}
    print("\n| flags | step (s) | x default img/s | loss change | grad-norm change |\n|---|---|---|---|---|")
    for flags, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            print(f"| `{flags}` | rejected: {results[0]['error']} | | | |")
            continue
        step = statistics.median(r["step_s"] for r in ok)
        change = {key: abs(ok[0][key] - base[key]) / abs(base[key]) for key in ("loss", "grad_norm")}
        print(f"| `{flags or 'default'}` | {step:.3f} | {base['step_s'] / step:.2f} | {change['loss']:.1e} | "
              f"{change['grad_norm']:.1e} |")


if __name__ == "__main__":
    main()
