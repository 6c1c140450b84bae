"""RelationNet on Cityscapes (Zhuang et al.): ResNet-38 with deformable convolutions and the relation module,
OHEM + 0.1 SCL, fine -> coarse -> fine alternation, 4-step shifted testing; the rows of its Table I as variants.

    python -m semeda_jax.main --config=configs/relationnet_cityscapes.py --workdir=runs/relationnet \
        --config.dataset.root=/data/cityscapes                                       # stage3, the full system
    python -m semeda_jax.main --config=configs/relationnet_cityscapes.py:ohem ...    # one Table I row
    python -m semeda_jax.main --config=configs/relationnet_cityscapes.py:stage1,smoke ...  # tiny: seconds

Variants (one row, optionally with `smoke`), Table I of the paper, Cityscapes val mIoU / mAcc (%):
    ce                 ResNet-38, cross entropy, stage-1 schedule, whole-image testing        73.64 / 82.16
    ohem               ResNet-38, OHEM (t = 0.6)                                              77.39 / 84.47
    dcn                ohem + deformable convolutions (blocks 6 and 7)                         78.40 / 85.23
    relation           ohem + the relation module (no DCN)                                     78.43 / 86.20
    dcn_relation       ohem + DCN + relation module                                            79.17 / 85.99
    stage1             dcn_relation + similarity subnet with 0.1 SCL ("Stage1")                79.88 / 86.83
    stage1_multistep   stage1 + 4-step shifted testing                                         80.92 / 87.54
    stage2             stage1_multistep + stage 2 on coarse data ("Stage2†")                   81.16 / 88.24
    stage3 (default)   stage2 + stage 3 on fine data ("Stage3 + Multi-Steps")                  81.76 / 88.69
    smoke              with any row: tiny model (base width 4, GRU hidden 16), 32x32 crops, phases of 2-3 steps
Table I's ResNet-101 rows (CE 70.14 / 78.93, OHEM 72.12 / 80.43) are not variants: the paper does not say which
head that baseline carries.

Settings (RelationNet §II-III, SPEC.md 3(b)-(c)): batch 8, random flip, scale 0.55-1.3, crop (512, 520), output
stride 8, OHEM threshold 0.6 (min_kept 0, the paper's), SCL weight 0.1, ImageNet initialisation
(config.model.pretrained; empty = random, with a warning: on the synthetic benchmark the relation module cost
13.6 mIoU from random weights and 2.5 from a pre-trained backbone, docs/results.md). Phases (semeda_jax/phases.py):
    fine        stage 1, part 1: gtFine train, 35 epochs at lr 5e-4 (constant)
    fine_decay  stage 1, part 2: gtFine train, 25 epochs, lr linear 5e-4 -> 5e-6
    coarse      stage 2: gtCoarse train + train_extra, OHEM only, 30 epochs, lr linear 5e-4 -> 5e-6
    fine_again  stage 3: gtFine train, 15 epochs, lr linear 5e-4 -> 5e-6
Stage 1 is the 60-epoch schedule of §III-D; every ablation row (ce ... stage1_multistep) trains it alone, as the
paper says it trains "all experiments" with it. The loss of the fine phases is the row's (OHEM + SCL from
stage1 on); the coarse phase is OHEM only (§III-C-2: "with coarse data but not with SCL"); the similarity subnet
stays in the model through it and receives no loss gradient (weight decay still applies).

What the paper leaves open, and our reading:
- crop "(512, 520)": height 512 x width 520.
- stage 2 data: "coarse data" with no split named; we take every coarse training annotation, gtCoarse of train
  + train_extra (2,975 + 19,998 images); `--config.phases.coarse.split=train_extra` is the 19,998 alone.
- learning rate of stages 2 and 3: not given; ours: each decays linearly from 5e-4 to 5e-6 over its epochs.
- optimiser and weight decay: not given; ours: SGD, momentum 0.9, weight decay 1e-4 (configs/common.py), no
  warm-up; BN: trained, synchronised over the global batch of 8.
- multi-step testing (§II-C, Fig. 5): "4-steps testing ... We shift the image for testing in order to get the
  result of each pixel instead of using interpolations". Offsets are not given; ours: 4 = 2 x 2 copies shifted
  up/left by {0, 4}^2 px (half the output stride), their OS-8 logit grids interleaved into one OS-4 grid whose
  samples keep the whole-image map's alignment (the unshifted copy's values stay where whole-image inference puts
  them), then bilinearly upsampled (semeda_jax/inference.py, mode "shifted"). A prediction at every pixel, the
  text's literal goal, takes 8 x 8 copies (`--config.eval.inference.shifts=64`).
- the model's open choices are the model's defaults (semeda_jax/models/relation.py, similarity.py), exposed as
  config.model fields: relation_hidden (per GRU direction; unset = 4 x base_width = 256), relation_merge
  ("concat" of the two directions, or "sum"), similarity_width (unset = 4 x base_width).
"""
from __future__ import annotations

import ml_collections

from configs import common

# Table I rows: (loss of the fine phases, deformable, relation module, stages run, shifted testing, mIoU, mAcc).
ROWS = {
    "ce": ("ce", False, False, 1, False, 73.64, 82.16),
    "ohem": ("ohem", False, False, 1, False, 77.39, 84.47),
    "dcn": ("ohem", True, False, 1, False, 78.40, 85.23),
    "relation": ("ohem", False, True, 1, False, 78.43, 86.20),
    "dcn_relation": ("ohem", True, True, 1, False, 79.17, 85.99),
    "stage1": ("ohem+scl", True, True, 1, False, 79.88, 86.83),
    "stage1_multistep": ("ohem+scl", True, True, 1, True, 80.92, 87.54),
    "stage2": ("ohem+scl", True, True, 2, True, 81.16, 88.24),
    "stage3": ("ohem+scl", True, True, 3, True, 81.76, 88.69),
}
DEFAULT_ROW = "stage3"
# phase name -> (stage, split, annotation ("" = config.dataset's, gtFine), epochs, schedule); the loss is the
# row's, OHEM only in stage 2.
PHASES = {
    "fine": (1, "train", "", 35, "constant"),
    "fine_decay": (1, "train", "", 25, "linear"),
    "coarse": (2, "train+train_extra", "gtCoarse", 30, "linear"),
    "fine_again": (3, "train", "", 15, "linear"),
}
SMOKE_PHASE_STEPS = {"fine": 2, "fine_decay": 2, "coarse": 3, "fine_again": 2}


VARIANTS = {"row": (DEFAULT_ROW, tuple(ROWS)), **common.SMOKE}  # {group: (default, tokens)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.parse_variants(arg, "configs/relationnet_cityscapes.py", VARIANTS)
    row = variant["row"]
    loss, deformable, relation, stages, multistep = ROWS[row][:5]
    config = common.base_config()
    config.dataset.update(name="cityscapes", num_classes=19, train_split="train", val_split="val",
                          annotation="gtFine")
    # relation_hidden / similarity_width unset = the model's 4 x base_width (256 at the paper's width)
    config.model.update(name="relationnet", backbone="resnet38", depth=38, stem="standard", output_stride=8,
                        bn_mode="train", deformable=deformable, relation=relation,
                        relation_hidden=ml_collections.config_dict.placeholder(int), relation_merge="concat")
    if "scl" in loss:  # the similarity subnet, an auxiliary head
        config.model.update(aux_heads="similarity", similarity_width=ml_collections.config_dict.placeholder(int))
    config.data.update(crop_size=(512, 520), scale_range=(0.55, 1.3), batch_size=8, eval_pad_size=(1024, 2048),
                       eval_batch_size=1)
    config.loss = loss
    config.losses.ohem.update(threshold=0.6, min_kept=0)
    config.losses.scl.weight = 0.1
    config.optimizer.update(learning_rate=5e-4, warmup_steps=0)
    names = [name for name, (stage, *_) in PHASES.items() if stage <= stages]
    config.phases = ml_collections.ConfigDict(dict(order=",".join(names)))
    for name in names:
        stage, split, annotation, epochs, schedule = PHASES[name]
        section = dict(split=split, loss="ohem" if stage == 2 else loss, epochs=epochs, schedule=schedule)
        if annotation:
            section["annotation"] = annotation
        if schedule == "linear":
            section["end_learning_rate"] = 5e-6
        config.phases[name] = section
    if multistep:
        config.eval.inference.update(mode="shifted", shifts=4)
    if variant["smoke"]:
        common.shrink_for_smoke(config)
        for name in names:
            del config.phases[name]["epochs"]
            config.phases[name].steps = SMOKE_PHASE_STEPS[name]
    return config
