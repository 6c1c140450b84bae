"""Step time and memory of the main experiment configs' jitted train step, at their real sizes.

    python -m benchmarks.train_step                     # VOC (X-71 / R-101, PPCE / SEMEDA), Cityscapes; a GPU
    python -m benchmarks.train_step --repeats=0         # memory and compile time only (CPU)
    python -m benchmarks.train_step --configs voc voc:sobel --repeats=5 --batch=2

Each row builds the config's model and loss exactly as `train` does (random weights and a random g_phi: neither
changes the cost), on one synthetic batch of the config's crop size and global batch, compiles the sharded step
once (compile time reported) and times `--repeats` steps (median; 0 = memory only: at real sizes one step on a
2-core CPU takes many minutes, so CPU runs report memory and compile time, and step times come from a GPU).
Memory is XLA's accounting of the compiled step (arguments + outputs + temporaries - aliased donations) on the
device it was compiled for (GPU buffer assignment differs somewhat from CPU's). Ratios are to the first row.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time

import jax
import numpy as np

from semeda_jax import objective, parallel, train
from semeda_jax.losses import init_edge_net

DEFAULT_CONFIGS = ("voc:ppce", "voc", "voc:ppce,resnet101", "voc:resnet101", "cityscapes")


def load_config(spec: str):
    """'voc:ppce,resnet101' -> configs/voc.py's get_config('ppce,resnet101')."""
    name, _, arg = spec.partition(":")
    return importlib.import_module(f"configs.{name}").get_config(arg or None)


def compile_step(config) -> dict:
    """The config's sharded train step, compiled on one random batch of its crop size and global batch (random
    weights and a random g_phi: neither changes the cost) -> {"step": compiled, "args": (state, batch, frozen nets,
    dropout key), "compile_s", "memory_mib" (XLA's accounting: arguments + outputs + temporaries - donated aliases),
    "gflop_per_step" (XLA's cost analysis)}."""
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    state = train.create_train_state(config, model, jax.random.PRNGKey(0), mesh)
    crop_h, crop_w = config.data.crop_size
    b = config.data.batch_size
    rng = np.random.default_rng(0)
    batch_arrays = parallel.global_batch({
        "image": rng.standard_normal((b, crop_h, crop_w, 3)).astype(np.float32),
        "label": rng.integers(0, config.dataset.num_classes, (b, crop_h, crop_w)).astype(np.int32)}, mesh)
    random_nets = {"edge_net": init_edge_net(jax.random.PRNGKey(1), config.dataset.num_classes)}
    frozen = jax.device_put({net: random_nets[net] for net in objective.frozen_nets(config)},
                            parallel.replicated(mesh))
    dropout_key = jax.device_put(jax.random.PRNGKey(2), parallel.replicated(mesh))
    step = train.jit_train_step(config, state, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch_arrays, frozen, dropout_key).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    mib = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
           - memory.alias_size_in_bytes) / 2 ** 20
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"step": compiled, "args": (state, batch_arrays, frozen, dropout_key), "compile_s": compile_seconds,
            "memory_mib": mib, "gflop_per_step": float(cost.get("flops", float("nan"))) / 1e9}


def time_steps(compiled: dict, steps: int) -> list[float]:
    """Run `steps` timed steps of a compile_step() result (its state is carried, and donated, from step to
    step) -> seconds per step."""
    state, *inputs = compiled["args"]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled["step"](state, *inputs)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    compiled["args"] = (state, *inputs)
    return times


def measure(spec: str, repeats: int, batch: int | None) -> dict:
    config = load_config(spec)
    if batch:
        config.data.batch_size = batch
    compiled = compile_step(config)
    times = time_steps(compiled, repeats + 1 if repeats else 0)[1:]  # the first step warms up
    crop_h, crop_w = config.data.crop_size
    return {"config": spec, "model": f"{config.model.name}/{config.model.backbone}", "loss": config.loss,
            "batch": f"{config.data.batch_size}x{crop_h}x{crop_w}",
            "step_s": statistics.median(times) if times else float("nan"), "memory_mib": compiled["memory_mib"],
            "compile_s": compiled["compile_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="config[:variants] ...")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (0: compile and memory only)")
    parser.add_argument("--batch", type=int, default=0, help="global batch (0 = the config's)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} x {jax.device_count()} ({device.platform}), jax {jax.__version__}\n")
    print(f"{'config':<22}{'model':<30}{'loss':<11}{'batch':<12}{'step (s)':>9}{'x first':>8}"
          f"{'memory (MiB)':>14}{'x first':>8}{'compile (s)':>12}")
    first = None
    for spec in args.configs:
        row = measure(spec, args.repeats, args.batch or None)
        first = first or row
        timed = (f"{row['step_s']:>9.3f}{row['step_s'] / first['step_s']:>8.2f}" if args.repeats
                 else f"{'-':>9}{'-':>8}")
        print(f"{row['config']:<22}{row['model']:<30}{row['loss']:<11}{row['batch']:<12}{timed}"
              f"{row['memory_mib']:>14.0f}"
              f"{row['memory_mib'] / first['memory_mib']:>8.2f}{row['compile_s']:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
