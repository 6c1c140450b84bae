"""semeda_jax/compare.py on fabricated workdirs (report.json with known numbers, the eval stage's fields): the
printed tables and compare.json, the paired statistics against scipy, the images that differ most (worst_images,
predictions/ masks), the plots, and the one-line refusals."""
import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

from semeda_jax import compare
from semeda_jax.data.palette import write_label_png

CLASSES = ("background", "cat", "dog")


def write_run(path, miou, *, iou=(0.9, 0.5, 0.3), boundary=None, trimap=(0.3, 0.5, 0.6, 0.7), **extra):
    """A workdir with the report.json the eval stage writes (reporting.REPORT_KEYS), plus `extra` keys."""
    path.mkdir(parents=True, exist_ok=True)
    report = dict(miou=miou, pixel_acc=0.95, mean_acc=0.7, mean_f1=0.75, emeasure=None,
                  iou=dict(zip(CLASSES, iou)), f1=dict.fromkeys(CLASSES, 0.8),
                  emeasure_per_class=dict.fromkeys(CLASSES, 0.9),
                  trimap=dict(widths=[1, 3, 5, 10], boundary_miou=list(trimap), interior_miou=[0.8, 0.81, 0.82, 0.83]),
                  confusion_matrix=[[5, 1, 0], [0, 4, 1], [1, 0, 3]], **extra)
    if boundary is not None:
        report.update(boundary_iou=boundary, boundary_fscore=boundary + 0.1,
                      boundary_iou_per_class=dict(zip(CLASSES, (boundary,) * 3)))
    (path / "report.json").write_text(json.dumps(report))
    return str(path)


def run(capsys, *args):
    """main(args) -> (exit status, stdout, stderr)."""
    status = compare.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_two_runs_side_by_side(tmp_path, capsys):
    a = write_run(tmp_path / "ce", 0.60, boundary=0.40)
    b = write_run(tmp_path / "semeda", 0.62, iou=(0.9, 0.45, 0.4), boundary=0.43, trimap=(0.35, 0.5, 0.6, 0.7))
    status, out, err = run(capsys, a, b, "--out", str(tmp_path / "out"))
    assert status == 0 and not err
    for row in ("| metric | ce | semeda | semeda - ce |", "| mIoU | 60.00 | 62.00 | +2.00 |",
                "| pixel accuracy | 95.00 | 95.00 | +0.00 |", "| E-measure | n/a | n/a | n/a |",
                "| boundary IoU | 40.00 | 43.00 | +3.00 |", "| boundary F | 50.00 | 53.00 | +3.00 |",
                "| trimap w=1 | 30.00 | 35.00 | +5.00 |", "One run per arm: no interval."):
        assert row in out, row
    # Per-class IoU: the largest difference first (dog +10, cat -5, background 0).
    iou = out[out.index("## Per-class IoU"):]
    assert iou.index("| dog | 30.00 | 40.00 | +10.00 |") < iou.index("| cat | 50.00 | 45.00 | -5.00 |") \
        < iou.index("| background |")
    assert "## Per-class boundary IoU" in out and "Per-image differences skipped: they need" in out
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["baseline"] == "ce" and saved["paired"] == {}
    assert saved["arms"]["semeda"]["scores"]["miou"] == 0.62 and saved["arms"]["ce"]["scores"]["emeasure"] is None
    assert saved["differences"]["semeda"]["boundary_fscore"] == pytest.approx(0.03)
    assert saved["arms"]["semeda"]["per_class"]["iou"]["dog"] == 0.4
    assert (tmp_path / "out" / "compare.md").read_text() in out
    for name in ("curves.png", "per_class.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.size[0] > 500
    assert not (tmp_path / "out" / "images.png").exists()


def test_a_run_without_boundary_metrics_shows_na(tmp_path, capsys):
    a = write_run(tmp_path / "old", 0.6)
    b = write_run(tmp_path / "new", 0.6, boundary=0.4)
    status, out, _ = run(capsys, a, b, "--out", str(tmp_path / "out"))
    assert status == 0 and "| boundary IoU | n/a | 40.00 | n/a |" in out


def test_paired_seeds_match_scipy(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = 0.6 + 0.01 * rng.standard_normal(4)
    arms = dict(A=base, B=base + 0.01 + 0.005 * rng.standard_normal(4), C=base - 0.002 * rng.standard_normal(4))
    specs = [f"{name}=" + ",".join(write_run(tmp_path / name / f"seed{s}", float(v), boundary=float(v) - 0.2)
                                   for s, v in enumerate(values)) for name, values in arms.items()]
    status, out, _ = run(capsys, *specs, "--out", str(tmp_path / "out"))
    assert status == 0
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    for arm in ("B", "C"):
        for metric in ("miou", "boundary_iou"):
            deltas = arms[arm] - arms["A"]  # boundary_iou = miou - 0.2 in every run: the same deltas
            low, high = sps.t.interval(0.95, len(deltas) - 1, loc=deltas.mean(), scale=sps.sem(deltas))
            got = saved["paired"][arm][metric]
            assert got["mean_delta"] == pytest.approx(deltas.mean(), rel=1e-9)
            assert got["std"] == pytest.approx(np.std(deltas, ddof=1), rel=1e-9)
            assert got["ci95"] == pytest.approx([low, high], rel=1e-9)
            assert got["seeds_won"] == int((deltas > 0).sum()) and got["seeds"] == 4
            assert got["decision"] == ("better" if low > 0 else "worse" if high < 0 else "no difference shown")
    b = saved["paired"]["B"]["miou"]
    cell = (f"{100 * b['mean_delta']:+.2f} [{100 * b['ci95'][0]:+.2f}, {100 * b['ci95'][1]:+.2f}], "
            f"{100 * b['std']:.2f}, {b['seeds_won']}/4: {b['decision']}")
    assert "## Paired against A over 4 seeds" in out and f"| mIoU | {cell} |" in out
    assert "| E-measure | n/a | n/a |" in out  # null in every report: no delta
    assert saved["arms"]["B"]["scores"]["miou"] == pytest.approx(arms["B"].mean())


def test_worst_images_ranked_by_difference(tmp_path, capsys):
    """worst_images as the eval stage writes it (per score, the lowest images first): per score a table of the
    images every run lists, the largest difference first; a difference in boundary widths is said."""
    def worst(miou, biou):
        return dict(miou=[dict(id=i, miou=v) for i, v in miou],
                    boundary_iou=[dict(id=i, boundary_iou=v) for i, v in biou])
    a = write_run(tmp_path / "a", 0.6, boundary=0.4, worst_images=worst([("z", 0.1), ("x", 0.2), ("y", 0.5)],
                                                                        [("x", 0.3)]))
    b = write_run(tmp_path / "b", 0.6, boundary=0.4, worst_images=worst([("y", 0.1), ("x", 0.25)], [("x", 0.2)]))
    for path, width in ((a, 3), (b, 5)):
        report = json.loads((tmp_path / path / "report.json").read_text())
        report["boundary"] = dict(width=width, tolerance="0.8% of diagonal")
        (tmp_path / path / "report.json").write_text(json.dumps(report))
    status, out, _ = run(capsys, a, b, "--out", str(tmp_path / "out"))
    assert status == 0
    table = out[out.index("## Images that differ most"):]
    miou, biou = table.index("mIoU (%) of the images in every run's worst_images:"), table.index("boundary IoU (%)")
    assert miou < table.index("| y | 50.00 | 10.00 |") < table.index("| x | 20.00 | 25.00 |") < biou
    assert table.index("| x | 30.00 | 20.00 |") > biou and "| z |" not in table
    assert 'different band widths or tolerances (report.json "boundary"): a: [{"width": 3' in out
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["images"]["tables"][0]["rows"][0] == dict(id="y", a=0.5, b=0.1)


def test_prediction_masks_ranked_by_disagreement(tmp_path, capsys):
    masks = {"one.jpg.png": np.zeros((4, 5), np.uint8), "two.jpg.png": np.ones((4, 5), np.uint8)}
    dirs = []
    for name, changed in (("a", 0), ("b", 2), ("c", 5)):  # b and c: pixels of "two" unlike a's
        run_dir = tmp_path / name
        write_run(run_dir, 0.6)
        (run_dir / "predictions").mkdir()
        for image, mask in masks.items():
            mask = mask.copy()
            if image == "two.jpg.png":
                mask.reshape(-1)[:changed] = 2
            write_label_png(run_dir / "predictions" / image, mask)
        dirs.append(str(run_dir))
    status, out, _ = run(capsys, *dirs, "--out", str(tmp_path / "out"))
    assert status == 0
    table = out[out.index("## Images that differ most"):]
    assert "pixels unlike a's mask (%):" in table
    assert table.index("| two.jpg.png | 10.00 | 25.00 |") < table.index("| one.jpg.png | 0.00 | 0.00 |")
    with Image.open(tmp_path / "out" / "images.png") as image:
        assert image.format == "PNG"


def test_missing_report_is_one_line_naming_the_folder(tmp_path, capsys):
    a = write_run(tmp_path / "a", 0.6)
    (tmp_path / "empty").mkdir()
    status, out, err = run(capsys, a, str(tmp_path / "empty"))
    assert status == 2 and not out
    assert err == f"error: {tmp_path / 'empty'}: no report.json (run the eval stage there first: --stages=eval)\n"
    status, _, err = run(capsys, f"A={a}", f"B={a},{tmp_path / 'nowhere'}")  # counts first: unequal
    assert status == 2 and err.count("\n") == 1


def test_refusals_in_one_line(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", 0.6), write_run(tmp_path / "b", 0.6)
    status, _, err = run(capsys, f"A={a},{b}", f"B={b}")
    assert status == 2 and err == ("error: arms have unequal run counts {'A': 2, 'B': 1}: runs pair by position "
                                   "(seed), give every arm the same number\n")
    status, _, err = run(capsys, a)
    assert status == 2 and "two or more" in err and err.count("\n") == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{")
    status, _, err = run(capsys, a, str(tmp_path / "bad"))
    assert status == 2 and str(tmp_path / "bad" / "report.json") in err and err.count("\n") == 1


def test_folders_with_the_same_name_are_named_by_path():
    arms = compare.parse_arms(["x/seed0", "y/seed0", "z/other"])
    assert arms == {"x/seed0": ["x/seed0"], "y/seed0": ["y/seed0"], "other": ["z/other"]}
