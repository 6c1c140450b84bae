"""Both CRFs of benchmarks/crf.py tuned on a tuning split and compared on val (pre-registered in docs/results.md,
"Three results that contradict the papers", item 2).

    python -m benchmarks.crf --tune --workdir W          # the study (this module's run_tuning)
    python -m benchmarks.crf --tune --tiny --workdir W   # its smoke run (~2 minutes on the 2-core CPU)

In WORKDIR, every part reused when finished: configs/demo.py's network trained by the main job's recipe with CE
for seeds 0, 1, 2 (WORKDIR/train/seed<s>); whole-image probabilities of the tuning split's val images (the
generator with data seed 2000; seed 0's model) and of the benchmark's val split (each seed's model), cached as
.npy (WORKDIR/unaries/); every setting of GUIDED_GRID (ours, Potts; one compilation per (radius, T), vmapped
over the weights, every eps in it) and of DENSE_GRID (the dense CRF's bilateral kernel and T) scored by mIoU on
the tuning split (WORKDIR/grid_{guided,dense}.json), the best of each chosen; on val per seed the mIoU without
a CRF, with each tuned CRF and with each at its untuned default, and the paired differences of PAIRS
(semeda_jax/stats.py: mean, 95% t interval, decision) -> WORKDIR/crf_tuning.{json,md}; the sensitivity plot
(tuning mIoU against each parameter, the best over the others) -> WORKDIR/crf_sensitivity.png. Without the
dense CRF's venv its half is skipped with one message.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import protocol
from benchmarks.crf import DENSE_VENV, DenseCRF, split_predictions
from benchmarks.crf_dense import BILATERAL
from semeda_jax import crf, stats

# --tune: both CRFs tuned on the tuning split (pre-registered in docs/results.md, "Three results that contradict
# the papers", item 2). The grids, each CRF's parameters (T = iterations) in the order of the plot's panels:
# (The registered grids extended where the first ones' best lay on their edge: see the amendment there.)
GUIDED_GRID = dict(radius=(1, 2, 4, 8, 16, 32), eps=(0.1, 1.0, 10.0, 100.0, 1000.0),
                   weight=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0), iterations=(1, 3, 5, 10))
DENSE_GRID = dict(sxy=(10, 20, 40, 80, 160), srgb=(3, 5, 13, 30), compat=(3, 5, 10, 20), iterations=(5, 10))
# The untuned defaults: ours is config.eval.crf's (Potts); the dense CRF's is its worker's (DeepLab's bilateral
# kernel, crf_dense.BILATERAL) at the T of --miou (config.eval.crf.iterations).
TUNE_SEEDS = (0, 1, 2)
# --tune --tiny (the smoke run): smoke data and network, 2-step training, 2x2 grids, two seeds
TINY_TUNE = dict(seeds=(0, 1), guided_grid=dict(radius=(1, 2), eps=(10.0,), weight=(1.0,), iterations=(1, 2)),
                 dense_grid=dict(sxy=(10, 80), srgb=(13,), compat=(3, 10), iterations=(5,)))
CHUNK = 20  # images per call of the guided grid's jitted function
# The paired comparisons on val: (CRF, baseline)
PAIRS = (("guided_tuned", "none"), ("dense_tuned", "none"), ("guided_tuned", "dense_tuned"),
         ("guided_default", "none"), ("dense_default", "none"), ("guided_default", "dense_default"))


def tune_model_config(seed: int, tiny: bool, data_seed: int = 0):
    """configs/demo.py's network and recipe (the main job's; protocol.base_config: its eval scores the protocols'
    trimap widths) with CE, seed `seed`, reading data seed `data_seed` (protocol.TUNING_DATA_SEED: the tuning
    split); smoke-sized and 2 steps with `tiny`."""
    config = protocol.base_config(tiny)
    config.loss, config.seed = "ce", seed
    config.dataset.seed = data_seed
    if tiny:
        config.train.update(steps=2, eval_every=2, checkpoint_every=2, log_every=1)
    return config


def cached_unaries(folder: str, config, model_dir: str, log) -> dict:
    """{"probs" [N,H,W,C] float32, "images" [N,H,W,3] uint8, "labels" [N,H,W]} of config's val split predicted by
    the model of `model_dir`, cached as FOLDER/<key>.npy (the split's images must share one size)."""
    paths = {key: os.path.join(folder, f"{key}.npy") for key in ("probs", "images", "labels")}
    if not all(os.path.isfile(path) for path in paths.values()):
        log(f"== unaries of {model_dir} on data seed {config.dataset.seed} -> {folder}")
        columns = zip(*split_predictions(config, model_dir, log))
        os.makedirs(folder, exist_ok=True)
        for (key, path), arrays in zip(paths.items(), columns):
            np.save(path + ".tmp.npy", np.stack(arrays))
            os.replace(path + ".tmp.npy", path)
    return {key: np.load(path) for key, path in paths.items()}


def split_miou(labels: np.ndarray, predictions: np.ndarray, classes: int) -> float:
    """mIoU (fraction) of predictions against labels [N,H,W] over the whole split (void ignored)."""
    from semeda_jax import metrics

    cm = np.asarray(metrics.confusion_matrix(labels, predictions, classes), np.int64)
    return float(metrics.segmentation_summary(cm)["miou"])


@functools.lru_cache(maxsize=None)
def guided_grid_fn(radius: int, iterations: int, eps_values: tuple):
    """jit(probs [B,H,W,C], images [B,H,W,3] uint8, weights [K]) -> argmax labels uint8 [E,K,B,H,W] of our CRF
    (Potts, unary log p) at every eps of `eps_values` x weight: one compilation per (radius, T)."""
    def run(probs, images, weights):
        unary = jnp.log(jnp.maximum(probs, 1e-12))
        guide = images.astype(jnp.float32)

        def labels(eps, weight):
            q = crf.mean_field(unary, guide, radius=radius, eps=eps, iterations=iterations, weight=weight)
            return jnp.argmax(q, -1).astype(jnp.uint8)
        return jnp.stack([jax.vmap(functools.partial(labels, eps))(weights) for eps in eps_values])
    return jax.jit(run)


def guided_rows(data: dict, radius: int, iterations: int, eps_values, weights, classes: int) -> list[dict]:
    """Split mIoU of our CRF at (radius, T) and every eps x weight -> rows {radius, eps, weight, iterations, miou}."""
    fn = guided_grid_fn(radius, iterations, tuple(float(e) for e in eps_values))
    weight_array = jnp.asarray(weights, jnp.float32)
    labels = np.concatenate([np.asarray(fn(data["probs"][i:i + CHUNK], data["images"][i:i + CHUNK], weight_array))
                             for i in range(0, len(data["probs"]), CHUNK)], axis=2)
    return [dict(radius=radius, eps=eps, weight=weight, iterations=iterations,
                 miou=split_miou(data["labels"], labels[e, k], classes))
            for e, eps in enumerate(eps_values) for k, weight in enumerate(weights)]


def dense_row(dense: DenseCRF, data: dict, setting: dict, classes: int) -> dict:
    """Split mIoU of the dense CRF at `setting` {sxy, srgb, compat, iterations} -> the row {setting..., miou}."""
    bilateral = {key: value for key, value in setting.items() if key != "iterations"}
    _, labels = dense.run(data["probs"], data["images"], setting["iterations"], want="argmax", **bilateral)
    return dict(setting, miou=split_miou(data["labels"], labels, classes))


def grid_search(path: str, grid: dict, group_by: tuple, evaluate, log) -> list[dict]:
    """Every setting of `grid` {parameter: values} scored -> rows {parameter: value, ..., "miou"}, evaluated a
    group at a time (evaluate({p: value for p in group_by}) -> the rows of every setting of the group) and
    cached in the JSON file `path` after each group. A group whose settings are all cached is reused; one that
    lacks some (a stopped search, or a grid extended since) is evaluated again. Cached rows off the grid are
    kept in the file and left out of the result."""
    cached = []
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)

    def setting(row):
        return tuple(row.get(p) for p in grid)

    def on_grid(row):
        return all(row.get(p) in values for p, values in grid.items())

    group_size = math.prod(len(values) for p, values in grid.items() if p not in group_by)
    for values in itertools.product(*(grid[p] for p in group_by)):
        have = {setting(r) for r in cached if on_grid(r) and tuple(r[p] for p in group_by) == values}
        if len(have) == group_size:
            continue
        start = time.perf_counter()
        rows = evaluate(dict(zip(group_by, values)))
        fresh = {setting(r) for r in rows}
        cached = [r for r in cached if setting(r) not in fresh] + rows
        with open(path + ".tmp", "w") as f:
            json.dump(cached, f, indent=1)
        os.replace(path + ".tmp", path)
        log(f"{os.path.basename(path)}: {dict(zip(group_by, values))} in {time.perf_counter() - start:.1f} s")
    return [r for r in cached if on_grid(r)]


def best_setting(rows: list[dict]) -> dict:
    """The row of the largest mIoU (the first of equal ones)."""
    return max(rows, key=lambda row: row["miou"])


def sensitivity(rows: list[dict], grid: dict) -> dict:
    """{parameter: [the best mIoU over the other parameters at each of its grid values]}."""
    return {p: [max(r["miou"] for r in rows if r[p] == value) for value in values] for p, values in grid.items()}


def plot_sensitivity(curves: dict, grids: dict, path: str) -> None:
    """One panel per CRF x parameter: tuning-split mIoU (%) against the parameter's grid values (equally spaced),
    the best over the others. curves: {crf: sensitivity()}, grids: {crf: its grid}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(grid) for grid in grids.values())
    fig, axes = plt.subplots(len(curves), cols, figsize=(3 * cols, 2.6 * len(curves)), squeeze=False)
    for i, (name, curve) in enumerate(curves.items()):
        for j, (param, best) in enumerate(curve.items()):
            ax, values = axes[i][j], grids[name][param]
            ax.plot(range(len(values)), [100 * v for v in best], "o-")
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
            ax.set(xlabel=param, title=f"{name}: {param}", ylabel="tuning mIoU (%)" if j == 0 else None)
        for j in range(len(curve), cols):
            axes[i][j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_tuning(result: dict) -> str:
    """Markdown: the chosen settings, val mIoU per seed, and the paired differences (points) with the decision."""
    lines = [f"Tuned on the tuning split (data seed {result['tuning_data_seed']}, seed {result['seeds'][0]}'s "
             f"model); compared on val, seeds {result['seeds']}{' (tiny)' if result['tiny'] else ''}", "",
             "| CRF | chosen setting | tuning mIoU | default setting | its tuning mIoU |", "|---|---|---|---|---|"]
    for name, tuned in result["tuned"].items():
        lines.append(f"| {name} | {settings_text(tuned['chosen'])} | {100 * tuned['chosen']['miou']:.2f} | "
                     f"{settings_text(tuned['default'])} | "
                     + (f"{100 * tuned['default_miou']:.2f}" if tuned["default_miou"] is not None else "off the grid")
                     + " |")
    columns = list(result["per_seed"][0]) if result["per_seed"] else []
    lines += ["", "Val mIoU (%)", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(f"{row[c]}" if c == "seed" else f"{100 * row[c]:.2f}" for c in columns) + " |"
              for row in result["per_seed"]]
    lines += ["", "Paired on val (mIoU points): mean delta [95% CI], std, seeds won", "",
              "| pair | mIoU | decision |", "|---|---|---|"]
    lines += [f"| {pair} | {stats.paired_cell(stat)} | {stats.decision(stat)} |"
              for pair, stat in result["paired"].items()]
    return "\n".join(lines) + "\n"


def settings_text(row: dict) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in row.items() if key != "miou")


def tune_crfs(workdir: str, data: dict, classes: int, grids: dict, defaults: dict, dense: DenseCRF | None,
              log) -> dict:
    """Each CRF of `grids` {"guided", "dense"?: its grid} searched on the tuning split's unaries `data` ->
    {crf: {"chosen": best row, "default": defaults[crf], "default_miou" (None off the grid), "sensitivity"}}."""
    evaluate = {"guided": (("radius", "iterations"), lambda g: guided_rows(
                    data, g["radius"], g["iterations"], grids["guided"]["eps"], grids["guided"]["weight"], classes)),
                "dense": (tuple(DENSE_GRID), lambda g: [dense_row(dense, data, g, classes)])}
    tuned = {}
    for name, grid in grids.items():
        group_by, fn = evaluate[name]
        rows = grid_search(os.path.join(workdir, f"grid_{name}.json"), grid, group_by, fn, log)
        default = [r for r in rows if all(r[k] == v for k, v in defaults[name].items())]
        tuned[name] = dict(chosen=best_setting(rows), default=defaults[name],
                           default_miou=default[0]["miou"] if default else None, sensitivity=sensitivity(rows, grid))
    return tuned


def val_row(val: dict, classes: int, settings: dict, dense: DenseCRF | None) -> dict:
    """mIoU of one seed's val unaries `val` without a CRF ("none") and with each CRF at each of `settings`
    {"guided_tuned": row, "dense_default": row, ...} (rows with the CRF's grid keys)."""
    row = dict(none=split_miou(val["labels"], np.argmax(val["probs"], -1), classes))
    for label, s in settings.items():
        if label.startswith("guided"):
            row[label] = guided_rows(val, s["radius"], s["iterations"], [s["eps"]], [s["weight"]], classes)[0]["miou"]
        else:
            row[label] = dense_row(dense, val, {key: s[key] for key in DENSE_GRID}, classes)["miou"]
    return row


def run_tuning(workdir: str, seeds=TUNE_SEEDS, dense_venv: Path = DENSE_VENV, tiny: bool = False,
               guided_grid=GUIDED_GRID, dense_grid=DENSE_GRID, log=print) -> dict:
    """The study: models (WORKDIR/train/seed<s>), unaries (WORKDIR/unaries/), grids (WORKDIR/grid_<crf>.json),
    the val comparison -> WORKDIR/crf_tuning.{json,md} and WORKDIR/crf_sensitivity.png; finished parts reused.
    Without the dense CRF's venv its half is skipped (one message)."""
    os.makedirs(workdir, exist_ok=True)
    model_dirs = {seed: os.path.join(workdir, "train", f"seed{seed}") for seed in seeds}
    for seed, model_dir in model_dirs.items():
        log(f"== CE model, seed {seed} -> {model_dir}")
        protocol.run_arm(tune_model_config(seed, tiny), model_dir, log)
    config = tune_model_config(seeds[0], tiny, protocol.TUNING_DATA_SEED)
    classes, options = config.dataset.num_classes, crf.options_from_config(config.eval.crf, config.data)
    grids = {"guided": guided_grid, "dense": dense_grid}
    defaults = {"guided": {key: options[key] for key in GUIDED_GRID},
                "dense": dict(BILATERAL, iterations=options["iterations"])}
    python = dense_venv / "bin" / "python"
    dense = DenseCRF(python) if python.exists() else None
    if dense is None:
        log(f"dense CRF skipped: no venv at {dense_venv} (create it with `python -m benchmarks.crf --setup-dense`)")
        del grids["dense"]
    try:
        data = cached_unaries(os.path.join(workdir, "unaries", "tuning"), config, model_dirs[seeds[0]], log)
        tuned = tune_crfs(workdir, data, classes, grids, defaults, dense, log)
        plot_sensitivity({name: t["sensitivity"] for name, t in tuned.items()}, grids,
                         os.path.join(workdir, "crf_sensitivity.png"))
        settings = {f"{name}_{kind}": tuned[name]["chosen" if kind == "tuned" else "default"]
                    for name in grids for kind in ("tuned", "default")}
        per_seed = [dict(seed=seed, **val_row(cached_unaries(os.path.join(workdir, "unaries", f"val_seed{seed}"),
                                                             tune_model_config(seed, tiny), model_dirs[seed], log),
                                              classes, settings, dense))
                    for seed in seeds]
    finally:
        if dense is not None:
            dense.close()
    paired = {f"{a} - {b}": stats.paired_statistics([{"miou": r[a]} for r in per_seed],
                                                    [{"miou": r[b]} for r in per_seed], ["miou"])["miou"]
              for a, b in PAIRS if a in per_seed[0] and b in per_seed[0]}
    result = dict(seeds=list(seeds), tiny=tiny, tuning_data_seed=protocol.TUNING_DATA_SEED, grids=grids,
                  dense=dense is not None, tuned=tuned, per_seed=per_seed, paired=paired)
    with open(os.path.join(workdir, "crf_tuning.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(workdir, "crf_tuning.md"), "w") as f:
        f.write(format_tuning(result))
    log(format_tuning(result))
    return result
