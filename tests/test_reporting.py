"""Report files: report.json is strict JSON (a score that does not exist is null, not a NaN literal) and
report.md shows it as n/a."""
import json

import numpy as np

from semeda_jax import evaluate, reporting


def reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_absent_class_is_null_in_strict_json(tmp_path):
    # 3 classes; class 2 is in neither truth nor prediction: its IoU, F1 and E-measure do not exist.
    cm = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    totals = {"cm": cm, "band_cm": np.stack([cm, cm]), "interior_cm": np.stack([cm, cm]),
              "emeasure_sums": np.array([0.8, 0.7, 0.0]), "emeasure_counts": np.array([1, 1, 0])}
    report = evaluate.summarize(totals, (1, 3), ["a", "b", "c"])
    assert np.isnan(report["iou"]["c"])
    reporting.write_report(report, str(tmp_path))
    with open(tmp_path / "report.json") as f:
        parsed = json.loads(f.read(), parse_constant=reject_constant)
    assert parsed["iou"]["c"] is None and parsed["f1"]["c"] is None and parsed["emeasure_per_class"]["c"] is None
    assert parsed["iou"]["a"] == report["iou"]["a"] and parsed["miou"] == report["miou"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| c | n/a | n/a | n/a |" in markdown and "nan" not in markdown.lower()
