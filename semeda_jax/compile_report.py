"""Will it fit? The config's train step and eval step compiled, without data or weights, for a device topology.

    topology  "v5p-32", "v5e-16", "v4-32", "v6e-8" (Cloud TPU names: v4/v5p count TensorCores, 2 per chip;
              v5e/v6e count chips) -> compile-only TPU devices (jax.experimental.topologies; needs libtpu, the
              optional extra `pip install -e .[tpu]`), or "cpu:N" -> N of jax's CPU devices (set
              XLA_FLAGS=--xla_force_host_platform_device_count=N before jax starts)

Everything is abstract (ShapeDtypeStructs with their shardings: the train state of create_train_state, the global
batch, the frozen g_phi, the eval batch), so nothing is read, initialised or placed. The report, per chip:
memory (arguments, outputs, temporaries, generated code, total against the chip's HBM), GFLOP and bytes accessed
per step (XLA's cost analysis), the collectives of the compiled HLO by kind and dtype (count, operand bytes), a
roofline lower bound of the step time, the MFU ceiling it implies, and the compile time. With fit_batch (the
stage's --fit_batch), also the largest per-chip train batch that fits the chip's HBM (largest_batch: a few more
compiles of the train step).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from semeda_jax import evaluate, objective, parallel, train
from semeda_jax.models import build_segmentation_model
from semeda_jax.validation import ConfigError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip peak dense bf16 TFLOP/s, HBM bandwidth (TB/s) and HBM capacity (GiB); cores: TensorCores per
    chip that the Cloud TPU name counts (v4-32 = 16 chips)."""
    tflops: float
    hbm_tb_s: float
    hbm_gib: float
    cores: int


# The "key specifications" tables of https://cloud.google.com/tpu/docs/v4, /v5e, /v5p and /v6e: peak bf16 compute,
# HBM bandwidth (1200, 819, 2765, 1640 GB/s) and capacity per chip (the pages say GB; XLA's HBM limit, e.g. v5e's
# 15.75G, is in GiB). MFU is against the bf16 peak whatever the step's dtype.
CHIPS = {"v4": Chip(275, 1.2, 32, 2), "v5e": Chip(197, 0.819, 16, 1), "v5p": Chip(459, 2.765, 95, 2),
         "v6e": Chip(918, 1.64, 32, 1)}
# topology_name prefix and chip config of get_topology_desc for each generation.
TOPOLOGY_NAMES = {"v4": ("v4", "megacore"), "v5e": ("v5e", "default"), "v5p": ("v5", "megacore"),
                  "v6e": ("v6e", "default")}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def _chip_grid(generation: str, chips: int) -> tuple[int, ...]:
    """The chips' torus, doubling one axis per factor 2 as Cloud TPU slices grow: 3-D for v4/v5p (4 chips
    2x2x1, 16 2x2x4, 32 2x4x4), 2-D for v5e/v6e (8 chips 2x4, 16 4x4, 64 8x8)."""
    dims = 3 if generation in ("v4", "v5p") else 2
    order = list(range(dims)) + list(range(dims - 1, -1, -1)) * 8
    shape = [1] * dims
    for axis in order[:int(math.log2(chips))]:
        shape[axis] *= 2
    return tuple(shape)


def topology_devices(name: str) -> tuple[list, Chip | None]:
    """`name` ("v5p-32", "cpu:8", ...) -> (its devices, in mesh order; its Chip, None for CPU)."""
    if name.startswith("cpu:"):
        count = name[4:]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--topology: {name!r} should be cpu:N with N >= 1")
        devices = jax.devices("cpu")
        if len(devices) < int(count):
            raise ConfigError(f"--topology {name}: jax has {len(devices)} CPU device(s); set "
                              f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before starting")
        return devices[:int(count)], None
    match = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)
    chip = match and CHIPS[match[1]]
    if not match or int(match[2]) % chip.cores or not _power_of_two(int(match[2]) // chip.cores):
        raise ConfigError(f"--topology: {name!r} is not a known topology; expected cpu:N or <v4|v5e|v5p|v6e>-N "
                          f"with a power-of-two number of chips (e.g. v5p-32, v5e-16)")
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(f"--topology {name}: TPU topologies need libtpu: pip install -e .[tpu]")
    from jax.experimental import topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no TPU to hold, so no libtpu lockfile
    prefix, chip_config = TOPOLOGY_NAMES[match[1]]
    grid = _chip_grid(match[1], int(match[2]) // chip.cores)
    bounds = tuple(min(n, 2) for n in grid[:2]) + (1,)
    topology = topologies.get_topology_desc(platform="tpu", topology_name=f"{prefix}:{'x'.join(map(str, grid))}",
                                            chip_config_name=chip_config, chips_per_host_bounds=bounds,
                                            num_slices=1)
    return list(topology.devices), chip


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def abstract_inputs(config: ml_collections.ConfigDict, mesh: Mesh) -> dict:
    """The steps' arguments as ShapeDtypeStructs with their shardings: "state" (create_train_state's),
    "batch" (the global training batch), "frozen" (g_phi when a term needs it), "dropout_key", "eval_batch"."""
    model = build_segmentation_model(config, config.dataset.num_classes)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = jax.eval_shape(train.train_state_init(config, model), key)
    state = parallel.with_shardings(state, parallel.state_shardings(mesh, state, config.parallel.param_sharding))
    replicated = parallel.replicated(mesh)
    num_classes = config.dataset.num_classes
    frozen = {net: jax.eval_shape(lambda k, init=objective.FROZEN_NETS[net]: init(k, num_classes), key)
              for net in sorted(objective.frozen_nets(config))}
    size = parallel.local_batch_size(config.data.batch_size, mesh, multiple_of=config.train.grad_accum_steps)
    size *= jax.process_count()
    eval_size = parallel.local_eval_batch_size(config.data.eval_batch_size, mesh) * jax.process_count()
    pad = tuple(config.data.eval_pad_size)
    from semeda_jax.data.pipeline import scaled_size  # TensorFlow: imported only here

    def array(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    def batch(shape, dtype):
        return array(shape, dtype, parallel.batch_sharding(mesh, len(shape)))

    return {"state": state,
            "batch": {"image": batch((size, *config.data.crop_size, 3), jnp.float32),
                      "label": batch((size, *config.data.crop_size), jnp.int32)},
            "frozen": parallel.with_shardings(frozen, jax.tree_util.tree_map(lambda _: replicated, frozen)),
            "dropout_key": array((2,), jnp.uint32, replicated),
            "eval_batch": {key: batch(spec.shape, spec.dtype) for key, spec in evaluate.step_input_specs(
                eval_size, pad, scaled_size(pad, config.data.input_scale)).items()}}


def programs(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Callable[[], jax.stages.Lowered]]:
    """{name: () -> the lowered program}: "train" (jit_train_step of config.loss) and "eval:<evaluator>" for each
    of evaluate.evaluators (the counts step on replicated weights)."""
    inputs = abstract_inputs(config, mesh)
    state = inputs["state"]
    step = train.jit_train_step(config, state, mesh)
    lowered = {"train": lambda: step.lower(state, inputs["batch"], inputs["frozen"], inputs["dropout_key"])}
    replicated = parallel.replicated(mesh)
    variables = parallel.with_shardings(
        {"params": state.params, "batch_stats": state.batch_stats},
        jax.tree_util.tree_map(lambda _: replicated, {"params": state.params, "batch_stats": state.batch_stats}))
    for name, (spec, _) in evaluate.evaluators(config).items():
        counts = evaluate.jit_eval_counts(state.apply_fn, spec, int(config.model.output_stride),
                                          config.dataset.num_classes, tuple(config.eval.trimap_widths), mesh)
        lowered[f"eval:{name}"] = functools.partial(counts.lower, variables, inputs["eval_batch"])
    return lowered


def shape_bytes(shape: str) -> int:
    """Logical bytes of an HLO shape text ("bf16[3,3,64]{...}", or a tuple of them)."""
    return sum(DTYPE_BYTES.get(dtype, 0) * math.prod(int(n) for n in dims.split(",") if n)
               for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape))


def collectives(hlo: str) -> list[dict]:
    """The collectives of a compiled HLO text grouped by (kind, operand dtypes): [{kind, dtype, count, bytes}]
    with bytes the logical size of their operands (an async "-start" counts once, its "-done" not)."""
    shapes, found = {}, {}
    for line in hlo.splitlines():
        head, sep, rest = line.strip().removeprefix("ROOT ").partition(" = ")
        op = re.search(r" ([a-z][a-z0-9\-]*)\(", " " + rest) if sep else None
        if op is None:
            continue
        shapes[head.lstrip("%")] = rest[:op.start()]
        kind = op[1].removesuffix("-start")
        if kind not in COLLECTIVES:
            continue
        depth, end = 0, op.end() - 1
        for end in range(op.end() - 1, len(" " + rest)):
            depth += {"(": 1, ")": -1}.get((" " + rest)[end], 0)
            if depth == 0:
                break
        operands = [shapes.get(name, "") for name in re.findall(r"%([\w.\-]+)", (" " + rest)[op.end():end])]
        dtype = ",".join(sorted(set(re.findall(r"\b([a-z]+\d*)\[", " ".join(operands))))) or "?"
        entry = found.setdefault((kind, dtype), {"kind": kind, "dtype": dtype, "count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += sum(shape_bytes(shape) for shape in operands)
    return sorted(found.values(), key=lambda e: (COLLECTIVES.index(e["kind"]), e["dtype"]))


# XLA:TPU's out-of-memory errors: "Used 20.24G of 15.75G hbm", "... required for HLO temporaries (72.00G) exceeds
# available HBM (15.75G)" -> (need, unit, HBM, unit).
OUT_OF_MEMORY = (re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"),
                 re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"))
UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


class DoesNotFit(Exception):
    """XLA's out-of-memory compile error: `need` the bytes per chip it reports (None when it names none)."""

    def __init__(self, need: int | None, text: str):
        super().__init__(text)
        self.need, self.text = need, text


def compile_lowered(lower: Callable[[], jax.stages.Lowered]) -> jax.stages.Compiled:
    """lower().compile(); XLA's RESOURCE_EXHAUSTED ("Used 20.24G of 15.75G hbm") is raised as DoesNotFit."""
    try:
        return lower().compile()
    except Exception as error:  # noqa: BLE001 -- only the out-of-memory case is a user error
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        used = next(filter(None, (pattern.search(str(error)) for pattern in OUT_OF_MEMORY)), None)
        if used is None:
            raise DoesNotFit(None, str(error).strip().splitlines()[0][:200]) from None
        raise DoesNotFit(int(float(used[1]) * UNITS[used[2]]),
                         f"{used[1]}{used[2]}B of {used[3]}{used[4]}B HBM per chip") from None


def memory_sizes(compiled: jax.stages.Compiled) -> dict:
    """Bytes per device of a compiled program: arguments, outputs, aliased (donated arguments reused as
    outputs), temporaries, generated code, and their total (what the program holds at its peak)."""
    memory = compiled.memory_analysis()
    sizes = {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
             "aliased": memory.alias_size_in_bytes, "temporaries": memory.temp_size_in_bytes,
             "generated_code": memory.generated_code_size_in_bytes}
    sizes["total"] = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
                      + sizes["generated_code"])
    return sizes


def compile_program(name: str, lower: Callable[[], jax.stages.Lowered], topology: str, chip: Chip | None) -> dict:
    """Lower and compile one program -> its report entry; a program that does not fit the HBM is a one-line
    ConfigError naming the topology, the need and the HBM."""
    start = time.perf_counter()
    try:
        compiled = compile_lowered(lower)
    except DoesNotFit as error:
        raise ConfigError(f"--topology {topology}: the {name} step does not fit: it needs {error.text}") from None
    seconds = time.perf_counter() - start
    sizes = memory_sizes(compiled)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    entry = {"memory_bytes": sizes, "gflop": flops / 1e9, "gb_accessed": accessed / 1e9,
             "collectives": collectives(compiled.as_text()), "compile_s": seconds}
    if chip is not None:
        compute_s, memory_s = flops / (chip.tflops * 1e12), accessed / (chip.hbm_tb_s * 1e12)
        bound = max(compute_s, memory_s)
        entry.update(hbm_fraction=sizes["total"] / (chip.hbm_gib * GIB), roofline_ms=bound * 1e3,
                     bound_by="compute" if compute_s >= memory_s else "memory",
                     mfu_ceiling=compute_s / bound if bound else 0.0)
    return entry


def largest_batch(measure: Callable[[int], tuple[float, bool]], limit: float, step: int = 1,
                  known: dict | None = None, max_compiles: int = 6) -> dict:
    """The largest per-chip batch (a multiple of `step`) whose program fits `limit` bytes, in few compiles.

    measure(b) -> (bytes per chip at per-chip batch b, whether it compiled within the HBM); bytes may be inf
    when a failed compile names none. Memory is close to linear in the batch: b = step and 2 step are measured,
    the line through them extrapolated to `limit` and the prediction measured; when it does not fit, the next
    guess interpolates between the largest batch that fits and the smallest that does not (bisection when
    that one's bytes are unknown), until they are `step` apart or `max_compiles` measurements are spent.
    `known` {b: (bytes, fits)}: measurements already made (not counted).
    -> {"per_chip": the largest batch found to fit (0: not even `step`), "exact": whether the next multiple of
    `step` was found not to fit, "measured": {b: [bytes, fits]}}."""
    points = dict(known or {})
    compiles = 0

    def fits(b):
        nonlocal compiles
        if b not in points:
            if compiles == max_compiles:
                return None
            compiles += 1
            need, ok = measure(b)
            points[b] = (need, ok and need <= limit)
        return points[b][1]

    def result(best):
        best = max([best] + [b for b, (_, ok) in points.items() if ok])  # a known batch may be larger
        return {"per_chip": best, "exact": best + step in points and not points[best + step][1],
                "measured": {b: list(points[b]) for b in sorted(points)}}

    if not fits(step):
        return result(0)
    if not fits(2 * step):
        return result(step)
    lo, hi = 2 * step, None  # lo fits; hi (when known) does not
    slope = (points[2 * step][0] - points[step][0]) / step  # bytes per image
    guess = lo + step * int((limit - points[lo][0]) // (slope * step)) if slope > 0 else 2 * lo
    while guess > lo and (hi is None or guess < hi):
        verdict = fits(guess)
        if verdict is None:
            break
        if verdict and hi is None:  # the extrapolation verified
            lo = guess
            break
        lo, hi = (guess, hi) if verdict else (lo, guess)
        if hi - lo <= step:
            break
        need_lo, need_hi = points[lo][0], points[hi][0]
        share = (limit - need_lo) / (need_hi - need_lo) if math.isfinite(need_hi) and need_hi > need_lo else 0.5
        guess = min(max(lo + step * int(share * (hi - lo) // step), lo + step), hi - step)
    return result(lo)


def compile_report(config: ml_collections.ConfigDict, topology: str, log: Callable[[str], None] = print,
                   fit_batch: bool = False) -> dict:
    """The report of config's programs compiled for `topology` (see the module docstring); with `fit_batch`,
    also the largest per-chip batch of the train step that fits the chip's HBM (`largest_batch`)."""
    devices, chip = topology_devices(topology)
    if fit_batch and chip is None:
        raise ConfigError(f"--fit_batch: needs a TPU topology (a chip with a known HBM), not --topology {topology}")
    mesh = parallel.make_mesh(config, devices)
    report = {"topology": topology, "devices": len(devices), "mesh": dict(mesh.shape),
              "chip": dataclasses.asdict(chip) if chip else None, "programs": {}}
    for name, lower in programs(config, mesh).items():
        log(f"[compile] {name} step for {topology} ({len(devices)} devices)...")
        report["programs"][name] = compile_program(name, lower, topology, chip)
        log(program_line(name, report["programs"][name]))
        if name == "train" and fit_batch:  # before the eval steps: its log lines come first
            report["largest_batch"] = fit_train_batch(config, mesh, chip, report["programs"]["train"], log)
    return report


def fit_train_batch(config: ml_collections.ConfigDict, mesh: Mesh, chip: Chip, train_entry: dict,
                    log: Callable[[str], None]) -> dict:
    """largest_batch of the train step on `mesh` against the chip's HBM (per-chip batches in multiples of
    config.train.grad_accum_steps; the config's own batch, `train_entry`, counts as measured). With spatial
    partitioning (s chips per image) the batch is per data shard, i.e. per s chips ("chips_per_shard": s)."""
    data, limit = mesh.shape[parallel.DATA_AXIS], chip.hbm_gib * GIB
    total = train_entry["memory_bytes"]["total"]

    def measure(per_chip):
        sized = config.copy_and_resolve_references()
        sized.data.batch_size = per_chip * data
        log(f"[compile] train step at {per_chip} per chip...")
        try:
            need, refused = memory_sizes(compile_lowered(programs(sized, mesh)["train"]))["total"], ""
        except DoesNotFit as error:
            need, refused = (math.inf if error.need is None else error.need), error.text
        log(f"[compile] train step at {per_chip} per chip: {need / GIB:.2f} GiB/chip"
            + (f" (does not fit: {refused})" if refused else ""))
        return need, not refused

    found = largest_batch(measure, limit, step=config.train.grad_accum_steps,
                          known={config.data.batch_size // data: (total, total <= limit)})
    found.update(global_batch=found["per_chip"] * data, hbm_bytes=limit,
                 chips_per_shard=mesh.shape[parallel.SPATIAL_AXIS])
    log(f"[compile] {fit_line(found)}")
    return found


def fit_line(found: dict) -> str:
    measured = ", ".join(f"{b}: {need / GIB:.2f}{'' if fits else ' (no)'}" for b, (need, fits) in
                         found["measured"].items())
    shard = found.get("chips_per_shard", 1)
    unit = "per chip" if shard == 1 else f"per data shard of {shard} chips"
    return (f"largest train batch that fits: {found['per_chip']} {unit} ({found['global_batch']} global)"
            f"{'' if found['exact'] else ', by the linear fit'}; GiB/chip by per-chip batch: {measured}")


def program_line(name: str, entry: dict) -> str:
    memory = entry["memory_bytes"]
    line = (f"[compile] {name}: {memory['total'] / GIB:.2f} GiB/chip (args {memory['arguments'] / GIB:.2f}, "
            f"temp {memory['temporaries'] / GIB:.2f}), {entry['gflop']:.1f} GFLOP, {entry['gb_accessed']:.2f} GB "
            f"accessed, compiled in {entry['compile_s']:.0f} s")
    if "roofline_ms" in entry:
        line += (f"; {100 * entry['hbm_fraction']:.0f}% of HBM, roofline >= {entry['roofline_ms']:.2f} ms "
                 f"({entry['bound_by']}-bound), MFU <= {100 * entry['mfu_ceiling']:.0f}%")
    return line


def markdown(report: dict, title: str) -> str:
    """The report as Markdown: one table of the programs, one of their collectives."""
    chip = report["chip"]
    lines = [f"# {title}: compiled for {report['topology']}", "",
             f"{report['devices']} devices, mesh {report['mesh']}" + (
                 f"; chip: {chip['tflops']} bf16 TFLOP/s, {chip['hbm_tb_s']} TB/s, {chip['hbm_gib']} GiB HBM "
                 f"(Cloud TPU docs)" if chip else "; CPU: no roofline"), "",
             "| program | GiB/chip | args | outputs | temp | code | % HBM | GFLOP | GB accessed | roofline ms | "
             "MFU ceiling | compile s |", "|---" * 12 + "|"]
    for name, entry in report["programs"].items():
        memory = {k: v / GIB for k, v in entry["memory_bytes"].items()}
        roofline = (f"{100 * entry['hbm_fraction']:.0f}% | {entry['gflop']:.1f} | {entry['gb_accessed']:.2f} | "
                    f"{entry['roofline_ms']:.2f} ({entry['bound_by']}) | {100 * entry['mfu_ceiling']:.0f}%"
                    if "roofline_ms" in entry else f"- | {entry['gflop']:.1f} | {entry['gb_accessed']:.2f} | - | -")
        lines.append(f"| {name} | {memory['total']:.2f} | {memory['arguments']:.2f} | {memory['outputs']:.2f} | "
                     f"{memory['temporaries']:.2f} | {memory['generated_code']:.3f} | {roofline} | "
                     f"{entry['compile_s']:.0f} |")
    lines += ["", "| program | collective | dtype | count | MiB |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {c['kind']} | {c['dtype']} | {c['count']} | {c['bytes'] / 2 ** 20:.1f} |"
              for name, entry in report["programs"].items() for c in entry["collectives"]]
    if "largest_batch" in report:
        lines += ["", fit_line(report["largest_batch"]).capitalize()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, workdir: str, title: str) -> str:
    """WORKDIR/compile_report.{json,md}; returns the Markdown path."""
    with open(os.path.join(workdir, "compile_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    path = os.path.join(workdir, "compile_report.md")
    with open(path, "w") as f:
        f.write(markdown(report, title))
    return path
