"""Report files: report.json is strict JSON (a score that does not exist is null, not a NaN literal) and
report.md shows it as n/a; the worst-image galleries have their size, list their images and scores, and their
legend names the classes shown; without worst images none is written."""
import json

import numpy as np
import pytest
from PIL import Image

from semeda_jax import evaluate, metrics, reporting

NAMES = ["a", "b", "c"]


def reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def summary(boundary_pixels=(0, 0)):
    """A 3-class report; class 2 is in neither truth nor prediction: none of its scores exists."""
    cm = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    totals = {"cm": cm, "band_cm": np.stack([cm, cm]), "interior_cm": np.stack([cm, cm]),
              "emeasure_sums": np.array([0.8, 0.7, 0.0]), "emeasure_counts": np.array([1, 1, 0]),
              **dict(zip(metrics.BOUNDARY_COUNT_KEYS, np.array([[2, 1, 0], [4, 3, 0], [3, 1, 0], [4, 2, 0],
                                                                [2, 2, 0], [3, 3, 0]])))}
    return evaluate.summarize(totals, (1, 3), NAMES, boundary_pixels=boundary_pixels)


def test_absent_class_is_null_in_strict_json(tmp_path):
    report = summary()
    assert np.isnan(report["iou"]["c"]) and np.isnan(report["boundary_iou_per_class"]["c"])
    reporting.write_report(report, str(tmp_path))
    with open(tmp_path / "report.json") as f:
        parsed = json.loads(f.read(), parse_constant=reject_constant)
    assert parsed["iou"]["c"] is None and parsed["f1"]["c"] is None and parsed["emeasure_per_class"]["c"] is None
    assert parsed["boundary_iou_per_class"]["c"] is None and parsed["boundary_fscore_per_class"]["c"] is None
    assert parsed["iou"]["a"] == report["iou"]["a"] and parsed["miou"] == report["miou"]
    assert parsed["boundary_iou"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert parsed["boundary_iou_per_class"]["b"] == pytest.approx(1 / 3)
    assert parsed["boundary"] == {"width": "2% of diagonal", "tolerance": "0.8% of diagonal"}
    markdown = (tmp_path / "report.md").read_text()
    assert "| c | n/a | n/a | n/a |" in markdown and "nan" not in markdown.lower()
    assert "| c | n/a | n/a |" in markdown.split("## Boundary IoU")[1]
    assert "worst" not in markdown and "worst_images" not in parsed
    assert not list(tmp_path.glob("worst_*.png"))  # no worst images (config.eval.num_worst_images = 0)


def panel(rng, image_id, shape):
    label = rng.integers(0, 2, shape)
    label[0] = 255
    return {"id": image_id, "image": rng.integers(0, 256, (*shape, 3), dtype=np.uint8), "label": label,
            "prediction": rng.integers(0, 2, shape), "entropy": rng.random(shape)}


def test_worst_image_galleries(tmp_path, rng):
    report = summary(boundary_pixels=(5, 0))
    shapes = {"x": (30, 40), "y": (40, 40), "z": (20, 40)}
    report["worst_panels"] = {i: panel(rng, i, shape) for i, shape in shapes.items()}
    report["worst_images"] = {"miou": [{"id": "y", "miou": 0.1}, {"id": "x", "miou": 0.2}],
                              "boundary_iou": [{"id": "z", "boundary_iou": 0.05}, {"id": "x", "boundary_iou": 0.3},
                                               {"id": "y", "boundary_iou": 0.4}]}
    reporting.write_report(report, str(tmp_path))
    maps = [m for p in report["worst_panels"].values() for m in (p["label"], p["prediction"])]
    assert [name for name, _ in reporting.legend_entries(maps, NAMES)] == ["a", "b", "void"]
    for file, count in (("worst_miou.png", 2), ("worst_boundary.png", 3)):
        legend = reporting.legend_inches(maps, NAMES, reporting.GALLERY_COLUMN_INCHES * count)
        size = np.array(reporting.gallery_size(count, (40, 40), legend)) * reporting.GALLERY_DPI
        with Image.open(tmp_path / file) as png:
            assert png.size == tuple(np.round(size).astype(int))
    parsed = json.loads((tmp_path / "report.json").read_text())
    assert parsed["worst_images"]["boundary_iou"][2] == {"id": "y", "boundary_iou": 0.4}
    assert parsed["boundary"] == {"width": 5, "tolerance": "0.8% of diagonal"}
    markdown = (tmp_path / "report.md").read_text()
    assert "Boundary IoU band width: 5 px" in markdown
    assert "| y | 0.1000 |\n| x | 0.2000 |" in markdown.split("## Lowest mIoU")[1]
    assert "![worst mIoU](worst_miou.png)" in markdown and "![worst Boundary IoU](worst_boundary.png)" in markdown
