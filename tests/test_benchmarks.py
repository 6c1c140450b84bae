"""The benchmark scripts still run: the GPU suite's rows are valid configs, the peer comparison runs at tiny size."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import peer

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_dry_run_checks_every_row():
    result = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--dry-run"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    plans = [line for line in result.stdout.splitlines() if line.startswith("plan: ")]
    assert len(plans) == 4 and "resnet101 OS 16 fp32 batch 8x513x513: ours ce, ce+semeda; peer eager" in plans[0]


@pytest.mark.usefixtures("float32_jax")
def test_peer_benchmark_runs_at_tiny_size_without_the_peer(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["peer", "--tiny", "--losses", "ce", "ce+semeda",
                                      "--peer-venv", str(tmp_path / "none")])
    peer.main()
    out = capsys.readouterr().out
    assert "peer skipped: no venv at" in out
    rows = [line for line in out.splitlines() if line.startswith("ours ")]
    assert [row.split()[1] for row in rows] == ["ce", "ce+semeda"]
    assert "SEMEDA term:" in out


@pytest.mark.parametrize("with_dense", [False, True])
def test_crf_benchmark_runs_at_tiny_size(with_dense, monkeypatch, capsys, tmp_path):
    """benchmarks/crf.py --tiny: one row per size; the dense CRF's columns only with its venv (skipped with a
    one-line message without it)."""
    from benchmarks import crf as crf_benchmark

    venv = crf_benchmark.DENSE_VENV if with_dense else tmp_path / "none"
    if with_dense and not (venv / "bin" / "python").exists():
        pytest.skip(f"no dense CRF venv at {venv} (python -m benchmarks.crf --setup-dense)")
    monkeypatch.setattr(sys, "argv", ["crf", "--tiny", "--dense-venv", str(venv)])
    crf_benchmark.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and ("dense CRF skipped: no venv at" in out) != with_dense
    assert all(("x |" in row) == with_dense for row in rows)


def test_xla_flags_sweep_runs_at_tiny_size_and_reports_rejected_flags():
    """benchmarks/xla_flags.py --tiny: the default and one candidate, each in its own worker process; a flag this
    jaxlib does not know is reported in the table, not raised."""
    command = [sys.executable, "-m", "benchmarks.xla_flags", "--tiny", "--flags=--xla_cpu_no_such_flag=true"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `default` |") and "| 1.00 | 0.0e+00 | 0.0e+00 |" in rows[0]
    assert rows[1].startswith("| `--xla_cpu_no_such_flag=true` | rejected: ")


def test_the_train_step_builds_without_tensorflow():
    """The GPU suite runs where TensorFlow is not installed: the step, the eval step and the peer benchmark
    import neither TensorFlow nor clu (which imports it); only reading data and writing summaries do."""
    code = ("import sys, benchmarks.peer, semeda_jax.train, semeda_jax.evaluate, semeda_jax.inference; "
            "print(sorted(m for m in ('tensorflow', 'clu') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_relationnet_protocol_pairs_its_arms_and_tests_multistep_on_the_relation_run(tmp_path, monkeypatch):
    """benchmarks/relationnet_protocol.py: every arm's config passes check_config; the loop trains the three
    trained arms (protocol.run_arm, trained end to end in tests/test_protocol.py) and evaluates `multistep` on
    the relation arm's run with shifted testing (both replaced here by known scores), then pairs them."""
    from benchmarks import guidance_protocol, protocol, relationnet_protocol as rn
    from semeda_jax import stages
    for arm in rn.ARMS:
        config = rn.arm_config(arm, 1)
        stages.check_config(config)
        assert config.seed == 1 and sum(config.phases[p].steps for p in ("constant", "decay")) == 500
    multistep, relation = rn.arm_config("multistep", 0), rn.arm_config("relation", 0)
    assert multistep.eval.inference.mode == "shifted" and relation.eval.inference.mode == "whole"
    multistep.eval.inference = relation.eval.inference
    assert multistep.to_dict() == relation.to_dict()
    gain = {"ohem": 0.0, "ohem_scl": 0.01, "relation": 0.03, "multistep": 0.04}
    calls = []

    def known(arm, seed):
        return dict(scores=dict.fromkeys(protocol.METRICS, 0.4 + gain[arm] + 0.002 * seed))

    def trained(config, workdir, log):
        arm = next(a for a, (scl, rel) in rn.TRAINED.items()
                   if (scl, rel) == ("scl" in config.loss, config.model.relation))
        calls.append(("train", arm, workdir))
        return known(arm, config.seed)

    def evaluated(config, run_dir, arm_dir, log):
        calls.append(("eval", config.eval.inference.mode, run_dir))
        return known("multistep", config.seed)

    monkeypatch.setattr(protocol, "run_arm", trained)
    monkeypatch.setattr(guidance_protocol, "evaluate_arm", evaluated)
    result = rn.run(str(tmp_path), seeds=(0, 1, 2), log=lambda line: None)
    assert [c[:2] for c in calls] == [("train", "ohem"), ("train", "ohem_scl"), ("train", "relation"),
                                      ("eval", "shifted")] * 3
    assert calls[3][2] == str(tmp_path / "relation" / "seed0")
    for (arm, base), delta in zip(rn.COMPARISONS, (0.01, 0.02, 0.01, 0.04)):
        paired = result["paired"][f"{arm} - {base}"]["miou"]
        assert paired["mean_delta"] == pytest.approx(delta) and paired["seeds_won"] == 3
    assert "| multistep - ohem | +4.00 [" in (tmp_path / "relationnet.md").read_text()


def test_relationnet_diagnosis_arms_match_train_and_test_sizes():
    """The relation study's arms: `_sliding` tests the trained arm's run with windows of its training crop (the
    same training config otherwise), `_whole` trains on crops of the whole image size (nothing else changed)."""
    from benchmarks import relationnet_protocol as rn
    for trained in ("ohem_scl", "relation"):
        base, sliding, whole = (rn.arm_config(arm, 2) for arm in (trained, f"{trained}_sliding", f"{trained}_whole"))
        assert rn.EVALUATED[f"{trained}_sliding"] == trained
        assert sliding.eval.inference.mode == "sliding"
        assert tuple(sliding.eval.inference.window) == tuple(sliding.eval.inference.stride) == (96, 96)
        assert tuple(whole.data.crop_size) == tuple(whole.dataset.image_size) == (96, 128)
        sliding.eval.inference, whole.data.crop_size = base.eval.inference, base.data.crop_size
        assert sliding.to_dict() == base.to_dict() == whole.to_dict()
    assert rn.REGISTERED_ARMS == ("ohem", "ohem_scl", "relation", "multistep")


def test_relationnet_pretrained_arms_start_from_the_backbone_pretraining(tmp_path, monkeypatch):
    """The amendment's arms: the pre-training is the `ohem` arm's model on the pre-training images for 2000
    steps (same 60/40 schedule shape); each `_pretrained` arm is its base arm plus a partial init from it."""
    from benchmarks import protocol, relationnet_protocol as rn
    from semeda_jax import stages
    pre = rn.pretrain_config()
    stages.check_config(pre)
    assert (pre.loss, pre.model.relation, pre.model.aux_heads) == ("ohem", False, "")
    assert (pre.phases.constant.steps, pre.phases.decay.steps) == (1200, 800)
    assert (pre.dataset.num_train, pre.dataset.seed) == (5000, protocol.PRETRAIN_DATA_SEED)
    for arm in ("ohem_scl", "relation"):
        config = rn.pretrained_arm_config(f"{arm}_pretrained", 1, False, "/pre")
        stages.check_config(config)
        assert (config.train.init_checkpoint, config.train.init_partial) == ("/pre", True)
        config.train.update(init_checkpoint="", init_partial=False)
        assert config.to_dict() == rn.arm_config(arm, 1).to_dict()
    calls = []
    monkeypatch.setattr(protocol, "pretrain", lambda config, workdir, log: calls.append(config) or "/w/pretrain")
    monkeypatch.setattr(protocol, "run_arm", lambda config, workdir, log: calls.append(
        config.train.init_checkpoint) or dict(scores=dict.fromkeys(protocol.METRICS, 0.5)))
    rn.run(str(tmp_path), seeds=(0, 1), arms=("ohem_scl_pretrained", "relation_pretrained"), log=lambda line: None)
    assert calls[0].to_dict() == pre.to_dict() and calls[1:] == ["/w/pretrain"] * 4


def test_allocator_benchmark_drives_the_peer_worker_and_reads_its_last_timing():
    from benchmarks import allocator as allocator_benchmark

    args = argparse.Namespace(batch=2, crop=64, step_count=3)
    requests = [json.loads(line) for line in allocator_benchmark.peer_requests(args).splitlines()]
    assert [r["cmd"] for r in requests] == ["setup", "time", "time", "quit"]
    assert requests[0]["encoder"] == "resnet101" and (requests[0]["batch"], requests[0]["crop"]) == (2, 64)
    assert requests[1]["steps"] == 1 and requests[2]["steps"] == 3  # one warm-up step, then the timed ones
    stdout = '{"warmup_s": 1.0}\nnoise\n{"step_s": [9.0]}\n{"step_s": [0.3, 0.1, 0.2]}\n'
    assert allocator_benchmark.peer_median(stdout) == 0.2
