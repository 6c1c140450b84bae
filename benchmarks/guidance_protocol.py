"""Classification guidance on the synthetic data: the guidance paper's Table 3 steps with paired seeds
(pre-registered in docs/results.md, "Classification guidance on the synthetic data").

    python -m benchmarks.guidance_protocol --workdir=/tmp/guidance     # the registered run, seeds 0, 1, 2
    python -m benchmarks.guidance_protocol --workdir=/tmp/g --tiny     # seconds: smoke-sized

Two trained arms per seed, configs/demo.py's network, recipe and budget (ResNet-18 at quarter width, OS 16,
trained BN, batch 8, lr 0.02 poly, 1200 steps, CE) with the guidance model's LargeFOV head: `baseline` (no
classification branch) and `clsnet` (the branch, Eq. 3). Evaluation-only arms on clsnet's final checkpoint of
the same seed: `crf_potts` / `crf_content` (the guided-filter CRF post-processing, config.eval.crf defaults,
Potts / content-sensitive compatibility), `tta_avg` / `tta_max` / `tta_mix` / `tta_learned` (scales 0.75, 1,
1.25 x flips fused by avg, max, (avg+max)/2, learned weights fitted on the training split: learn_fusion) and
`full` (tta_learned + the content CRF: the last Table 3 row). Writes WORKDIR/guidance.{json,md}; finished arms
are reused (WORKDIR/<arm>/seed<s>/arm.json).
"""
from __future__ import annotations

import json
import os

import ml_collections

from benchmarks import pac_bal, protocol
from semeda_jax import evaluate, stages

TRAINED = {"baseline": False, "clsnet": True}  # arm -> classification branch
TTA = dict(scales=(0.75, 1.0, 1.25), flip=True)
# evaluation-only arm -> (config.eval.inference fields, config.eval.crf.compatibility)
EVALUATED = {
    "crf_potts": (dict(postprocess="guided_crf"), "potts"),
    "crf_content": (dict(postprocess="guided_crf"), "content"),
    "tta_avg": (dict(fusion="avg", **TTA), "potts"),
    "tta_max": (dict(fusion="max", **TTA), "potts"),
    "tta_mix": (dict(fusion="avg+max", **TTA), "potts"),
    "tta_learned": (dict(fusion="learned", **TTA), "potts"),
    "full": (dict(fusion="learned", postprocess="guided_crf", **TTA), "content"),
}
COMPARISONS = (("clsnet", "baseline"), ("crf_potts", "clsnet"), ("crf_content", "clsnet"),
               ("crf_content", "crf_potts"), ("tta_avg", "clsnet"), ("tta_max", "tta_avg"), ("tta_mix", "tta_avg"),
               ("tta_learned", "tta_avg"), ("full", "baseline"))
REGISTERED_SEEDS = (0, 1, 2)


def arm_config(arm: str, seed: int, tiny: bool = False) -> ml_collections.ConfigDict:
    """The demo setup with the guidance model (branch for every arm but the baseline) and arm's inference."""
    config = pac_bal.arm_config("v3_ce", seed, tiny)
    config.model.update(name="deeplab_guidance", class_branch=TRAINED.get(arm, True))
    inference, compatibility = EVALUATED.get(arm, ({}, "potts"))
    config.eval.inference.update(inference)
    config.eval.crf.compatibility = compatibility
    if tiny:
        config.eval.learn_fusion.update(pixels_per_image=32, steps=10)
    return config


def evaluate_arm(config: ml_collections.ConfigDict, run_dir: str, arm_dir: str, log) -> dict:
    """An evaluation-only arm on the trained run `run_dir` (learn_fusion first for a learned fusion; its weights
    go to run_dir) -> {"scores", "iou"}, stored as arm_dir/arm.json (reused when there)."""
    done = os.path.join(arm_dir, "arm.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    if config.eval.inference.fusion == "learned":
        stages.run_learn_fusion(config, run_dir, log)
    state = stages.restore_for_inference(config, run_dir, log)
    report = evaluate.evaluate(state, stages.build_readers(config)["val"], config,
                               spec=stages.inference_spec(config, run_dir))
    result = dict(scores=protocol.scores(report), iou=report["iou"])
    os.makedirs(arm_dir, exist_ok=True)
    with open(done, "w") as f:
        json.dump(result, f, indent=1)
    return result


def run(workdir: str, seeds, tiny: bool = False, log=print) -> dict:
    """Every arm x seed (seed-major) -> result dict, written as it comes."""
    result = dict(seeds=list(seeds), tiny=tiny, arms={arm: [] for arm in (*TRAINED, *EVALUATED)}, paired={})
    for seed in seeds:
        for arm in (*TRAINED, *EVALUATED):
            arm_dir = os.path.join(workdir, arm, f"seed{seed}")
            log(f"== {arm}, seed {seed} -> {arm_dir}")
            config = arm_config(arm, seed, tiny)
            out = protocol.run_arm(config, arm_dir, log) if arm in TRAINED else \
                evaluate_arm(config, os.path.join(workdir, "clsnet", f"seed{seed}"), arm_dir, log)
            result["arms"][arm].append(dict(seed=seed, **out))
            pac_bal.write(result, workdir, "guidance", COMPARISONS)
    log(pac_bal.format_tables(result))
    return result


def main() -> None:
    pac_bal.main(run, __doc__, "/tmp/semeda_guidance", REGISTERED_SEEDS)


if __name__ == "__main__":
    main()
