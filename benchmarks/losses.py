"""Forward+backward time and peak memory of the training losses, as a ratio to plain CE.

    python -m benchmarks.losses                      # VOC 4x513x513x21 and Cityscapes 2x1024x2048x19
    python -m benchmarks.losses --batches=voc --repeats=5

Each loss is differentiated with respect to full-resolution logits (the worst case: the head's output after
upsampling) inside one jitted `value_and_grad`; the edge net is randomly initialised (its weights do not
change the cost). Time is the median wall time of `--repeats` runs after one warm-up (compile) run. Memory is
XLA's own accounting of the compiled step (arguments + outputs + temporaries, `memory_analysis()`), which is
the same figure on CPU and GPU; on a GPU the allocator's peak is printed as well.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from semeda_jax.losses import (boundary_aware_loss, cross_entropy, init_edge_net, ohem_cross_entropy, semeda_loss,
                               sobel_loss)

BATCHES = {"voc": (4, 513, 513, 21), "cityscapes": (2, 1024, 2048, 19)}


def loss_functions(num_classes: int) -> dict:
    """name -> f(logits, labels) for the five configurations of the table (paper hyperparameters)."""
    edge_params = init_edge_net(jax.random.PRNGKey(0), num_classes)
    ce = lambda x, y: cross_entropy(x, y)
    return {
        "CE": ce,
        "CE+SEMEDA": lambda x, y: ce(x, y) + semeda_loss(x, y, edge_params, lambdas=(2.0, 4.0, 0.0)),
        "CE+Sobel": lambda x, y: ce(x, y) + sobel_loss(x, y, coefficient=4.0),
        "CE+BAL": lambda x, y: boundary_aware_loss(x, y, kernel="gaussian", size=35, sigma=3.0, beta=0.5, down=4),
        "OHEM": lambda x, y: ohem_cross_entropy(x, y, threshold=0.6, min_kept=100_000),
    }


def synthetic_batch(shape, seed=0):
    """Random logits and blocky labels with a void band, as float32/int32 device arrays."""
    batch, height, width, num_classes = shape
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, (batch, height // 32 + 1, width // 32 + 1))
    labels = np.repeat(np.repeat(coarse, 32, 1), 32, 2)[:, :height, :width]
    labels[:, ::32, :] = 255
    logits = rng.normal(size=shape).astype(np.float32)
    return jnp.asarray(logits), jnp.asarray(labels.astype(np.int32))


def measure(fn, logits, labels, repeats: int) -> tuple[float, float]:
    """-> (median seconds per forward+backward, XLA bytes of the compiled step)."""
    step = jax.jit(jax.value_and_grad(fn))
    compiled = step.lower(logits, labels).compile()
    analysis = compiled.memory_analysis()
    peak_bytes = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                  if analysis is not None else float("nan"))
    jax.block_until_ready(compiled(logits, labels))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(logits, labels))
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="voc,cityscapes", help="comma list of " + ", ".join(BATCHES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--losses", default=None, help="comma list of rows to run (CE always runs, as the base)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    for name in args.batches.split(","):
        shape = BATCHES[name]
        logits, labels = synthetic_batch(shape)
        print(f"\n{name}: logits {shape} float32, labels int32, forward+backward, median of {args.repeats}")
        print(f"{'loss':<11} {'time (s)':>9} {'x CE':>6} {'memory (MiB)':>13} {'x CE':>6}")
        baseline = None
        for loss_name, fn in loss_functions(shape[-1]).items():
            if args.losses and loss_name != "CE" and loss_name not in args.losses.split(","):
                continue
            seconds, peak = measure(fn, logits, labels, args.repeats)
            baseline = baseline or (seconds, peak)
            print(f"{loss_name:<11} {seconds:>9.3f} {seconds / baseline[0]:>6.2f} {peak / 2**20:>13.0f} "
                  f"{peak / baseline[1]:>6.2f}", flush=True)
        if device.platform == "gpu":
            stats = device.memory_stats() or {}
            print(f"GPU allocator peak so far: {stats.get('peak_bytes_in_use', 0) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
