"""benchmarks/crf_tuning.py (crf.py --tune): the selection and sensitivity on known numbers, the grid's cache, our CRF's grid
(one compilation, vmapped over the weights) against mean_field per setting, the dense CRF worker's stacks and
bilateral settings (with its venv), and the study end to end at smoke size."""
import json

import numpy as np
import pytest

from benchmarks import crf as crf_benchmark
from benchmarks import crf_tuning
from semeda_jax import crf

pytestmark = pytest.mark.usefixtures("float32_jax")

GRID = dict(a=(1, 2), b=(10.0, 20.0, 30.0))
ROWS = [dict(a=1, b=10.0, miou=0.50), dict(a=1, b=20.0, miou=0.70), dict(a=1, b=30.0, miou=0.60),
        dict(a=2, b=10.0, miou=0.65), dict(a=2, b=20.0, miou=0.55), dict(a=2, b=30.0, miou=0.70)]


def test_selection_and_sensitivity_on_known_numbers():
    assert crf_tuning.best_setting(ROWS) == dict(a=1, b=20.0, miou=0.70)  # the first of the two 0.70
    assert crf_tuning.sensitivity(ROWS, GRID) == dict(a=[0.70, 0.70], b=[0.65, 0.70, 0.70])


def test_grid_search_caches_groups(tmp_path):
    """Each group is evaluated once; an interrupted search continues with the missing groups only."""
    path, calls = str(tmp_path / "grid.json"), []

    def evaluate(group):
        calls.append(group["a"])
        if group["a"] == 2 and len(calls) == 2:
            raise KeyboardInterrupt  # stopped in the second group
        return [dict(r) for r in ROWS if r["a"] == group["a"]]

    with pytest.raises(KeyboardInterrupt):
        crf_tuning.grid_search(path, GRID, ("a",), evaluate, log=lambda line: None)
    assert len(json.load(open(path))) == 3
    rows = crf_tuning.grid_search(path, GRID, ("a",), evaluate, log=lambda line: None)
    assert calls == [1, 2, 2] and rows == ROWS
    assert crf_tuning.grid_search(path, dict(a=(2,), b=GRID["b"]), ("a",), evaluate, log=print) == ROWS[3:]


def test_grid_search_extended_grid_evaluates_incomplete_groups(tmp_path):
    """A grid extended after a search: groups missing the new settings are evaluated again (their rows replaced,
    not doubled), complete ones reused; rows off the grid stay in the file but not in the result."""
    path, calls = str(tmp_path / "grid.json"), []
    extended = [dict(r) for r in ROWS] + [dict(a=a, b=40.0, miou=0.1 * a) for a in (1, 2)]

    def evaluate(group):
        calls.append(group["a"])
        return [dict(r) for r in extended if r["a"] == group["a"] and r["b"] in grid["b"]]

    grid = GRID
    crf_tuning.grid_search(path, grid, ("a",), evaluate, log=lambda line: None)
    grid = dict(a=(1, 2, 3), b=(20.0, 30.0, 40.0))  # b=10 leaves the grid, b=40 and a=3 join it
    rows = crf_tuning.grid_search(path, grid, ("a",), evaluate, log=lambda line: None)
    assert calls == [1, 2, 1, 2, 3]
    assert sorted((r["a"], r["b"]) for r in rows) == [(a, b) for a in (1, 2) for b in (20.0, 30.0, 40.0)]
    assert sorted((r["a"], r["b"]) for r in json.load(open(path))) == sorted(
        [(a, b) for a in (1, 2) for b in (10.0, 20.0, 30.0, 40.0)])
    assert crf_tuning.grid_search(path, grid, ("a",), evaluate, log=lambda line: None) == rows
    assert calls == [1, 2, 1, 2, 3, 3]  # a=3 has no rows: evaluated each time, nothing else


def tiny_split(rng, n=3, height=12, width=16, classes=3):
    image, labels, probs = crf_benchmark.scene(height * n, width, classes, seed=1)
    labels = labels.copy()
    labels[0, :4] = 255  # void pixels are ignored
    split = lambda x: np.stack(np.split(x, n))  # noqa: E731
    return dict(probs=split(probs), images=split(image), labels=split(labels))


def test_guided_grid_matches_mean_field_per_setting(rng, monkeypatch):
    """guided_rows (every eps x weight from one jitted function, in chunks) = mean_field run per setting."""
    monkeypatch.setattr(crf_tuning, "CHUNK", 2)  # 3 images: two chunks
    data, classes = tiny_split(rng), 3
    eps_values, weights = (1.0, 100.0), (0.5, 4.0)
    rows = crf_tuning.guided_rows(data, 2, 3, eps_values, weights, classes)
    assert [(r["eps"], r["weight"]) for r in rows] == [(e, w) for e in eps_values for w in weights]
    mious = set()
    for row in rows:
        q = crf.mean_field(np.log(np.maximum(data["probs"], 1e-12)), data["images"].astype(np.float32), radius=2,
                           eps=row["eps"], iterations=3, weight=row["weight"])
        expected = crf_tuning.split_miou(data["labels"], np.argmax(np.asarray(q), -1), classes)
        assert row["miou"] == pytest.approx(expected) and row["radius"] == 2 and row["iterations"] == 3
        mious.add(round(row["miou"], 6))
    assert len(mious) > 1  # the settings differ


def test_dense_worker_stack_and_bilateral_settings(rng):
    """The worker's stack = its images one by one; the bilateral settings reach pydensecrf."""
    python = crf_benchmark.DENSE_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no dense CRF venv at {crf_benchmark.DENSE_VENV} (python -m benchmarks.crf --setup-dense)")
    data = tiny_split(rng)
    dense = crf_benchmark.DenseCRF(python)
    try:
        _, stacked = dense.run(data["probs"], data["images"], 5, want="out", sxy=20, srgb=5, compat=5)
        _, one = dense.run(data["probs"][1], data["images"][1], 5, want="out", sxy=20, srgb=5, compat=5)
        _, labels = dense.run(data["probs"], data["images"], 5, want="argmax", sxy=20, srgb=5, compat=5)
        _, default = dense.run(data["probs"][1], data["images"][1], 5, want="out")
        _, strong = dense.run(data["probs"][1], data["images"][1], 5, want="out", sxy=20, srgb=5, compat=50)
    finally:
        dense.close()
    assert stacked.shape == data["probs"].shape and labels.shape == data["labels"].shape
    np.testing.assert_allclose(stacked[1], one, atol=1e-6)
    np.testing.assert_array_equal(labels, np.argmax(stacked, -1))
    assert not np.allclose(default, one, atol=1e-3) and not np.allclose(strong, one, atol=1e-3)


def test_tuning_end_to_end(tmp_path, capsys):
    """--tune --tiny: two seeds' models, the grids, the val table and the plot; a second call without the dense
    CRF's venv reuses every part and skips the dense half with one message."""
    venv = crf_benchmark.DENSE_VENV
    with_dense = (venv / "bin" / "python").exists()
    result = crf_tuning.run_tuning(str(tmp_path), dense_venv=venv, tiny=True, **crf_tuning.TINY_TUNE)
    grids = crf_tuning.TINY_TUNE
    assert len(json.load(open(tmp_path / "grid_guided.json"))) == np.prod([len(v) for v in
                                                                            grids["guided_grid"].values()])
    assert [r["seed"] for r in result["per_seed"]] == [0, 1] and result["dense"] == with_dense
    assert set(result["paired"]) == ({f"{a} - {b}" for a, b in crf_tuning.PAIRS} if with_dense
                                     else {"guided_tuned - none", "guided_default - none"})
    chosen = result["tuned"]["guided"]["chosen"]
    assert chosen["miou"] == max(r["miou"] for r in json.load(open(tmp_path / "grid_guided.json")))
    row = result["per_seed"][0]
    assert result["paired"]["guided_tuned - none"]["mean_delta"] == pytest.approx(
        np.mean([r["guided_tuned"] - r["none"] for r in result["per_seed"]]))
    assert 0 < row["none"] <= 1 and (tmp_path / "crf_sensitivity.png").stat().st_size > 0
    table = (tmp_path / "crf_tuning.md").read_text()
    assert "| guided_tuned - none | " in table and "(tiny)" in table
    for folder in ("tuning", "val_seed0", "val_seed1"):
        assert (tmp_path / "unaries" / folder / "probs.npy").is_file()
    tuning = np.load(tmp_path / "unaries" / "tuning" / "images.npy")
    assert not np.array_equal(tuning, np.load(tmp_path / "unaries" / "val_seed0" / "images.npy"))  # data seed 2000
    capsys.readouterr()
    again = crf_tuning.run_tuning(str(tmp_path), dense_venv=tmp_path / "none", tiny=True,
                                     **crf_tuning.TINY_TUNE)
    assert "dense CRF skipped: no venv at" in capsys.readouterr().out
    assert again["per_seed"][1]["guided_tuned"] == result["per_seed"][1]["guided_tuned"] and not again["dense"]
