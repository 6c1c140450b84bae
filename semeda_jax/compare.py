"""Compare runs: the eval reports (WORKDIR/report.json) of two or more workdirs side by side.

    python -m semeda_jax.compare DIR_A DIR_B [DIR_C ...]                # one run per arm, named by its folder
    python -m semeda_jax.compare A=dir1,dir2,dir3 B=dir4,dir5,dir6      # arms of paired seeds, paired by position
    python -m semeda_jax.compare ... --out=OUT --images=10

Writes into OUT (default ./compare; the runs' folders are only read) and prints compare.md:
    compare.md     the tables below, with the plots linked
    compare.json   every number of the tables (null where a score does not exist)
    curves.png     trimap boundary (solid) and non-boundary (dashed) mIoU against the band width, one colour per arm
    per_class.png  per-class IoU of each arm, the classes sorted by the largest difference between arms
    images.png     the masks of the images that differ most, when the workdirs hold predictions/ (below)

Tables: every scalar metric of the reports (whatever report.json holds: mIoU, mean F1, pixel and mean accuracy,
E-measure, boundary IoU / F when the eval stage wrote them; "n/a" where a run lacks it) and the trimap boundary
mIoU per width, in %, with each arm's difference to the first arm in points; every per-class table of the
reports (IoU, F1, E-measure, boundary IoU / F), the classes sorted by the largest difference.
An arm of several runs shows the mean of its runs. With several runs per arm, run i of every arm pairs with run i
of the first (seed i): per metric the mean paired delta, its 95% t interval, the std and the seeds won, and the
protocols' decision rule (better / worse / no difference shown; semeda_jax/stats.py).

Images that differ most: from per-image scores in the reports ("worst_images": a list of {"id": ..., "miou"
(or another score): ...} or an {id: score} dict), over the images every run scores; else from the masks in
WORKDIR/predictions/ (the fraction of pixels where an arm's mask differs from the first arm's, images every run
predicted, runs paired by position); else skipped with a note saying what is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from semeda_jax import stats  # noqa: E402
from semeda_jax.data.palette import colorize, read_label_png  # noqa: E402
from semeda_jax.reporting import json_ready  # noqa: E402

# Display names; a metric or per-class table not named here is shown by its report.json key.
METRIC_NAMES = dict(miou="mIoU", mean_f1="mean F1", pixel_acc="pixel accuracy", mean_acc="mean accuracy",
                    emeasure="E-measure", boundary_iou="boundary IoU", boundary_fscore="boundary F")
CLASS_TABLE_NAMES = dict(iou="IoU", f1="F1", emeasure_per_class="E-measure", merged_f1="merged-parts F1",
                         boundary_iou_per_class="boundary IoU", boundary_fscore_per_class="boundary F")
IMAGE_SCORE_KEYS = ("miou", "iou", "score")  # the per-image score of a worst_images entry, first found
PLOT_CLASSES = 40  # per_class.png shows at most this many classes (those that differ most)


class CompareError(ValueError):
    """A one-line reason the comparison cannot be made (exit status 2)."""


def parse_arms(specs: list[str]) -> dict[str, list[str]]:
    """['A=d1,d2', 'd3'] -> {'A': ['d1', 'd2'], 'd3': ['d3']} (a bare folder is an arm of one run, named by its
    folder's name, or by its path where two names clash); refuses fewer than 2 arms and unequal run counts."""
    named = [spec.partition("=") for spec in specs]
    bare = [os.path.basename(os.path.normpath(s)) for s, sep, _ in named if not sep]
    arms = {}
    for name, sep, dirs in named:
        runs = [d for d in dirs.split(",") if d] if sep else [name]
        if not sep:
            base = os.path.basename(os.path.normpath(name))
            name = base if bare.count(base) == 1 else os.path.normpath(name)
        if not runs or name in arms:
            raise CompareError(f"arm {name!r}: {'named twice' if name in arms else 'no folder after ='}")
        arms[name] = runs
    if len(arms) < 2:
        raise CompareError(f"give two or more runs or arms to compare, got {list(arms)}")
    counts = {name: len(runs) for name, runs in arms.items()}
    if len(set(counts.values())) > 1:
        raise CompareError(f"arms have unequal run counts {counts}: runs pair by position (seed), give every arm "
                           f"the same number")
    return arms


def load_report(workdir: str) -> dict:
    """WORKDIR/report.json (CompareError naming the folder when it is missing or unreadable)."""
    path = os.path.join(workdir, "report.json")
    if not os.path.isfile(path):
        raise CompareError(f"{workdir}: no report.json (run the eval stage there first: --stages=eval)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise CompareError(f"{path}: cannot be read ({str(error).splitlines()[0]})") from None


def _float(value) -> float:
    return np.nan if value is None else float(value)


def scalars(report: dict) -> dict[str, float]:
    """Every top-level number of a report (null: NaN), then its trimap boundary mIoU per width ('trimap w=K')."""
    out = {k: _float(v) for k, v in report.items()
           if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    trimap = report.get("trimap") or {}
    for width, value in zip(trimap.get("widths", []), trimap.get("boundary_miou", [])):
        out[f"trimap w={width}"] = _float(value)
    return out


def class_tables(report: dict) -> dict[str, dict[str, float]]:
    """Every per-class table of a report: iou, f1, merged_f1 and every "*_per_class" {class: score} dict."""
    return {k: {c: _float(v) for c, v in table.items()} for k, table in report.items()
            if k in ("iou", "f1", "merged_f1") or k.endswith("_per_class")}


def ordered(keys, names: dict) -> list:
    """The keys named in `names` in its order, then the others sorted."""
    keys = set(keys)
    return [k for k in names if k in keys] + sorted(keys - set(names))


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else np.nan


def image_scores(report: dict) -> dict[str, dict[str, float]] | None:
    """A report's "worst_images" ({score: [{"id", score: value}, ...]}, lowest first) as {score: {id: value}},
    or None when the report has none."""
    worst = report.get("worst_images")
    if worst is None:
        return None
    return {name: {str(e["id"]): _float(e.get(name)) for e in entries} for name, entries in worst.items()}


def mask_names(workdir: str) -> set[str] | None:
    """The mask files of WORKDIR/predictions/ (what `main.py --images` writes), or None without that folder."""
    folder = os.path.join(workdir, "predictions")
    if not os.path.isdir(folder):
        return None
    return {n for n in os.listdir(folder) if n.endswith(".png") and os.path.isfile(os.path.join(folder, n))}


def _most_different(rows: list[dict], columns: list[str], top: int, reference=()) -> list[dict]:
    """The `top` rows with the largest spread of their `columns` values (and `reference`); NaN ones last."""
    spread = lambda row: np.nan_to_num(np.ptp([*reference, *(row[c] for c in columns)]), nan=-1.0)
    return sorted(rows, key=lambda row: -spread(row))[:top]


def image_differences(arms: dict[str, list[str]], reports: dict[str, list[dict]], top: int) -> dict:
    """The `top` images that differ most between the arms -> {"source", "note", "tables": [{"measure", "rows"}]}:
    per image each arm's mean score (worst_images: a table per score, over the images every run lists), or each
    arm's mean fraction of pixels unlike the first arm's masks (predictions/, runs paired by position)."""
    names = list(arms)
    scores = {a: [image_scores(r) for r in reports[a]] for a in names}
    every = [s for runs in scores.values() for s in runs]
    if all(s is not None for s in every):
        tables = []
        for name in ordered(set.intersection(*(set(s) for s in every)), METRIC_NAMES):
            common = set.intersection(*(set(s[name]) for s in every))
            rows = [dict(id=i, **{a: _mean([s[name][i] for s in scores[a]]) for a in names}) for i in sorted(common)]
            tables.append(dict(measure=f"{METRIC_NAMES.get(name, name)} (%) of the images in every run's "
                                       f"worst_images", rows=_most_different(rows, names, top)))
        note = "" if any(t["rows"] for t in tables) else \
            "need scores of the same images in every run: the runs' worst_images share none"
        return dict(source="worst_images", note=note, tables=tables)
    masks = {a: [mask_names(d) for d in arms[a]] for a in names}
    if all(m is not None for runs in masks.values() for m in runs):
        rows = []
        for image in sorted(set.intersection(*(m for runs in masks.values() for m in runs))):
            row = dict(id=image)
            for arm in names[1:]:
                fractions = []
                for base_dir, arm_dir in zip(arms[names[0]], arms[arm]):
                    a, b = (read_label_png(os.path.join(d, "predictions", image)) for d in (base_dir, arm_dir))
                    fractions.append(float(np.mean(a != b)) if a.shape == b.shape else np.nan)
                row[arm] = _mean(fractions)
            rows.append(row)
        note = "" if rows else "need masks of the same images in every run: the predictions/ folders share none"
        return dict(source="predictions", note=note, tables=[dict(
            measure=f"pixels unlike {names[0]}'s mask (%)", rows=_most_different(rows, names[1:], top, (0.0,)))])
    return dict(source=None, tables=[],
                note="skipped: they need per-image scores (report.json \"worst_images\", config.eval.num_worst_images)"
                     " or predictions/ masks (main.py --images) in every workdir")


def compare(arms: dict[str, list[str]], top_images: int = 10) -> dict:
    """The comparison of the arms' runs (compare.json's content, NaN where a score does not exist)."""
    reports = {a: [load_report(d) for d in dirs] for a, dirs in arms.items()}
    names, base = list(arms), next(iter(arms))
    per_run = {a: [scalars(r) for r in runs] for a, runs in reports.items()}
    all_rows = [row for rows in per_run.values() for row in rows]
    metrics = ordered(set().union(*all_rows), METRIC_NAMES)
    trimap_metrics = sorted((m for m in metrics if m.startswith("trimap w=")), key=lambda m: int(m[9:]))
    metrics = [m for m in metrics if not m.startswith("trimap w=")] + trimap_metrics
    result = dict(baseline=base, metrics=metrics, arms={}, differences={}, paired={})
    for arm, runs in reports.items():
        tables = [class_tables(r) for r in runs]
        result["arms"][arm] = dict(
            runs=arms[arm], per_run=per_run[arm],
            scores={m: _mean([row.get(m, np.nan) for row in per_run[arm]]) for m in metrics},
            per_class={k: {c: _mean([t[k].get(c, np.nan) for t in tables]) for c in tables[0][k]}
                       for k in tables[0] if all(k in t for t in tables)},
            trimap=[r.get("trimap") for r in runs])
    for arm in names[1:]:
        result["differences"][arm] = {m: result["arms"][arm]["scores"][m] - result["arms"][base]["scores"][m]
                                      for m in metrics}
        if len(arms[arm]) > 1:
            common = [m for m in metrics if all(m in row for row in all_rows)]
            paired = stats.paired_statistics(per_run[arm], per_run[base], common)
            result["paired"][arm] = {m: dict(s, decision=stats.decision(s)) for m, s in paired.items()}
    result["images"] = image_differences(arms, reports, top_images)
    settings = {a: [r.get("boundary") for r in runs] for a, runs in reports.items()}
    result["boundary_settings_differ"] = len({json.dumps(b, sort_keys=True) for v in settings.values() for b in v}) > 1
    result["boundary_settings"] = settings
    return result


def _pct(value: float, sign: str = "") -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:{sign}.2f}"


def _metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def class_order(result: dict, table: str) -> list[str]:
    """The classes of a per-class table that every arm has, the largest difference between arms first
    (classes without a score in some arm last)."""
    arms = [a["per_class"][table] for a in result["arms"].values()]
    classes = [c for c in arms[0] if all(c in a for a in arms)]
    spread = {c: np.ptp([a[c] for a in arms]) for c in classes}
    return sorted(classes, key=lambda c: -np.nan_to_num(spread[c], nan=-1.0))


def markdown(result: dict) -> str:
    """compare.md: runs, scores with differences, paired statistics, per-class tables, images, plots."""
    names, base = list(result["arms"]), result["baseline"]
    others = names[1:]
    header = lambda first: [f"| {first} | " + " | ".join(names) + " | " + " | ".join(f"{a} - {base}" for a in others)
                            + " |", "|---|" + "---|" * (len(names) + len(others))]
    lines = ["# Compare runs", "", "| arm | runs |", "|---|---|"]
    lines += [f"| {a} | {', '.join(e['runs'])} |" for a, e in result["arms"].items()]
    lines += ["", "## Scores (%; an arm of several runs: their mean), differences in points", "",
              *header("metric")]
    for m in result["metrics"]:
        cells = [_pct(result["arms"][a]["scores"][m]) for a in names]
        cells += [_pct(result["differences"][a][m], "+") for a in others]
        lines.append(f"| {_metric_name(m)} | " + " | ".join(cells) + " |")
    if result["boundary_settings_differ"]:
        lines += ["", "Boundary IoU / F were measured with different band widths or tolerances (report.json "
                  "\"boundary\"): " + "; ".join(f"{a}: {json.dumps(v)}" for a, v in
                                                  result["boundary_settings"].items()) + "."]
    if result["paired"]:
        lines += ["", f"## Paired against {base} over {len(result['arms'][base]['runs'])} seeds (run i of each arm: "
                  "seed i)", "", "Points: mean delta [95% CI], std, seeds won; the decision rule: better / worse "
                  "when the interval lies above / below 0, otherwise no difference shown.", "",
                  "| metric | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for m in next(iter(result["paired"].values())):
            cells = [result["paired"][a][m] for a in others]
            lines.append(f"| {_metric_name(m)} | " + " | ".join(
                f"{stats.paired_cell(s)}: {s['decision']}" if np.isfinite(s["mean_delta"]) else "n/a"
                for s in cells) + " |")
    else:
        lines += ["", "One run per arm: no interval. Give several seeds per arm (NAME=dir1,dir2,...) for the paired "
                  "statistics."]
    for table in result["arms"][base]["per_class"]:
        if not all(table in e["per_class"] for e in result["arms"].values()):
            continue
        lines += ["", f"## Per-class {CLASS_TABLE_NAMES.get(table, table)} (%), the largest difference first", "",
                  *header("class")]
        for c in class_order(result, table):
            values = {a: result["arms"][a]["per_class"][table][c] for a in names}
            lines.append(f"| {c} | " + " | ".join(_pct(values[a]) for a in names) + " | "
                         + " | ".join(_pct(values[a] - values[base], "+") for a in others) + " |")
    images = result["images"]
    lines += ["", "## Images that differ most"]
    columns = names if images["source"] == "worst_images" else others
    for table in images["tables"]:
        if table["rows"]:
            lines += ["", f"{table['measure']}:", "", "| image | " + " | ".join(columns) + " |",
                      "|---|" + "---|" * len(columns)]
            lines += [f"| {r['id']} | " + " | ".join(_pct(r[a]) for a in columns) + " |" for r in table["rows"]]
    if images["note"]:
        lines += ["", f"Per-image differences {images['note']}."]
    lines += ["", "![curves](curves.png) ![per-class IoU](per_class.png)"]
    if shows_masks(result):
        lines.append("![images](images.png)")
    return "\n".join(lines) + "\n"


def plot_curves(result: dict, path: str) -> None:
    """Trimap boundary (solid) and non-boundary (dashed) mIoU against the band width, one colour per arm
    (the mean of its runs; a band from the lowest to the highest run when there are several)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (arm, entry) in enumerate(result["arms"].items()):
        runs = [t for t in entry["trimap"] if t]
        widths = sorted(set.intersection(*(set(t["widths"]) for t in runs))) if runs else []
        if not widths:
            continue
        for key, style, label in (("boundary_miou", "o-", "boundary"), ("interior_miou", "s--", "non-boundary")):
            values = np.array([[_float(t[key][t["widths"].index(w)]) for w in widths] for t in runs if key in t])
            if not len(values):
                continue
            ax.plot(widths, 100 * values.mean(0), style, color=f"C{i}", label=f"{arm}, {label}")
            if len(values) > 1:
                ax.fill_between(widths, 100 * values.min(0), 100 * values.max(0), color=f"C{i}", alpha=0.15)
    ax.set_xscale("log")
    ticks = sorted({w for e in result["arms"].values() for t in e["trimap"] if t for w in t["widths"]})
    ax.set_xticks(ticks, [str(w) for w in ticks])
    ax.set(xlabel="trimap band width (pixels)", ylabel="mIoU (%)", title="Trimap mIoU per arm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_class(result: dict, path: str, table: str = "iou") -> None:
    """Grouped bars of each arm's per-class IoU (top) and of its difference to the first arm (bottom, points),
    the PLOT_CLASSES classes that differ most, largest first (classes without a score left out)."""
    names, base = list(result["arms"]), result["baseline"]
    scores = {a: result["arms"][a]["per_class"].get(table, {}) for a in names}
    classes = [c for c in class_order(result, table) if all(np.isfinite(scores[a][c]) for a in names)] if all(
        table in e["per_class"] for e in result["arms"].values()) else []
    classes = classes[:PLOT_CLASSES]
    name, width, x = CLASS_TABLE_NAMES.get(table, table), 0.8 / len(names), np.arange(len(classes))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, height_ratios=(2, 1),
                                      figsize=(max(6.0, 0.22 * len(classes) * len(names) + 2.5), 5.5))
    for i, arm in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * width
        top.bar(x + offset, [100 * scores[arm][c] for c in classes], width, label=arm, color=f"C{i}")
        if arm != base:
            bottom.bar(x + offset, [100 * (scores[arm][c] - scores[base][c]) for c in classes], width, color=f"C{i}")
    top.set(ylabel=f"{name} (%)", title=f"Per-class {name}, the largest difference between arms first")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set(ylabel=f"minus {base} (points)")
    bottom.set_xticks(x, classes, rotation=60, ha="right", fontsize=8)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_images(result: dict, arms: dict[str, list[str]], path: str) -> None:
    """The first run's masks of each arm for the images that differ most (one row per image)."""
    rows, names = result["images"]["tables"][0]["rows"], list(arms)
    fig, axes = plt.subplots(len(rows), len(names), figsize=(3.0 * len(names), 2.6 * len(rows)), squeeze=False)
    for row, axs in zip(rows, axes):
        for arm, ax in zip(names, axs):
            ax.imshow(colorize(read_label_png(os.path.join(arms[arm][0], "predictions", row["id"]))))
            title = arm if arm == names[0] else f"{arm}: {_pct(row[arm])}% of pixels unlike {names[0]}"
            ax.set_title(f"{row['id']}\n{title}" if arm == names[0] else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict, arms: dict[str, list[str]], out: str) -> str:
    """compare.md, compare.json and the plots into `out` -> compare.md's text."""
    os.makedirs(out, exist_ok=True)
    text = markdown(result)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(json_ready(result), f, indent=1, allow_nan=False)
    plot_curves(result, os.path.join(out, "curves.png"))
    plot_per_class(result, os.path.join(out, "per_class.png"))
    if shows_masks(result):
        plot_images(result, arms, os.path.join(out, "images.png"))
    return text


def shows_masks(result: dict) -> bool:
    """Whether images.png is written: the most different images come from predictions/ masks."""
    return result["images"]["source"] == "predictions" and bool(result["images"]["tables"][0]["rows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a workdir, or NAME=dir1,dir2,... (paired seeds)")
    parser.add_argument("--out", default="compare", help="output folder (default ./compare)")
    parser.add_argument("--images", type=int, default=10, help="how many of the most different images to list")
    args = parser.parse_args(argv)
    try:
        arms = parse_arms(args.runs)
        result = compare(arms, args.images)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(write(result, arms, args.out) + f"\nwrote {os.path.join(args.out, 'compare.md')}, compare.json, "
          f"curves.png, per_class.png{', images.png' if shows_masks(result) else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
