"""SEMEDA against PPCE in the paper's protocol, scaled down to the synthetic data (pre-registered in docs/results.md).

    python -m benchmarks.protocol --workdir=/tmp/protocol                      # the registered run
    python -m benchmarks.protocol --workdir=/tmp/p --seeds=0,1 --steps=200     # shorter (reported as such)
    python -m benchmarks.protocol --workdir=/tmp/p --tiny                      # seconds: the CI smoke run
    python -m benchmarks.protocol --workdir=/tmp/protocol --tune               # lambda x lr: protocol_tuning.py
    python -m benchmarks.protocol --workdir=/tmp/p --tune --tiny               # its smoke run

1. Pre-training, the stand-in for ImageNet/COCO: the demo network (configs/demo.py) trained with PPCE and
   trained BN on a large synthetic set disjoint from the benchmark's data (another generator seed), trained once
   into WORKDIR/pretrain; g_phi is pre-trained once on the benchmark's training masks (WORKDIR/edge_net).
2. Fine-tuning arms (ARMS), every one from the pre-trained checkpoint with the paper's recipe scaled down:
   frozen BN, batch 6, learning rate 5e-4 with poly decay, random scale + horizontal mirroring (the pipeline's),
   the same fixed step budget. Seed s fixes the data order, augmentation and dropout of every arm (paired).
3. Per arm: mIoU, mean F1, E-measure, trimap boundary mIoU at widths 1, 3, 5, 10 (and boundary IoU / boundary F
   when the eval reports have them) of the final checkpoint on the validation split; per arm against PPCE: mean
   delta, its standard deviation over seeds, a 95% confidence interval (t distribution) and the seeds won
   (semeda_jax/stats.py); and the mean ratio of the SEMEDA (or Sobel) gradient norm to the CE gradient norm at
   the logits over training (config.train.log_logit_grad_norms).

Finished arms are reused (their WORKDIR/<arm>/seed<s>/arm.json), so an interrupted run continues.
Writes WORKDIR/protocol.json and WORKDIR/protocol.md.

--tune, SEMEDA's gain against its gradient scale: benchmarks/protocol_tuning.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np

from configs import demo
from semeda_jax import phases, stages, stats
from semeda_jax.checkpointing import NonFiniteError

METRICS = ("miou", "mean_f1", "emeasure", "boundary_w1", "boundary_w3", "boundary_w5", "boundary_w10")
# Reported when every compared report has them (the eval stage's boundary IoU and boundary F-score means).
OPTIONAL_METRICS = ("boundary_iou", "boundary_fscore")
METRIC_NAMES = dict(miou="mIoU", mean_f1="mean F1", emeasure="E-measure", boundary_w1="trimap w=1",
                    boundary_w3="trimap w=3", boundary_w5="trimap w=5", boundary_w10="trimap w=10",
                    boundary_iou="boundary IoU", boundary_fscore="boundary F")
TRIMAP_WIDTHS = (1, 3, 5, 10)
BASELINE = "ppce"

# arm -> (loss mix, {config.losses.<term>.<field>: value}); "semeda" uses the paper's VOC lambdas (2, 4, 0).
ARMS = {
    "ppce": ("ce", {}),
    "semeda": ("ce+semeda", {"semeda.reduction": "mean_pixels_sum_channels"}),
    "semeda_mean": ("ce+semeda", {"semeda.reduction": "mean"}),
    "semeda_sum": ("ce+semeda", {"semeda.reduction": "sum"}),
    "semeda_normalized": ("ce+semeda", {"semeda.normalize": True}),
    "sobel": ("ce+sobel", {"sobel.coefficient": 4.0}),
    "semeda_only": ("semeda", {}),  # CE weight 0: does mIoU hold from the pre-trained checkpoint?
}
PAPER_ARMS = tuple(ARMS)  # the paper's protocol (the default run)
# The loss zoo's protocol (docs/results.md, registered before any of its numbers): each term beside CE at its
# config defaults (surface at weight 0.01, Kervadec's), against PPCE; `--arms=ppce,dice,focal,lovasz,surface`.
ZOO_ARMS = ("dice", "focal", "lovasz", "surface")
ARMS.update({arm: (f"ce+{arm}", {}) for arm in ZOO_ARMS})

# The registered budget (docs/results.md, "The paper's protocol on the synthetic data").
# Amended before any number at the first budget (1000 steps; 3000 pre-training steps on 20 000 images) was seen.
REGISTERED = dict(seeds=(0, 1, 2, 3, 4), steps=500, pretrain_steps=2000, pretrain_images=5000)
PRETRAIN_DATA_SEED = 1000  # the pre-training images: disjoint from the benchmark's (data seed 0)
TUNING_DATA_SEED = 2000  # the tuning split (protocol_tuning.py, crf_tuning.py): disjoint from 0 and 1000
LEARNING_RATE = 5e-4  # the paper's fine-tuning learning rate


def base_config(tiny: bool) -> ml_collections.ConfigDict:
    """The benchmark's dataset and network: configs/demo.py (its smoke variant with --tiny)."""
    config = demo.get_config("smoke" if tiny else None)
    config.eval.trimap_widths = tuple(sorted(set(config.eval.trimap_widths) | set(TRIMAP_WIDTHS)))
    config.eval.num_plot_images = 0
    return config


def pretrain_config(config: ml_collections.ConfigDict, steps: int, images: int) -> ml_collections.ConfigDict:
    """PPCE with trained BN on `images` synthetic images of another data seed (the stand-in pre-training)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.loss = "ce"
    config.dataset.update(num_train=images, seed=PRETRAIN_DATA_SEED)
    config.train.update(steps=steps, eval_every=steps, checkpoint_every=steps)
    return config


def finetune_config(config: ml_collections.ConfigDict, arm: str, seed: int, steps: int, init: str,
                    edge_net: str, learning_rate: float = LEARNING_RATE, overrides=None) -> ml_collections.ConfigDict:
    """The paper's fine-tuning recipe (frozen BN, batch 6, lr 5e-4 poly (or `learning_rate`, the tuning's),
    scale [0.5, 2]) from the run `init`, with arm `arm`'s loss (its ARMS overrides updated by `overrides`, the
    tuning's); the final checkpoint is evaluated once (no checkpoint selection on the val split)."""
    config = ml_collections.ConfigDict(config.to_dict())
    loss, arm_overrides = ARMS[arm]
    overrides = {**arm_overrides, **(overrides or {})}
    config.seed, config.loss = seed, loss
    for key, value in overrides.items():
        term, field = key.split(".")
        config.losses[term][field] = value
    config.model.bn_mode = "frozen"
    config.data.batch_size = 6
    config.data.scale_range = (0.5, 2.0)
    config.optimizer.update(learning_rate=learning_rate, warmup_steps=0, poly_power=0.9)
    config.train.update(steps=steps, eval_every=steps, checkpoint_every=steps, log_every=max(min(50, steps), 1),
                        log_logit_grad_norms=True, init_checkpoint=init)
    config.edge_net.checkpoint = edge_net
    return config


def scores(report: dict) -> dict:
    """The compared numbers of one eval report (fractions): METRICS, and the OPTIONAL_METRICS it has."""
    trimap = report["trimap"]
    row = {"miou": report["miou"], "mean_f1": report["mean_f1"], "emeasure": report["emeasure"]}
    for width in TRIMAP_WIDTHS:
        row[f"boundary_w{width}"] = trimap["boundary_miou"][trimap["widths"].index(width)]
    row.update({metric: report[metric] for metric in OPTIONAL_METRICS if metric in report})
    return row


def columns(rows) -> tuple:
    """The metrics of a table of score rows: METRICS, then the OPTIONAL_METRICS that every row has."""
    rows = list(rows)
    return METRICS + tuple(m for m in OPTIONAL_METRICS if rows and all(m in r for r in rows))


def result_columns(result: dict) -> tuple:
    """columns() of every scored run of a run_protocol result."""
    return columns(r["scores"] for entry in result["arms"].values() for r in entry["per_seed"] if "scores" in r)


def grad_norm_ratio(history: list) -> float | None:
    """Mean over logged windows of |dL_structure/dlogits| / |dL_CE/dlogits| (None without both norms)."""
    ratios = []
    for _, metrics in history:
        ce = metrics.get("logit_grad_norm_ce")
        other = metrics.get("logit_grad_norm_semeda", metrics.get("logit_grad_norm_sobel"))
        if ce and other is not None:
            ratios.append(other / ce)
    return float(np.mean(ratios)) if ratios else None


def run_arm(config: ml_collections.ConfigDict, workdir: str, log) -> dict:
    """Train and evaluate one arm in `workdir` (a finished one is reused)
    -> {"scores", "grad_norm_ratio", "iou", "seconds"} or {"failed": one line}."""
    done = os.path.join(workdir, "arm.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    start = time.perf_counter()
    try:
        _, history = stages.run_train(config, workdir, log=log)
        report = stages.run_eval(config, workdir, log=log)
    except NonFiniteError as error:  # a diverged arm is a result too, reported as such
        result = dict(failed=f"{type(error).__name__}: {error}".splitlines()[0])
    else:
        result = dict(scores=scores(report), grad_norm_ratio=grad_norm_ratio(history),
                      iou=report["iou"], seconds=time.perf_counter() - start)
    with open(done, "w") as f:
        json.dump(result, f, indent=1)
    return result


def pretrain(config: ml_collections.ConfigDict, workdir: str, log) -> str:
    """WORKDIR/pretrain, the pre-trained run (trained once, a finished one is reused; its report.json scores it
    on its own validation split): what config.train.init_checkpoint of every arm names."""
    pre_dir = os.path.join(workdir, "pretrain")
    if not os.path.isfile(os.path.join(pre_dir, "report.json")):
        steps = phases.plan(config)[-1].end  # config.train.steps, or its phases' steps when it has phases
        log(f"== pre-training ({steps} steps on {config.dataset.num_train} images) -> {pre_dir}")
        stages.run_train(config, pre_dir, log=log)
        stages.run_eval(config, pre_dir, log=log)
    return pre_dir


def edge_net(config: ml_collections.ConfigDict, workdir: str, log) -> str:
    """g_phi pre-trained once on the benchmark's training masks, shared by every SEMEDA arm and seed."""
    stages.run_edge_pretrain(config, workdir, log=log)  # resumes a stopped pre-training, returns a finished one
    return os.path.join(workdir, "edge_net")


def format_table(result: dict) -> str:
    """Markdown: per arm the mean scores, then per arm against PPCE the paired statistics (points, i.e. %)."""
    arms = [a for a in result["arms"] if result["arms"][a]["per_seed"]]
    metrics = result_columns(result)
    lines = ["| arm | seeds | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " | SEMEDA/CE grad ratio |",
             "|---|---|" + "---|" * (len(metrics) + 1)]
    for arm in arms:
        entry = result["arms"][arm]
        rows = [r["scores"] for r in entry["per_seed"] if "scores" in r]
        means = [100 * np.mean([r[m] for r in rows]) if rows else math.nan for m in metrics]
        ratios = [r["grad_norm_ratio"] for r in entry["per_seed"] if r.get("grad_norm_ratio") is not None]
        ratio = f"{np.mean(ratios):.3g}" if ratios else "n/a"
        failed = sum("failed" in r for r in entry["per_seed"])
        seeds = f"{len(rows)}" + (f" (+{failed} failed)" if failed else "")
        lines.append(f"| {arm} | {seeds} | " + " | ".join(f"{v:.2f}" for v in means) + f" | {ratio} |")
    lines += ["", "Paired against PPCE (points): mean delta [95% CI], std, seeds won", "",
              "| arm | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for arm in arms:
        paired = result["arms"][arm].get("vs_ppce")
        if arm == BASELINE or not paired:
            continue
        lines.append(paired_row(arm, paired, metrics))
    return "\n".join(lines) + "\n"


def paired_row(label: str, paired: dict, metrics) -> str:
    """One markdown row of stats.paired_statistics: per metric 'mean delta [95% CI], std, seeds won' in points."""
    return f"| {label} | " + " | ".join(stats.paired_cell(paired[m]) for m in metrics) + " |"


def run_protocol(workdir: str, seeds, steps: int, pretrain_steps: int, pretrain_images: int,
                 arms=PAPER_ARMS, tiny: bool = False, log=print) -> dict:
    """The whole benchmark -> the result dict (also written to WORKDIR/protocol.{json,md})."""
    os.makedirs(workdir, exist_ok=True)
    base = base_config(tiny)
    init = pretrain(pretrain_config(base, pretrain_steps, pretrain_images), workdir, log)
    g_phi = edge_net(base, workdir, log) if any("semeda" in ARMS[a][0] for a in arms) else ""
    result = dict(seeds=list(seeds), steps=steps, pretrain_steps=pretrain_steps, pretrain_images=pretrain_images,
                  registered=(list(seeds) == list(REGISTERED["seeds"]) and steps == REGISTERED["steps"]
                              and pretrain_steps == REGISTERED["pretrain_steps"]
                              and pretrain_images == REGISTERED["pretrain_images"] and not tiny),
                  arms={arm: dict(loss=ARMS[arm][0], overrides=ARMS[arm][1], per_seed=[]) for arm in arms})
    for seed in seeds:
        for arm in arms:
            arm_dir = os.path.join(workdir, arm, f"seed{seed}")
            log(f"== {arm}, seed {seed} -> {arm_dir}")
            config = finetune_config(base, arm, seed, steps, init, g_phi)
            result["arms"][arm]["per_seed"].append(dict(seed=seed, **run_arm(config, arm_dir, log)))
            write_results(result, workdir)  # after every arm: a partial run's table is on disk as it comes
    log(format_table(result))
    return result


def write_results(result: dict, workdir: str) -> None:
    """Paired statistics of the arms run so far -> WORKDIR/protocol.json and WORKDIR/protocol.md."""
    base_rows = {r["seed"]: r["scores"] for r in result["arms"].get(BASELINE, {}).get("per_seed", [])
                 if "scores" in r}
    metrics = result_columns(result)
    for arm, entry in result["arms"].items():
        pairs = [(r["scores"], base_rows[r["seed"]]) for r in entry["per_seed"]
                 if "scores" in r and r["seed"] in base_rows]
        if arm != BASELINE and pairs:
            entry["vs_ppce"] = stats.paired_statistics([a for a, _ in pairs], [b for _, b in pairs], metrics)
    with open(os.path.join(workdir, "protocol.json"), "w") as f:
        json.dump(result, f, indent=1)
    budget = "the registered budget" if result["registered"] else "NOT the registered budget"
    with open(os.path.join(workdir, "protocol.md"), "w") as f:
        f.write(f"seeds {result['seeds']}, {result['steps']} fine-tuning steps, pre-training "
                f"{result['pretrain_steps']} steps on {result['pretrain_images']} images; {budget}\n\n"
                f"{format_table(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/semeda_protocol")
    parser.add_argument("--seeds", default=",".join(map(str, REGISTERED["seeds"])))
    parser.add_argument("--steps", type=int, default=REGISTERED["steps"], help="fine-tuning steps per arm")
    parser.add_argument("--pretrain-steps", type=int, default=REGISTERED["pretrain_steps"])
    parser.add_argument("--pretrain-images", type=int, default=REGISTERED["pretrain_images"])
    parser.add_argument("--arms", default=",".join(PAPER_ARMS), help=f"comma-separated subset of {list(ARMS)} "
                        f"(default: the paper's protocol; the loss zoo's: ppce,{','.join(ZOO_ARMS)})")
    parser.add_argument("--tiny", action="store_true", help="smoke-sized data and network (CI)")
    parser.add_argument("--tune", action="store_true", help="the lambda x learning-rate study instead "
                        "(protocol_tuning.py: its tuning seeds, then --seeds on val; with --tiny: its smoke run)")
    args = parser.parse_args()
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown or BASELINE not in arms:
        parser.error(f"--arms: unknown {unknown} or no {BASELINE!r}; valid: {list(ARMS)}")
    # The arms of different seeds compile identical steps: a persistent cache in the workdir compiles each once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.tune:
        budget = dict(compare_seeds=seeds, steps=args.steps, pretrain_steps=args.pretrain_steps,
                      pretrain_images=args.pretrain_images)
        from benchmarks import protocol_tuning  # it imports this module

        protocol_tuning.run_tuning(args.workdir, tiny=args.tiny,
                                   **{**budget, **(protocol_tuning.TINY_TUNING if args.tiny else {})})
        return
    run_protocol(args.workdir, seeds, args.steps, args.pretrain_steps,
                 args.pretrain_images, arms, tiny=args.tiny)


if __name__ == "__main__":
    main()
