"""SEMEDA (CE + SEMEDA loss) against the PPCE baseline (CE only) on the synthetic data, same seed and budget.

    python -m benchmarks.semeda_vs_ce                          # configs/demo.py, seeds 0
    python -m benchmarks.semeda_vs_ce --seeds=0,1,2 --steps=3000
    python -m benchmarks.semeda_vs_ce --seeds=0,1,2 --lambdas=0.5,1,0        # other SEMEDA layer weights

Each arm runs the demo config's train and eval stages in its own workdir under --workdir; the only difference
between the arms is config.loss (and config.semeda.lambdas with --lambdas; a finished arm's workdir is only
re-evaluated, so the CE arms are shared between lambda settings). Prints mIoU, mean F1, E-measure and boundary /
non-boundary trimap mIoU per arm (mean over seeds) and the SEMEDA - CE deltas, and writes them to
WORKDIR/semeda_vs_ce[_lambdas...].json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from configs import demo
from semeda_jax import stages

ARMS = {"CE (PPCE)": "ce", "CE+SEMEDA": "ce+semeda"}
TRIMAP_SHOWN = (1, 3, 10)


def scores(report: dict) -> dict:
    """The compared numbers of one eval report (fractions, not %)."""
    trimap = report["trimap"]
    row = {"mIoU": report["miou"], "mean F1": report["mean_f1"], "E-measure": report["emeasure"]}
    for width in TRIMAP_SHOWN:
        index = trimap["widths"].index(width)
        row[f"boundary mIoU w={width}"] = trimap["boundary_miou"][index]
    row["non-boundary mIoU w=3"] = trimap["interior_miou"][trimap["widths"].index(3)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/semeda_vs_ce")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the config's)")
    parser.add_argument("--lambdas", default=None, help="SEMEDA layer weights, e.g. 0.5,1,0 (default: the config's)")
    args = parser.parse_args()
    lambdas = tuple(float(v) for v in args.lambdas.split(",")) if args.lambdas else None
    suffix = "_lambdas" + "_".join(f"{v:g}" for v in lambdas) if lambdas else ""
    results = {arm: [] for arm in ARMS}
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm, loss in ARMS.items():
            config = demo.get_config()
            config.seed, config.loss = seed, loss
            config.train.steps = args.steps or config.train.steps
            name = f"{loss.replace('+', '_')}_seed{seed}"
            if lambdas and loss != "ce":
                config.semeda.lambdas = lambdas
                name += suffix
            workdir = os.path.join(args.workdir, name)
            print(f"== {arm}, seed {seed} -> {workdir}", flush=True)
            stages.run_train(config, workdir)
            results[arm].append(scores(stages.run_eval(config, workdir)))
    names = list(next(iter(results.values()))[0])
    means = {arm: {n: float(np.mean([r[n] for r in rows])) for n in names} for arm, rows in results.items()}
    ce_rows, semeda_rows = (results[arm] for arm in ARMS)
    seeds = len(ce_rows)
    print(f"\nmean over {seeds} seed(s), values in %; delta = SEMEDA - CE (mean, std over seeds, seeds where > 0)")
    print(f"{'metric':<24} {'CE (PPCE)':>10} {'CE+SEMEDA':>10} {'delta':>7} {'std':>6} {'wins':>5}")
    for n in names:
        deltas = 100 * np.array([s[n] - c[n] for c, s in zip(ce_rows, semeda_rows)])
        print(f"{n:<24} {100 * means['CE (PPCE)'][n]:>10.2f} {100 * means['CE+SEMEDA'][n]:>10.2f} "
              f"{deltas.mean():>+7.2f} {deltas.std():>6.2f} {int((deltas > 0).sum()):>3}/{seeds}")
    with open(os.path.join(args.workdir, f"semeda_vs_ce{suffix}.json"), "w") as f:
        json.dump({"per_seed": results, "mean": means}, f, indent=1)


if __name__ == "__main__":
    main()
