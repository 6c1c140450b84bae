"""SEMEDA's gain against its gradient scale: the lambda x learning-rate study of the paper's protocol
(benchmarks/protocol.py; pre-registered in docs/results.md, "Three results that contradict the papers", item 3).

    python -m benchmarks.protocol --workdir=/tmp/protocol --tune               # the study (run_tuning)
    python -m benchmarks.protocol --workdir=/tmp/p --tune --tiny               # its smoke run (TINY_TUNING)

In the paper's protocol's workdir (its pre-training and g_phi, and the arms whose settings
are the protocol's own): on the tuning split (the generator with data seed 2000, train and val), seeds 0 and
1, `semeda` with its lambdas scaled by TUNING_GRID's values and `sobel` with TUNING_GRID's coefficients, each
at every TUNING_RATES, and ppce at each rate, in WORKDIR/tuning/<run>/seed<s> (never mixed with the val arms);
per arm the (value, rate) with the largest mean over the seeds of (mIoU gain + trimap w=3 gain) against ppce at
the same rate -> WORKDIR/tuning.{json,md}. Then `semeda_tuned` and `sobel_tuned` at their choices against
ppce at the same rate (`ppce_lr<rate>` when not 5e-4) on the benchmark's val split, --seeds paired ->
WORKDIR/tuned.{json,md}.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from benchmarks import pac_bal, protocol
from benchmarks.protocol import (ARMS, BASELINE, LEARNING_RATE, REGISTERED, TUNING_DATA_SEED, base_config,
                                 edge_net, finetune_config, pretrain, pretrain_config)

# The lambda x learning-rate study (docs/results.md, "Three results that contradict the papers", item 3):
# arm -> the values of its setting tuned (SEMEDA: its lambdas (2, 4, 0) scaled by them; Sobel: its
# coefficient), each at every TUNING_RATES, against ppce at the same rate.
TUNING_GRID = {"semeda": (0.1, 0.3, 1.0), "sobel": (0.4, 1.2, 4.0)}
SETTING_NAMES = {"semeda": "scale", "sobel": "coefficient"}
PROTOCOL_SETTINGS = {"semeda": 1.0, "sobel": ARMS["sobel"][1]["sobel.coefficient"]}  # the protocol's own arms
TUNING_RATES = (2.5e-4, 5e-4, 1e-3)
TUNING_SEEDS = (0, 1)
# --tiny --tune (the smoke run): a 2x2 grid per arm, 1-step runs, one seed
TINY_TUNING = dict(grid={arm: values[-2:] for arm, values in TUNING_GRID.items()},
                   rates=TUNING_RATES[1:], seeds=(0,), compare_seeds=(0,), steps=1, pretrain_steps=2,
                   pretrain_images=8)


def tuned_overrides(config: ml_collections.ConfigDict, arm: str, value) -> dict:
    """finetune_config's overrides of `arm` at tuning value `value` (None: ppce): SEMEDA's lambdas of `config`
    scaled by it, or Sobel's coefficient."""
    if arm == "semeda":
        return {"semeda.lambdas": tuple(value * lam for lam in config.losses.semeda.lambdas)}
    return {"sobel.coefficient": value} if arm == "sobel" else {}


def run_name(arm: str, value, learning_rate: float) -> str:
    """The folder (and table label) of one tuning setting: 'ppce_lr0.001', 'semeda_scale0.3_lr0.00025'; the
    protocol's own setting (PROTOCOL_SETTINGS at LEARNING_RATE) is the protocol's arm itself ('ppce', 'sobel'),
    so the comparison reuses the paper's protocol's runs."""
    if learning_rate == LEARNING_RATE and (arm == BASELINE or value == PROTOCOL_SETTINGS[arm]):
        return arm
    return arm + (f"_{SETTING_NAMES[arm]}{value:g}" if arm != BASELINE else "") + f"_lr{learning_rate:g}"


def tuning_gain(row: dict, base: dict) -> float:
    """The tuning's criterion of one seed: mIoU gain + trimap w=3 gain against ppce at the same rate."""
    return (row["miou"] - base["miou"]) + (row["boundary_w3"] - base["boundary_w3"])


def select_settings(runs: dict, seeds, grid=TUNING_GRID, rates=TUNING_RATES) -> dict:
    """The tuning's choice from `runs` {run_name: [{"seed", "scores" | "failed"}]} -> {arm: {"value", "lr",
    "gain" (mean over `seeds` of tuning_gain), "gains" {run_name: mean gain or None}}}. A setting with a seed
    failed or missing (its or ppce's) is not eligible (gain None); ties go to the first in grid order."""
    def by_seed(name):
        return {r["seed"]: r["scores"] for r in runs.get(name, []) if "scores" in r}

    chosen = {}
    for arm, values in grid.items():
        gains, best = {}, None
        for lr in rates:
            base = by_seed(run_name(BASELINE, None, lr))
            for value in values:
                name = run_name(arm, value, lr)
                rows = by_seed(name)
                ok = all(s in rows and s in base for s in seeds)
                gains[name] = float(np.mean([tuning_gain(rows[s], base[s]) for s in seeds])) if ok else None
                if ok and (best is None or gains[name] > best["gain"]):
                    best = dict(value=value, lr=lr, gain=gains[name])
        chosen[arm] = dict(best or dict(value=None, lr=None, gain=None), gains=gains)
    return chosen


def format_tuning(tuning: dict) -> str:
    """Markdown: per arm, the mean gain (points, mIoU + trimap w=3 against ppce at the same rate) per setting
    x rate, the chosen one starred; then ppce's mIoU per rate."""
    lines = [f"Tuning split (data seed {TUNING_DATA_SEED}), seeds {tuning['seeds']}, {tuning['steps']} steps"]
    rates = tuning["rates"]
    header = " | ".join(f"lr {lr:g}" for lr in rates) + " |\n|---|" + "---|" * len(rates)
    for arm, values in tuning["grid"].items():
        pick = tuning["chosen"][arm]
        lines += ["", f"{arm}: mean (mIoU gain + trimap w=3 gain) against ppce at the same rate (points)", "",
                  f"| {SETTING_NAMES[arm]} | {header}"]
        for value in values:
            cells = []
            for lr in rates:
                gain = pick["gains"].get(run_name(arm, value, lr))
                star = "*" if (value, lr) == (pick["value"], pick["lr"]) else ""
                cells.append("n/a" if gain is None else f"{100 * gain:+.2f}{star}")
            lines.append(f"| {value:g} | " + " | ".join(cells) + " |")
        lines += ["", f"chosen: {SETTING_NAMES[arm]} {pick['value']:g}, lr {pick['lr']:g} -> {arm}_tuned"
                  if pick["value"] is not None else "chosen: none (no setting with every seed scored)"]
    ppce = []
    for lr in rates:
        rows = [r["scores"]["miou"] for r in tuning["runs"].get(run_name(BASELINE, None, lr), []) if "scores" in r]
        ppce.append(f"{100 * np.mean(rows):.2f}" if rows else "n/a")
    lines += ["", f"| ppce mIoU | {header}", "| | " + " | ".join(ppce) + " |"]
    return "\n".join(lines) + "\n"


def run_tuning(workdir: str, seeds=TUNING_SEEDS, compare_seeds=REGISTERED["seeds"], steps=REGISTERED["steps"],
               pretrain_steps=REGISTERED["pretrain_steps"], pretrain_images=REGISTERED["pretrain_images"],
               grid=TUNING_GRID, rates=TUNING_RATES, tiny: bool = False, log=print) -> dict:
    """The lambda x learning-rate study: every setting x rate (and ppce per rate) on the tuning split in
    WORKDIR/tuning/<run_name>/seed<s> -> WORKDIR/tuning.{json,md}; then `<arm>_tuned` at its chosen setting and
    ppce at the same rate on the benchmark's val split, seeds `compare_seeds` -> WORKDIR/tuned.{json,md} (the
    paired tables of benchmarks/pac_bal.py). The pre-training and g_phi are the protocol's (WORKDIR/pretrain,
    WORKDIR/edge_net); finished runs are reused. -> {"tuning": ..., "comparison": ...}."""
    os.makedirs(workdir, exist_ok=True)
    base = base_config(tiny)
    init = pretrain(pretrain_config(base, pretrain_steps, pretrain_images), workdir, log)
    g_phi = edge_net(base, workdir, log)
    tuning_base = ml_collections.ConfigDict(base.to_dict())
    tuning_base.dataset.seed = TUNING_DATA_SEED
    settings = [(BASELINE, None)] + [(arm, value) for arm, values in grid.items() for value in values]

    def run(config, arm, value, lr, seed, folder):
        config = finetune_config(config, arm, seed, steps, init, g_phi, lr, tuned_overrides(base, arm, value))
        log(f"== {os.path.basename(folder)}, seed {seed}, data seed {config.dataset.seed} -> {folder}")
        return dict(seed=seed, **protocol.run_arm(config, os.path.join(folder, f"seed{seed}"), log))

    tuning = dict(seeds=list(seeds), steps=steps, grid=grid, rates=list(rates), runs={}, chosen={})
    for seed in seeds:
        for lr in rates:
            for arm, value in settings:
                name = run_name(arm, value, lr)
                tuning["runs"].setdefault(name, []).append(
                    run(tuning_base, arm, value, lr, seed, os.path.join(workdir, "tuning", name)))
        tuning["chosen"] = select_settings(tuning["runs"], tuning["seeds"][:seeds.index(seed) + 1], grid, rates)
        for suffix, text in (("json", json.dumps(tuning, indent=1)), ("md", format_tuning(tuning))):
            with open(os.path.join(workdir, f"tuning.{suffix}"), "w") as f:
                f.write(text)
    log(format_tuning(tuning))

    arms, comparisons = {BASELINE: (BASELINE, None, LEARNING_RATE)}, []
    for arm, pick in tuning["chosen"].items():
        if pick["value"] is None:
            log(f"{arm}: no setting with every seed scored on the tuning split; not compared")
            continue
        baseline = run_name(BASELINE, None, pick["lr"])
        arms[baseline] = (BASELINE, None, pick["lr"])
        arms[f"{arm}_tuned"] = (arm, pick["value"], pick["lr"])
        comparisons.append((f"{arm}_tuned", baseline))
    comparison = dict(seeds=list(compare_seeds), tiny=tiny, arms={label: [] for label in arms}, paired={},
                      chosen={arm: dict(value=p["value"], lr=p["lr"]) for arm, p in tuning["chosen"].items()})
    for seed in compare_seeds:
        for label, (arm, value, lr) in arms.items():
            comparison["arms"][label].append(run(base, arm, value, lr, seed,
                                                 os.path.join(workdir, run_name(arm, value, lr))))
            pac_bal.write(comparison, workdir, "tuned", comparisons)
    log(pac_bal.format_tables(comparison))
    return dict(tuning=tuning, comparison=comparison)
