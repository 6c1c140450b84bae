"""RelationNet's parts on the synthetic data: OHEM vs OHEM + SCL vs + relation module vs + multi-step testing
(RelationNet Table I's steps), paired seeds, pre-registered in docs/results.md ("RelationNet on the synthetic data").

    python -m benchmarks.relationnet_protocol --workdir=/tmp/relationnet      # the registered run, seeds 0, 1, 2
    python -m benchmarks.relationnet_protocol --workdir=/tmp/r --tiny --arms=relation,multistep   # CI smoke

Trained arms, each from random initialisation on configs/demo.py's data (600 train / 100 val images of 96x128,
8 classes) with the RelationNet model at 1/8 of the paper's width (ResNet-38 with DCN in blocks 6-7, output
stride 8, trained BN): `ohem` (OHEM t = 0.6), `ohem_scl` (+ the similarity subnet, 0.1 SCL), `relation`
(+ the relation module). RelationNet's stage-1 schedule scaled down: 500 steps of batch 8 (96x96 crops, flips,
scales 0.75-1.25), lr 0.02 (the demo's, for training from scratch) for 300 steps, then linear to 2e-4 over 200
(the paper's 35 / 25 epochs and 100x decay; amended from 1200 = 700 + 500 steps before any result, docs/results.md).
The evaluation-only arm `multistep` is the relation arm's final checkpoint tested with 4 shifted copies
interleaved (config.eval.inference mode "shifted"). Seed s
fixes initialisation, data order, augmentation and dropout of every arm (paired). Finished arms are reused
(WORKDIR/<arm>/seed<s>/arm.json). Writes WORKDIR/relationnet.json and WORKDIR/relationnet.md.

Why the relation module hurts (a second registered study, docs/results.md, "Three results that contradict the
papers"): the arms `ohem_scl_sliding` / `relation_sliding` test the trained arm's final checkpoint with sliding
96x96 windows (the training crop, so the recurrent scans see the lengths they were trained on), and
`ohem_scl_whole` / `relation_whole` train on 96x128 crops (the test size):

    python -m benchmarks.relationnet_protocol --workdir=DIR --arms=ohem_scl,relation,ohem_scl_sliding,\
        relation_sliding,ohem_scl_whole,relation_whole

and `ohem_scl_pretrained` / `relation_pretrained` start from WORKDIR/pretrain, the model without the relation
module and the similarity subnet (ResNet-38 + classifier, OHEM) trained PRETRAIN_STEPS on the protocols'
pre-training images (data seed 1000; RelationNet trains the module jointly with an ImageNet-pretrained backbone):
every array whose path and shape match is loaded (config.train.init_partial), the rest starts fresh.
"""
from __future__ import annotations

import argparse
import os

import jax
import ml_collections

from benchmarks import guidance_protocol, pac_bal, protocol

# arm -> (SCL, relation module); the `_whole` arms train on whole images (crop = image size) instead of 96x96 crops
TRAINED = {"ohem": (False, False), "ohem_scl": (True, False), "relation": (True, True),
           "ohem_scl_whole": (True, False), "relation_whole": (True, True),
           "ohem_scl_pretrained": (True, False), "relation_pretrained": (True, True)}
# evaluation-only arm -> the trained arm whose checkpoint it tests (multistep: shifted; `_sliding`: windows of the
# training crop)
EVALUATED = {"multistep": "relation", "ohem_scl_sliding": "ohem_scl", "relation_sliding": "relation"}
REGISTERED_ARMS = ("ohem", "ohem_scl", "relation", "multistep")  # the RelationNet protocol (the default run)
ARMS = (*TRAINED, *EVALUATED)
# (arm, baseline): what SCL adds, what the relation module adds, what multi-step testing adds, all of them; then
# the diagnosis: what the module adds when train and test sizes match, and what matching them recovers
COMPARISONS = (("ohem_scl", "ohem"), ("relation", "ohem_scl"), ("multistep", "relation"), ("multistep", "ohem"),
               ("relation_sliding", "ohem_scl_sliding"), ("relation_whole", "ohem_scl_whole"),
               ("relation_sliding", "relation"), ("relation_whole", "relation"),
               ("relation_pretrained", "ohem_scl_pretrained"), ("relation_pretrained", "relation"))
REGISTERED_SEEDS = (0, 1, 2)
WIDTH = 8  # ResNet-38 base width (the paper's: 64)
LEARNING_RATE = 0.02
PHASE_STEPS = {"constant": 300, "decay": 200}  # tiny: 1 step each
PRETRAIN_STEPS = 2000  # split as PHASE_STEPS: 60% constant, 40% decay
PRETRAIN_IMAGES = 5000  # of protocol.PRETRAIN_DATA_SEED, as the paper's protocol's pre-training


def arm_config(arm: str, seed: int, tiny: bool = False, steps: int | None = None) -> ml_collections.ConfigDict:
    """The demo data with the RelationNet model, loss and stage-1-shaped schedule of `arm` (`steps` in all,
    default 500), seed `seed`."""
    config = protocol.base_config(tiny)
    scl, relation = TRAINED[EVALUATED.get(arm, arm)]
    config.seed = seed
    config.model.update(name="relationnet", backbone="resnet38", depth=38, stem="standard", output_stride=8,
                        base_width=4 if tiny else WIDTH, bn_mode="train", deformable=True, relation=relation,
                        aux_heads="similarity" if scl else "")
    config.loss = "ohem+scl" if scl else "ohem"
    config.losses.ohem.update(threshold=0.6, min_kept=0)
    config.losses.scl.weight = 0.1
    config.optimizer.update(learning_rate=LEARNING_RATE, warmup_steps=0)
    total = sum(PHASE_STEPS.values())
    steps = {name: 1 if tiny else n * (steps or total) // total for name, n in PHASE_STEPS.items()}
    config.phases = ml_collections.ConfigDict(dict(
        order="constant,decay", constant=dict(steps=steps["constant"], schedule="constant"),
        decay=dict(steps=steps["decay"], schedule="linear", end_learning_rate=LEARNING_RATE / 100)))
    config.train.update(eval_every=sum(steps.values()), checkpoint_every=sum(steps.values()),
                        log_every=1 if tiny else 50)  # the final checkpoint is evaluated once
    if arm == "multistep":
        config.eval.inference.update(mode="shifted", shifts=4)
    if arm.endswith("_sliding"):  # windows of the training crop; on 96x128 images at columns 0 and 32, averaged
        crop = tuple(config.data.crop_size)
        config.eval.inference.update(mode="sliding", window=crop, stride=crop, blend="uniform")
    if arm.endswith("_whole"):
        config.data.crop_size = tuple(config.dataset.image_size)  # the test size: whole images
    return config


def pretrain_config(tiny: bool = False) -> ml_collections.ConfigDict:
    """The `_pretrained` arms' starting point: the `ohem` arm's model (no relation module, no similarity subnet)
    trained PRETRAIN_STEPS on PRETRAIN_IMAGES images of the pre-training data seed (2 steps on the smoke data
    with `tiny`)."""
    config = arm_config("ohem", 0, tiny, steps=None if tiny else PRETRAIN_STEPS)
    if not tiny:
        config.dataset.update(num_train=PRETRAIN_IMAGES, seed=protocol.PRETRAIN_DATA_SEED)
    return config


def pretrained_arm_config(arm: str, seed: int, tiny: bool, init: str) -> ml_collections.ConfigDict:
    """`arm`'s config, initialised from the run in `init` where paths and shapes match."""
    config = arm_config(arm, seed, tiny)
    config.train.update(init_checkpoint=init, init_partial=True)
    return config


def run(workdir: str, seeds, arms=REGISTERED_ARMS, tiny: bool = False, log=print) -> dict:
    """Every arm x seed (seed-major, so a partial run has whole pairs) -> result dict, written as it comes."""
    result = dict(seeds=list(seeds), tiny=tiny, arms={arm: [] for arm in arms}, paired={})
    comparisons = [(a, b) for a, b in COMPARISONS if a in arms and b in arms]
    init = (protocol.pretrain(pretrain_config(tiny), workdir, log)
            if any(arm.endswith("_pretrained") for arm in arms) else None)
    for seed in seeds:
        for arm in arms:
            arm_dir = os.path.join(workdir, arm, f"seed{seed}")
            log(f"== {arm}, seed {seed} -> {arm_dir}")
            config = (pretrained_arm_config(arm, seed, tiny, init) if arm.endswith("_pretrained") else
                      arm_config(arm, seed, tiny))
            out = protocol.run_arm(config, arm_dir, log) if arm in TRAINED else guidance_protocol.evaluate_arm(
                config, os.path.join(workdir, EVALUATED[arm], f"seed{seed}"), arm_dir, log)
            result["arms"][arm].append(dict(seed=seed, **out))
            pac_bal.write(result, workdir, "relationnet", comparisons)
    log(pac_bal.format_tables(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/semeda_relationnet")
    parser.add_argument("--seeds", default=",".join(map(str, REGISTERED_SEEDS)))
    parser.add_argument("--arms", default=",".join(REGISTERED_ARMS),
                        help=f"comma-separated subset of {list(ARMS)} (default: the registered protocol's)")
    parser.add_argument("--tiny", action="store_true", help="smoke-sized data and network (CI)")
    args = parser.parse_args()
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    missing = [a for a in arms if a not in ARMS] + [EVALUATED[a] for a in arms if a in EVALUATED
                                                     and EVALUATED[a] not in arms]
    if missing:
        parser.error(f"--arms: unknown or missing {missing}; valid: {list(ARMS)} (an evaluation-only arm needs "
                     f"its trained arm: {EVALUATED})")
    os.makedirs(args.workdir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    run(args.workdir, [int(s) for s in args.seeds.split(",")], arms, tiny=args.tiny)


if __name__ == "__main__":
    main()
