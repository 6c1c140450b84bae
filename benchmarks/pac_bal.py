"""PAC + BAL on the synthetic data: the PAC paper's Table 3 rows (DeepLab v3 + CE, v3 + BAL, PAC + BAL) with
paired seeds (pre-registered in docs/results.md, "PAC + BAL on the synthetic data").

    python -m benchmarks.pac_bal --workdir=/tmp/pac_bal            # the registered run: 3 arms x seeds 0, 1, 2
    python -m benchmarks.pac_bal --workdir=/tmp/p --tiny            # seconds: the CI smoke run

Every arm trains configs/demo.py's network from random initialisation at the demo budget with its recipe
(trained BN, batch 8, lr 0.02 poly, 1200 steps); only the model's head and the loss differ. BAL is the paper's
Gaussian (beta 0.5, edge map downsampled 4x) with its width scaled to the synthetic images: the paper's kernel
(size 35, sigma 3, i.e. a standard deviation of sqrt(35 * 3 / 2) = 7.2 px at 1/4 resolution, 29 px on 513-px
crops) times 96 / 513 gives 1.36 px at 1/4 resolution: size 7, sigma 0.53. Seed s fixes initialisation, data
order, augmentation and dropout of every arm (paired). Finished arms are reused (WORKDIR/<arm>/seed<s>/arm.json).
Writes WORKDIR/pac_bal.json and WORKDIR/pac_bal.md.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import ml_collections
import numpy as np

from benchmarks import protocol
from semeda_jax import stats

# arm -> (model name, loss mix)
ARMS = {"v3_ce": ("deeplab_v3", "ce"), "v3_bal": ("deeplab_v3", "bal"), "pac_bal": ("deeplab_v3_pac", "bal")}
# (arm, baseline) pairs of the paired table: what BAL adds, what PAC + BAL adds, what PAC adds on top of BAL
COMPARISONS = (("v3_bal", "v3_ce"), ("pac_bal", "v3_ce"), ("pac_bal", "v3_bal"))
BAL_AT_DEMO_SCALE = dict(kernel="gaussian", size=7, sigma=0.53, beta=0.5, down=4)
REGISTERED_SEEDS = (0, 1, 2)


def arm_config(arm: str, seed: int, tiny: bool = False) -> ml_collections.ConfigDict:
    """configs/demo.py (its smoke variant with `tiny`) with arm `arm`'s head and loss, seed `seed`."""
    config = protocol.base_config(tiny)
    config.model.name, config.loss = ARMS[arm]
    config.seed = seed
    config.losses.bal.update(BAL_AT_DEMO_SCALE)
    if tiny:
        config.train.update(steps=2, eval_every=2, checkpoint_every=2, log_every=1)
    return config


def run(workdir: str, seeds, tiny: bool = False, log=print) -> dict:
    """Every arm x seed (seed-major, so a partial run has whole pairs) -> result dict, written as it comes."""
    result = dict(seeds=list(seeds), tiny=tiny, arms={arm: [] for arm in ARMS}, paired={})
    for seed in seeds:
        for arm in ARMS:
            arm_dir = os.path.join(workdir, arm, f"seed{seed}")
            log(f"== {arm}, seed {seed} -> {arm_dir}")
            result["arms"][arm].append(dict(seed=seed, **protocol.run_arm(arm_config(arm, seed, tiny), arm_dir, log)))
            write(result, workdir)
    log(format_tables(result))
    return result


def write(result: dict, workdir: str, name: str = "pac_bal", comparisons=COMPARISONS) -> None:
    """The paired statistics of the runs so far (the (arm, baseline) pairs of `comparisons`) ->
    WORKDIR/<name>.{json,md} (benchmarks/guidance_protocol.py writes its own through it)."""
    rows = {arm: {r["seed"]: r["scores"] for r in runs if "scores" in r} for arm, runs in result["arms"].items()}
    metrics = protocol.columns(row for by_seed in rows.values() for row in by_seed.values())
    for arm, base in comparisons:
        common = sorted(set(rows[arm]) & set(rows[base]))
        if common:
            result["paired"][f"{arm} - {base}"] = stats.paired_statistics(
                [rows[arm][s] for s in common], [rows[base][s] for s in common], metrics)
    with open(os.path.join(workdir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(workdir, f"{name}.md"), "w") as f:
        f.write(f"seeds {result['seeds']}{' (tiny)' if result['tiny'] else ''}\n\n{format_tables(result)}")


def format_tables(result: dict) -> str:
    """Markdown: mean scores per arm (%), then the paired differences (points)."""
    metrics = protocol.columns(r["scores"] for runs in result["arms"].values() for r in runs if "scores" in r)
    names = [protocol.METRIC_NAMES[m] for m in metrics]
    lines = ["| arm | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for arm, runs in result["arms"].items():
        scored = [r["scores"] for r in runs if "scores" in r]
        if scored:
            means = [100 * np.mean([r[m] for r in scored]) for m in metrics]
            lines.append(f"| {arm} | {len(scored)} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    lines += ["", "Paired differences (points): mean delta [95% CI], std, seeds won", "",
              "| pair | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [protocol.paired_row(pair, paired, metrics) for pair, paired in result["paired"].items()]
    return "\n".join(lines) + "\n"


def main(run_fn=None, doc: str = __doc__, workdir: str = "/tmp/semeda_pac_bal", seeds=REGISTERED_SEEDS) -> None:
    """The command line of a paired-seed benchmark: `run_fn(workdir, seeds, tiny=...)` (default run; another
    benchmark passes its own run, docstring, default workdir and seeds: benchmarks/guidance_protocol.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=workdir)
    parser.add_argument("--seeds", default=",".join(map(str, seeds)))
    parser.add_argument("--tiny", action="store_true", help="smoke-sized data and network (CI)")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    (run_fn or run)(args.workdir, [int(s) for s in args.seeds.split(",")], tiny=args.tiny)


if __name__ == "__main__":
    main()
