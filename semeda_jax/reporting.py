"""Evaluation report files in the workdir: report.json, report.md and PNG plots (matplotlib, Agg backend).

    report.json         every number (mIoU, per-class IoU/F1, accuracies, E-measure, trimap curves, Boundary IoU
                        and boundary F with their widths, confusion matrix, the worst images' ids and scores)
    report.md           the same as tables, with the plots linked
    trimap.png          boundary / interior mIoU against the trimap band width
    confusion.png       row-normalised confusion matrix (rows = truth)
    samples.png         image | truth | prediction | entropy for the first validation images
    worst_miou.png      image / truth / prediction / errors / entropy of the images of lowest mIoU (a column each)
    worst_boundary.png  the same for the images of lowest Boundary IoU
The label maps are drawn with the VOC palette over the image, with a legend of the classes they show.

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

from matplotlib.patches import Patch  # noqa: E402

from semeda_jax.data.palette import VOC_COLORMAP, colorize  # noqa: E402
from semeda_jax.validation import IGNORE_LABEL  # noqa: E402

REPORT_KEYS = ("miou", "pixel_acc", "mean_acc", "mean_f1", "emeasure", "iou", "f1", "emeasure_per_class",
               "trimap", "boundary_iou", "boundary_fscore", "boundary_iou_per_class", "boundary_fscore_per_class",
               "boundary", "confusion_matrix", "merged_f1", "worst_images")
WORST_PLOTS = {"miou": ("worst_miou.png", "mIoU"), "boundary_iou": ("worst_boundary.png", "Boundary IoU")}
GALLERY_ROWS = ("image", "truth", "prediction", "errors\n(red; void grey)", "entropy\n(bright = high)")
GALLERY_COLUMN_INCHES, GALLERY_MARGIN_INCHES, GALLERY_TOP_INCHES, GALLERY_DPI = 2.2, 0.7, 0.75, 100
ERROR_RGB, VOID_RGB = np.array([255, 40, 40]), np.array([128, 128, 128])


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


def legend_entries(maps: Sequence[np.ndarray], class_names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(class name, RGB uint8 [3]) of every class some label map of `maps` shows, in class order, then void."""
    shown = np.unique(np.concatenate([np.unique(m) for m in maps]))
    return [(class_names[c] if c < len(class_names) else "void", VOC_COLORMAP[c]) for c in shown
            if c < len(class_names) or c == IGNORE_LABEL]


def _add_legend(fig, maps: Sequence[np.ndarray], class_names: Sequence[str], bottom_inches: float) -> None:
    """The class-colour legend of `maps` along the bottom `bottom_inches` of `fig`."""
    entries = legend_entries(maps, class_names)
    handles = [Patch(facecolor=rgb / 255.0, edgecolor="black", linewidth=0.5, label=name) for name, rgb in entries]
    columns = max(1, int(fig.get_figwidth() / 1.6))
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.subplots_adjust(bottom=bottom_inches / fig.get_figheight())


def legend_inches(maps: Sequence[np.ndarray], class_names: Sequence[str], width_inches: float) -> float:
    """The height of the legend of `maps` in a figure `width_inches` wide."""
    rows = -(-len(legend_entries(maps, class_names)) // max(1, int(width_inches / 1.6)))
    return 0.15 + 0.22 * rows


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (0.45 * image + 0.55 * colorize(labels)).astype(np.uint8)


def error_map(sample: dict) -> np.ndarray:
    """RGB uint8 [H,W,3]: the image darkened, wrong pixels red, void truth grey."""
    gray = sample["image"].mean(axis=-1, keepdims=True) * 0.4
    wrong = (sample["prediction"] != sample["label"])[..., None]
    void = (sample["label"] == IGNORE_LABEL)[..., None]
    return np.where(void, VOID_RGB, np.where(wrong, ERROR_RGB, gray)).astype(np.uint8)


def plot_samples(samples: Sequence[dict], class_names: Sequence[str], path: str) -> None:
    """image | truth | prediction | entropy, a row per sample, with the class legend."""
    columns = ("image", "truth", "prediction", "entropy")
    maps = [m for sample in samples for m in (sample["label"], sample["prediction"])]
    legend = legend_inches(maps, class_names, 10)
    fig, axes = plt.subplots(len(samples), 4, figsize=(10, 2.4 * len(samples) + legend), squeeze=False)
    for row, sample in zip(axes, samples):
        panels = (sample["image"], _overlay(sample["image"], sample["label"]),
                  _overlay(sample["image"], sample["prediction"]), sample["entropy"])
        for ax, panel, title in zip(row, panels, columns):
            ax.imshow(panel, cmap="magma" if title == "entropy" else None, vmin=0.0, vmax=1.0 if
                      title == "entropy" else None)
            ax.set_title(f"{title} ({sample['id']})" if title == "image" else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout(rect=(0, legend / fig.get_figheight(), 1, 1))
    _add_legend(fig, maps, class_names, legend)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def gallery_size(num_images: int, image_size: Sequence[int], legend_height: float) -> tuple[float, float]:
    """(width, height) in inches of a gallery of `num_images` columns of images of `image_size` (H, W), the
    largest shown, and a legend `legend_height` inches high."""
    row = 0.9 * GALLERY_COLUMN_INCHES * image_size[0] / image_size[1] + 0.1
    width = GALLERY_MARGIN_INCHES + GALLERY_COLUMN_INCHES * num_images + 0.1
    return width, GALLERY_TOP_INCHES + row * len(GALLERY_ROWS) + legend_height


def plot_gallery(panels: Sequence[dict], scores: Sequence[str], class_names: Sequence[str], title: str,
                 path: str) -> None:
    """The rows image / truth / prediction / errors (red; void grey) / entropy, a column per image of `panels`
    (plot arrays), headed by its id and `scores` text; the class legend below."""
    maps = [m for panel in panels for m in (panel["label"], panel["prediction"])]
    largest = max((panel["label"].shape for panel in panels), key=lambda shape: shape[0] / shape[1])
    legend = legend_inches(maps, class_names, GALLERY_COLUMN_INCHES * len(panels))
    width, height = gallery_size(len(panels), largest, legend)
    fig, axes = plt.subplots(len(GALLERY_ROWS), len(panels), figsize=(width, height), squeeze=False)
    for column, (panel, score) in enumerate(zip(panels, scores)):
        shown = (panel["image"], _overlay(panel["image"], panel["label"]),
                 _overlay(panel["image"], panel["prediction"]), error_map(panel), panel["entropy"])
        for row, image in enumerate(shown):
            ax = axes[row, column]
            entropy = row == len(GALLERY_ROWS) - 1
            ax.imshow(image, cmap="magma" if entropy else None, vmin=0.0, vmax=1.0 if entropy else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(GALLERY_ROWS[row], fontsize=9)
        axes[0, column].set_title(f"{panel['id']}\n{score}", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=GALLERY_MARGIN_INCHES / width, right=1 - 0.1 / width,
                        top=1 - GALLERY_TOP_INCHES / height, wspace=0.04, hspace=0.06)
    _add_legend(fig, maps, class_names, legend)
    fig.savefig(path, dpi=GALLERY_DPI)
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
                 ("boundary_iou", "Boundary IoU"), ("boundary_fscore", "boundary F"),
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
    widths = {key: f"{value} px" if isinstance(value, int) else value for key, value in report["boundary"].items()}
    lines += ["", "## Boundary IoU and boundary F", "",
              f"Boundary IoU band width: {widths['width']}; boundary F tolerance: {widths['tolerance']}.", "",
              "| class | Boundary IoU | boundary F |", "|---|---|---|"]
    lines += [f"| {name} | {_number(report['boundary_iou_per_class'][name])} | "
              f"{_number(report['boundary_fscore_per_class'][name])} |" for name in report["boundary_iou_per_class"]]
    lines += ["", "![trimap](trimap.png) ![confusion](confusion.png)", "", "![samples](samples.png)", ""]
    for key, entries in report.get("worst_images", {}).items():
        file, name = WORST_PLOTS[key]
        lines += [f"## Lowest {name}", "", f"| image | {name} |", "|---|---|"]
        lines += [f"| {entry['id']} | {_number(entry[key])} |" for entry in entries]
        lines += ["", f"![worst {name}]({file})", ""] if entries else [""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str, *, title: str = "Evaluation report") -> str:
    """Write report.json, report.md and the plots into `out_dir`; returns the path of report.md."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(json_ready({k: report[k] for k in REPORT_KEYS if k in report}), f, indent=1, allow_nan=False)
    class_names = list(report["iou"])
    plot_trimap(report["trimap"], os.path.join(out_dir, "trimap.png"))
    plot_confusion(np.asarray(report["confusion_matrix"]), class_names, os.path.join(out_dir, "confusion.png"))
    if report.get("samples"):
        plot_samples(report["samples"], class_names, os.path.join(out_dir, "samples.png"))
    for key, entries in report.get("worst_images", {}).items():
        file, name = WORST_PLOTS[key]
        if entries:
            plot_gallery([report["worst_panels"][entry["id"]] for entry in entries],
                         [f"{name} {_number(entry[key])}" for entry in entries], class_names,
                         f"Validation images of lowest {name}", os.path.join(out_dir, file))
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(_markdown(report, title))
    return md_path
