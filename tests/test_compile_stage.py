"""The compile stage (compile_report.py): topology names, the HLO collectives parser, the out-of-memory error, and
the smoke config's train and eval steps compiled on 8 simulated CPU devices (and a TPU topology where libtpu is
installed) with float32 gradient all-reduces under mixed precision.

The 8-device and TPU runs are this file run as a script in a subprocess: XLA_FLAGS (8 CPU devices) must be set
before jax initialises, which in the pytest process it already has.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from semeda_jax import compile_report
from semeda_jax.models.layers import SpatialConv
from semeda_jax.validation import ConfigError

GIB = compile_report.GIB
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HLO = """
ENTRY %main {
  %p0 = bf16[3,3,64,64]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  %p1 = f32[256]{0} parameter(1)
  %all-reduce.1 = (bf16[3,3,64,64]{3,2,1,0:T(8,128)(2,1)}, f32[256]{0}) all-reduce(%p0, %p1), channel_id=1
  %ag = f32[8,256]{1,0} all-gather-start(%p1), dimensions={0}
  %agd = f32[8,256]{1,0} all-gather-done(%ag)
  ROOT %all-reduce.2 = f32[256]{0} all-reduce(%p1), to_apply=%add
}
"""


def test_collectives_by_kind_and_dtype():
    found = {(c["kind"], c["dtype"]): (c["count"], c["bytes"]) for c in compile_report.collectives(HLO)}
    assert found == {("all-reduce", "bf16,f32"): (1, 3 * 3 * 64 * 64 * 2 + 256 * 4),
                     ("all-reduce", "f32"): (1, 256 * 4), ("all-gather", "f32"): (1, 256 * 4)}


@pytest.mark.parametrize("name, grid", [("v5p-8", (2, 2, 1)), ("v5p-32", (2, 2, 4)), ("v4-32", (2, 2, 4)),
                                        ("v5e-16", (4, 4)), ("v6e-8", (2, 4)), ("v5e-64", (8, 8))])
def test_chip_grid(name, grid):
    generation, cores = name.split("-")
    assert compile_report._chip_grid(generation, int(cores) // compile_report.CHIPS[generation].cores) == grid


@pytest.mark.parametrize("name, message", [("v7-8", "not a known topology"), ("v5p-12", "not a known topology"),
                                           ("cpu:x", "cpu:N"), ("cpu:4096", "xla_force_host_platform_device_count")])
def test_bad_topologies(name, message):
    with pytest.raises(ConfigError, match=message):
        compile_report.topology_devices(name)


def test_missing_libtpu_names_the_extra(monkeypatch):
    monkeypatch.setattr(compile_report.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"--topology v5p-32: .*pip install -e \.\[tpu\]"):
        compile_report.topology_devices("v5p-32")


def test_program_entry_and_roofline():
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    entry = compile_report.compile_program("matmul", lambda: jax.jit(lambda a: a @ a).lower(x), "v5p-8",
                                           compile_report.CHIPS["v5p"])
    assert entry["gflop"] == pytest.approx(2 * 256 ** 3 / 1e9, rel=0.01)
    assert entry["memory_bytes"]["arguments"] == entry["memory_bytes"]["outputs"] == 256 * 256 * 4
    assert entry["roofline_ms"] >= 1e3 * entry["gflop"] * 1e9 / 459e12 and 0 < entry["mfu_ceiling"] <= 1


@pytest.mark.parametrize("text, need", [
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 20.24G of "
     "15.75G hbm. Exceeded hbm capacity by 4.49G.\nmore", "20.24G"),
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (20.24G) exceeds "
     "available HBM (15.75G).", "20.24G")])
def test_out_of_memory_is_one_line(text, need):
    def lower():
        raise RuntimeError(text)

    with pytest.raises(ConfigError) as error:
        compile_report.compile_program("train", lower, "v5e-16", compile_report.CHIPS["v5e"])
    assert str(error.value) == ("--topology v5e-16: the train step does not fit: it needs 20.24GB of 15.75GB HBM "
                                "per chip")
    with pytest.raises(compile_report.DoesNotFit) as error:
        compile_report.compile_lowered(lower)
    assert error.value.need == int(20.24 * 2 ** 30)


def counting(need, cap=None):
    """A fake compile of the train step: need(b) bytes per chip, out of memory above `cap` (XLA's own limit);
    -> (measure, the batches it was called with)."""
    calls = []

    def measure(b):
        calls.append(b)
        return need(b), cap is None or need(b) <= cap

    return measure, calls


@pytest.mark.parametrize("need, limit, largest, calls", [
    (lambda b: 10 + 3 * b, 100, 30, [1, 2, 30]),  # linear: the prediction is the answer, verified once
    (lambda b: 10 + 3 * b, 12, 0, [1]),  # not even one image
    (lambda b: 10 + 3 * b, 15, 1, [1, 2]),  # two do not fit: no prediction to verify
    (lambda b: 10 + 3 * b + b * b / 10, 100, 18, [1, 2, 27, 16, 18, 19]),  # super-linear: stepped down
    (lambda b: 10 + 3 * b if b < 20 else math.inf, 100, 19, [1, 2, 30, 16, 23, 19, 21, 20]),  # no size: bisect
    (lambda b: 10 + 3 * b - b * b / 100, 100, 30, [1, 2, 30]),  # sub-linear: the prediction fits
])
def test_largest_batch_search(need, limit, largest, calls):
    measure, called = counting(need)
    found = compile_report.largest_batch(measure, limit, max_compiles=8)
    assert found["per_chip"] == largest and called == calls
    assert brute_force(need, limit) >= largest  # never claims a batch that does not fit
    if found["exact"]:
        assert brute_force(need, limit) == largest


def brute_force(need, limit):
    return max([b for b in range(1, 200) if need(b) <= limit], default=0)


def test_largest_batch_counts_xla_out_of_memory_and_known_points():
    # XLA rejects 12 bytes although the limit says 16: the compile, not the byte count, decides
    measure, called = counting(lambda b: 10 + 3 * b, cap=15)
    found = compile_report.largest_batch(measure, 16, known={1: (13, True)})
    assert found == {"per_chip": 1, "exact": True, "measured": {1: [13, True], 2: [16, False]}} and called == [2]


def test_largest_batch_keeps_a_larger_known_batch():
    measure, called = counting(lambda b: 10 + 3 * b + b * b / 10)
    found = compile_report.largest_batch(measure, 100, max_compiles=3, known={18: (96.4, True)})
    assert called == [1, 2, 27] and found["per_chip"] == 18 and not found["exact"]


def test_largest_batch_in_micro_batch_multiples_and_compile_budget():
    measure, called = counting(lambda b: 10 + 3 * b + b * b / 10)
    found = compile_report.largest_batch(measure, 100, step=4, max_compiles=3)
    assert called == [4, 8, 20] and found["per_chip"] == 8 and not found["exact"]


def test_fit_train_batch_compiles_the_train_step_at_each_per_chip_batch(monkeypatch):
    """fit_train_batch on the real lowering, with XLA's compile and memory analysis faked: 1 GiB + 3 GiB per
    image of the lowered global batch on a 4 GiB chip; the config's own batch (2 per chip) is not compiled again."""
    from configs import demo

    config = demo.get_config("smoke")
    config.data.batch_size = 2
    config.train.grad_accum_steps = 1
    lowered_batches = []

    def compile_lowered(lower):
        lowered_batches.append(lower().args_info[0][1]["image"].shape[0])
        return lowered_batches[-1]

    monkeypatch.setattr(compile_report, "compile_lowered", compile_lowered)
    monkeypatch.setattr(compile_report, "memory_sizes", lambda images: {"total": (1 + 3 * images) * GIB})
    chip = compile_report.Chip(tflops=1, hbm_tb_s=1, hbm_gib=4, cores=1)
    mesh = compile_report.parallel.make_mesh(config, jax.devices("cpu")[:1])
    found = compile_report.fit_train_batch(config, mesh, chip, {"memory_bytes": {"total": 7 * GIB}}, print)
    assert lowered_batches == [1] and found["per_chip"] == 1 and found["exact"]
    assert found["measured"] == {1: [4 * GIB, True], 2: [7 * GIB, False]} and found["global_batch"] == 1
    assert found["chips_per_shard"] == 1 and "1 per chip (1 global)" in compile_report.fit_line(found)
    # With spatial partitioning a data shard is s chips: the batch found is per shard, and says so.
    assert "1 per data shard of 2 chips (1 global)" in compile_report.fit_line({**found, "chips_per_shard": 2})


def test_fit_batch_needs_a_chip():
    from configs import demo

    with pytest.raises(ConfigError, match="--fit_batch: needs a TPU topology"):
        compile_report.compile_report(demo.get_config("smoke"), "cpu:1", fit_batch=True)


def test_bf16_conv_kernel_gradient_in_float32():
    """layers.with_f32_param_grad: the kernel's gradient is the float32 one of the bfloat16 values (the sum over
    the batch, which XLA all-reduces across devices, is not rounded to bfloat16)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 8), jnp.float32)
    params = SpatialConv(8, 3).init(jax.random.PRNGKey(1), x)
    g = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 8), jnp.float32).astype(jnp.bfloat16)
    grad = jax.vjp(lambda p: SpatialConv(8, 3, dtype=jnp.bfloat16).apply(p, x), params)[1](g)[0]
    rounded = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params)
    reference = jax.vjp(lambda p: SpatialConv(8, 3).apply(p, x.astype(jnp.bfloat16).astype(jnp.float32)),
                        rounded)[1](g.astype(jnp.float32))[0]
    kernel = grad["params"]["kernel"]
    assert kernel.dtype == jnp.float32
    assert jnp.allclose(kernel, reference["params"]["kernel"], rtol=1e-5, atol=1e-4)


def run_stage(topology: str, tmp_path) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, os.path.abspath(__file__), topology, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.isfile(tmp_path / "compile_report.md")
    return json.loads((tmp_path / "compile_report.json").read_text())


def check_report(report: dict, devices: int) -> None:
    """Both programs compiled on `devices`, with sizes, and the train step's gradients summed in float32."""
    assert report["devices"] == devices and set(report["programs"]) == {"train", "eval:periodic"}
    for entry in report["programs"].values():
        assert entry["memory_bytes"]["total"] > 0 and entry["gflop"] > 0
    all_reduces = [c for c in report["programs"]["train"]["collectives"] if c["kind"] == "all-reduce"]
    assert all_reduces and all(c["dtype"] == "f32" for c in all_reduces), all_reduces


def test_compile_stage_on_8_cpu_devices(tmp_path):
    report = run_stage("cpu:8", tmp_path)
    check_report(report, 8)
    assert report["chip"] is None and "roofline_ms" not in report["programs"]["train"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e .[tpu])")
def test_compile_stage_on_a_tpu_topology(tmp_path):
    report = run_stage("v5e-4", tmp_path)
    check_report(report, 4)
    assert 0 < report["programs"]["train"]["roofline_ms"] and report["chip"]["hbm_gib"] == 16


if __name__ == "__main__":  # the stage on the smoke config in bfloat16: python tests/test_compile_stage.py TOPOLOGY DIR
    from configs import cityscapes
    from semeda_jax import stages

    config = cityscapes.get_config("smoke")
    config.mixed_precision = True
    config.data.batch_size = 8  # one example per device
    stages.run_compile(config, sys.argv[2], topology=sys.argv[1])
