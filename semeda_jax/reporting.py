"""Evaluation report files in the workdir: report.json, report.md and PNG plots (matplotlib, Agg backend).

    report.json      every number (mIoU, per-class IoU/F1, accuracies, E-measure, trimap curves, confusion matrix)
    report.md        the same as tables, with the plots linked
    trimap.png       boundary / interior mIoU against the trimap band width
    confusion.png    row-normalised confusion matrix (rows = truth)
    samples.png      image | truth | prediction | entropy for the first validation images

A score that does not exist (a class absent from both truth and prediction has no IoU or F1, a class absent from
the truth no E-measure) is NaN in the report dict, `null` in report.json (strict JSON: no NaN literal) and `n/a`
in report.md.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from semeda_jax.data.palette import colorize  # noqa: E402

REPORT_KEYS = ("miou", "pixel_acc", "mean_acc", "mean_f1", "emeasure", "iou", "f1", "emeasure_per_class",
               "trimap", "confusion_matrix", "merged_f1")


def plot_trimap(trimap: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(trimap["widths"], trimap["boundary_miou"], "o-", label="boundary (inside the band)")
    ax.plot(trimap["widths"], trimap["interior_miou"], "s--", label="non-boundary (outside)")
    ax.set_xscale("log")
    ax.set_xticks(trimap["widths"], [str(w) for w in trimap["widths"]])
    ax.set(xlabel="trimap band width (pixels)", ylabel="mIoU", title="Trimap mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str) -> None:
    cm = np.asarray(cm, np.float64)
    normalised = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    size = 2.5 + 0.35 * len(class_names)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="prediction", ylabel="truth", title="Confusion (row-normalised)")
    if len(class_names) <= 12:
        for (i, j), value in np.ndenumerate(normalised):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_samples(samples: Sequence[dict], path: str) -> None:
    columns = ("image", "truth", "prediction", "entropy")
    fig, axes = plt.subplots(len(samples), 4, figsize=(10, 2.4 * len(samples)), squeeze=False)
    for row, sample in zip(axes, samples):
        overlay = lambda labels: (0.45 * sample["image"] + 0.55 * colorize(labels)).astype(np.uint8)
        panels = (sample["image"], overlay(sample["label"]), overlay(sample["prediction"]), sample["entropy"])
        for ax, panel, title in zip(row, panels, columns):
            ax.imshow(panel, cmap="magma" if title == "entropy" else None, vmin=0.0, vmax=1.0 if
                      title == "entropy" else None)
            ax.set_title(f"{title} ({sample['id']})" if title == "image" else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def json_ready(value):
    """`value` (nested dicts / lists / tuples of numbers) with every non-finite float as None (JSON null)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _number(value) -> str:
    """A score for report.md: 4 decimals, `n/a` where it does not exist (NaN)."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def _markdown(report: dict, title: str) -> str:
    lines = [f"# {title}", "",
             "| metric | value |", "|---|---|",
             *(f"| {name} | {_number(report[key])} |" for key, name in (
                 ("miou", "mIoU"), ("mean_f1", "mean F1"), ("emeasure", "E-measure"),
                 ("pixel_acc", "pixel accuracy"), ("mean_acc", "mean accuracy"))),
             "", "| class | IoU | F1 | E-measure |", "|---|---|---|---|"]
    for name in report["iou"]:
        lines.append(f"| {name} | {_number(report['iou'][name])} | {_number(report['f1'][name])} | "
                     f"{_number(report['emeasure_per_class'].get(name))} |")
    if report.get("merged_f1"):
        lines += ["", "| merged parts | F1 |", "|---|---|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in report["merged_f1"].items()]
    trimap = report["trimap"]
    lines += ["", "| trimap width | boundary mIoU | non-boundary mIoU |", "|---|---|---|"]
    lines += [f"| {w} | {_number(b)} | {_number(i)} |"
              for w, b, i in zip(trimap["widths"], trimap["boundary_miou"], trimap["interior_miou"])]
    lines += ["", "![trimap](trimap.png) ![confusion](confusion.png)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str, *, title: str = "Evaluation report") -> str:
    """Write report.json, report.md and the plots into `out_dir`; returns the path of report.md."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(json_ready({k: report[k] for k in REPORT_KEYS if k in report}), f, indent=1, allow_nan=False)
    plot_trimap(report["trimap"], os.path.join(out_dir, "trimap.png"))
    plot_confusion(np.asarray(report["confusion_matrix"]), list(report["iou"]), os.path.join(out_dir, "confusion.png"))
    if report.get("samples"):
        plot_samples(report["samples"], os.path.join(out_dir, "samples.png"))
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(_markdown(report, title))
    return md_path
