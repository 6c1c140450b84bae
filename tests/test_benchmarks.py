"""The benchmark scripts still run: the GPU suite's rows are valid configs, the peer comparison runs at tiny size."""
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


def test_the_train_step_builds_without_tensorflow():
    """The GPU suite runs where TensorFlow is not installed: the step, the eval step and the peer benchmark
    import neither TensorFlow nor clu (which imports it); only reading data and writing summaries do."""
    code = ("import sys, benchmarks.peer, semeda_jax.train, semeda_jax.evaluate, semeda_jax.inference; "
            "print(sorted(m for m in ('tensorflow', 'clu') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
