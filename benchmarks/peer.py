"""Our train step side by side with the PyTorch peer (segmentation_models_pytorch DeepLabV3Plus), one run.

    python -m benchmarks.peer --setup-peer            # once: the peer's own venv (torch CPU, smp, timm)
    python -m benchmarks.peer                         # CPU: DeepLab v3+ R-101 OS 16, batch 2, 192x192, CE
    python -m benchmarks.peer --models resnet101 xception71 --strides 16 8 --losses ce ce+semeda \\
        --peer-modes eager compile --rounds 2 --steps 5
    python -m benchmarks.peer --tiny                  # seconds: tiny shapes, checks that the script works
    python -m benchmarks.peer --gpu-suite [--plan]    # the GPU table of docs/benchmarks.md (benchmarks/gpu_suite.sh)

For each (model, output stride, precision) group, our steps (one per loss) and the peer's (one worker process
per mode: torch eager, torch.compile) are compiled / warmed up first, then timed in `--rounds` alternating
rounds of `--steps` steps (ours, peer, ours, peer ...) so that machine noise hits both; a row reports the median
step over all its rounds. Same model family, batch, crop, train-mode BN, CE and SGD on both sides (the peer
module is described in benchmarks/peer_torch.py; its decoder is smp's, which is lighter than ours: compare
GFLOP/step beside the step times). Columns: step time, images/s, ratio to the peer's eager and compiled images/s,
peak memory (ours: XLA's accounting of the compiled step; the peer: peak RSS of its process on CPU,
torch.cuda.max_memory_allocated on GPU), compile / warm-up time, GFLOP per step (ours: XLA's cost analysis;
peer: torch's FlopCounterMode) and MFU = GFLOP/step / step time / peak. The peak is `--peak-tflops`, else the
device's dense spec-sheet figure for the precision on GPUs, else (CPU) the best rate of a 2048^3 float32 XLA
matmul measured at start-up, stated in the header.

The peer runs in the virtual environment --peer-venv (default ~/.cache/semeda_jax/peer-venv), never in the
project's; without it the peer columns are skipped with a one-line message saying how to create it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.train_step import compile_step, load_config, time_steps

PEER_VENV = Path("~/.cache/semeda_jax/peer-venv").expanduser()
# The registry's torch 2.14.1 (a CUDA 13 build, which also runs on CPU) with its own torchvision: timm imports
# torchvision, and the registry has no torchvision that loads beside the local CPU-only torch 2.13.0 wheel.
PEER_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "segmentation-models-pytorch==0.6.0", "timm==1.0.20")
WORKER = Path(__file__).with_name("peer_torch.py")

# model name -> (our config, the peer's encoder)
MODELS = {"resnet101": ("voc:ppce,resnet101", "resnet101"), "xception71": ("voc:ppce", "tu-xception71"),
          "tiny": ("voc:ppce,resnet101,smoke", "resnet18")}
# Dense peak TFLOP/s by (device kind substring, precision), from the vendors' spec sheets (SXM, no sparsity).
# The GPU table of docs/benchmarks.md (benchmarks/gpu_suite.sh): the papers' sizes, batch 8.
GPU_SUITE = (
    dict(models=["resnet101"], crop=513, precisions=["fp32"], losses=["ce", "ce+semeda"], peer_modes=["eager"]),
    dict(models=["resnet101"], crop=513, precisions=["bf16"], losses=["ce", "ce+semeda"], peer_modes=["compile"]),
    dict(models=["xception71"], crop=513, precisions=["bf16"], losses=["ce"], peer_modes=["compile"]),
    dict(models=["resnet101"], crop=769, precisions=["bf16"], losses=["ce"], peer_modes=["compile"]),
)
GPU_PEAK_TFLOPS = {("H100", "bf16"): 989.0, ("H100", "fp32"): 67.0, ("H200", "bf16"): 989.0,
                   ("H200", "fp32"): 67.0, ("A100", "bf16"): 312.0, ("A100", "fp32"): 19.5}


def setup_peer(venv: Path, packages=PEER_PACKAGES) -> None:
    """Create a peer's venv with its pinned packages (default: torch / smp / timm, CPU torch from the local
    wheel; benchmarks/crf.py: the dense CRF)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True)
    print(f"peer venv ready: {venv}")


def peak_tflops(precision: str, stated: float | None) -> tuple[float, str]:
    """The MFU reference -> (TFLOP/s, how it was obtained)."""
    if stated:
        return stated, "stated with --peak-tflops"
    device = jax.devices()[0]
    for (kind, prec), value in GPU_PEAK_TFLOPS.items():
        if kind in device.device_kind and prec == precision:
            return value, f"{kind} dense {precision} spec sheet"
    if device.platform != "cpu":
        return float("nan"), f"unknown device {device.device_kind!r}: pass --peak-tflops"
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12, f"best of 5 {n}^3 float32 XLA matmuls on this CPU"


class Peer:
    """One worker process (default benchmarks/peer_torch.py; `worker`: another script speaking the same JSON
    lines) in the peer venv, kept warm between rounds."""

    def __init__(self, python: Path, spec: dict, worker: Path = WORKER):
        self.process = subprocess.Popen([str(python), str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.setup = self.ask({"cmd": "setup", **spec})
        self.times: list[float] = []
        self.memory = (float("nan"), "")

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the peer worker exited (status {self.process.wait()}) on {request['cmd']}")
        return json.loads(line)

    def run(self, steps: int) -> None:
        reply = self.ask({"cmd": "time", "steps": steps})
        self.times += reply["step_s"]
        self.memory = (reply["peak_memory_mib"], reply["memory_kind"])

    def close(self) -> None:
        self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.process.stdin.close()
        self.process.wait()


def peer_spec(model: str, stride: int, precision: str, batch: int, crop: int, *, compiled: bool, threads: int,
              device: str) -> dict:
    """The peer worker's "setup" request (benchmarks/peer_torch.py) for the row of `model` (a MODELS key)."""
    return dict(encoder=MODELS[model][1], output_stride=stride, batch=batch, crop=crop, classes=21,
                amp=precision == "bf16", compile=compiled, channels_last=True, threads=threads, device=device)


def our_config(model: str, stride: int, loss: str, precision: str, batch: int, crop: int):
    config = load_config(MODELS[model][0])
    config.model.update(output_stride=stride, bn_mode="train")
    config.data.update(batch_size=batch, crop_size=(crop, crop))
    config.loss = loss
    config.mixed_precision = precision == "bf16"
    return config


def row_line(name: str, times: list[float], batch: int, memory: str, setup_s: float, gflop: float,
             peak: float, ratios: str) -> str:
    step = statistics.median(times)
    mfu = gflop / step / (peak * 1e3) if peak == peak else float("nan")
    return (f"{name:<34}{step:>9.3f}{batch / step:>8.2f}{ratios}{memory:>20}{setup_s:>10.1f}{gflop:>10.1f}"
            f"{100 * mfu:>7.1f}")


def plan_group(args, model: str, stride: int, precision: str) -> None:
    """--plan: build and check every row's config (the model traced abstractly, nothing compiled) and print
    the rows that a run would time."""
    from semeda_jax import stages  # the data readers, hence TensorFlow: not needed to time steps

    for loss in args.losses:
        stages.check_config(our_config(model, stride, loss, precision, args.batch, args.crop))
    print(f"plan: {model} OS {stride} {precision} batch {args.batch}x{args.crop}x{args.crop}: ours "
          f"{', '.join(args.losses)}; peer {', '.join(args.peer_modes) or 'none'} ({MODELS[model][1]})")


def run_group(args, model: str, stride: int, precision: str, peer_python: Path | None) -> None:
    if args.plan:
        plan_group(args, model, stride, precision)
        return
    peak, peak_source = peak_tflops(precision, args.peak_tflops)
    device = jax.devices()[0]
    print(f"\n## {model}, output stride {stride}, {precision}, batch {args.batch}x{args.crop}x{args.crop}, "
          f"{device.device_kind} ({device.platform}); MFU peak {peak:.2f} TFLOP/s ({peak_source})")
    ours = {}
    for loss in args.losses:
        ours[loss] = compile_step(our_config(model, stride, loss, precision, args.batch, args.crop))
        time_steps(ours[loss], 1)  # warm-up
        ours[loss]["times"] = []
    peers = {}
    if peer_python:
        for mode in args.peer_modes:
            spec = peer_spec(model, stride, precision, args.batch, args.crop, compiled=mode == "compile",
                             threads=args.threads, device="cuda" if device.platform == "gpu" else "cpu")
            peers[mode] = Peer(peer_python, spec)
            print(f"peer {mode}: {peers[mode].setup['versions']}")
    for _ in range(args.rounds):
        for loss in args.losses:
            ours[loss]["times"] += time_steps(ours[loss], args.steps)
        for peer in peers.values():
            peer.run(args.steps)
    rates = {mode: args.batch / statistics.median(p.times) for mode, p in peers.items()}
    print(f"{'row':<34}{'step (s)':>9}{'img/s':>8}" + "".join(f"{'x ' + m:>10}" for m in rates)
          + f"{'peak memory (MiB)':>20}{'setup (s)':>10}{'GFLOP':>10}{'MFU %':>7}")
    for loss, result in ours.items():
        rate = args.batch / statistics.median(result["times"])
        ratios = "".join(f"{rate / r:>10.2f}" for r in rates.values())
        print(row_line(f"ours {loss}", result["times"], args.batch, f"{result['memory_mib']:.0f} (XLA)",
                       result["compile_s"], result["gflop_per_step"], peak, ratios))
    for mode, peer in peers.items():
        ratios = "".join(f"{args.batch / statistics.median(peer.times) / r:>10.2f}" for r in rates.values())
        memory, kind = peer.memory
        print(row_line(f"peer torch {mode}{' + AMP' if precision == 'bf16' else ''}", peer.times, args.batch,
                       f"{memory:.0f} ({kind})", peer.setup["warmup_s"], peer.setup["gflop_per_step"], peak,
                       ratios))
        peer.close()
    if "ce" in ours and "ce+semeda" in ours:
        ce, semeda = (statistics.median(ours[k]["times"]) for k in ("ce", "ce+semeda"))
        print(f"SEMEDA term: {100 * (semeda - ce) / semeda:.1f}% of the CE+SEMEDA step ({ce:.3f} vs {semeda:.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet101"], choices=sorted(MODELS))
    parser.add_argument("--strides", nargs="+", type=int, default=[16])
    parser.add_argument("--losses", nargs="+", default=["ce"], help="our loss mixes (the peer trains CE)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--peer-modes", nargs="*", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the peer's torch threads (CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    parser.add_argument("--peer-python", type=Path, default=None,
                        help="a python that has torch and smp (default: the peer venv's)")
    parser.add_argument("--setup-peer", action="store_true", help="create the peer venv and exit")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the script's own check)")
    parser.add_argument("--plan", action="store_true", help="check and list the rows without running them")
    parser.add_argument("--gpu-suite", action="store_true", help="the rows of GPU_SUITE at batch 8 (the README's "
                        "GPU table), in place of --models/--crop/--precisions/--losses/--peer-modes/--batch")
    args = parser.parse_args()
    if args.setup_peer:
        setup_peer(args.peer_venv)
        return
    if args.tiny:
        args.models, args.batch, args.crop, args.steps, args.rounds = ["tiny"], 2, 32, 1, 1
        args.peer_modes = [m for m in args.peer_modes if m == "eager"]
    peer_python = args.peer_python or args.peer_venv / "bin" / "python"
    if not (args.plan or args.peer_python or peer_python.exists()):
        print(f"peer skipped: no venv at {args.peer_venv} (create it with `python -m benchmarks.peer "
              f"--setup-peer`)")
        peer_python = None
    print(f"jax {jax.__version__}, {jax.device_count()} device(s); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for rows in [dict(batch=8, **row) for row in GPU_SUITE] if args.gpu_suite else [{}]:
        rows_args = argparse.Namespace(**{**vars(args), **rows})
        for model in rows_args.models:
            for stride in rows_args.strides:
                for precision in rows_args.precisions:
                    run_group(rows_args, model, stride, precision, peer_python)


if __name__ == "__main__":
    main()
