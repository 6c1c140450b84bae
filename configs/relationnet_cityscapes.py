"""RelationNet on Cityscapes: OHEM + spatial correlation loss, fine -> coarse -> fine alternation (its Table I).

    python -m semeda_jax.main --config=configs/relationnet_cityscapes.py --workdir=runs/relationnet \
        --config.dataset.root=/data/cityscapes

Needs what is not built yet, and says so: the model "relationnet" (ResNet-38 + deformable convs + the relation
module, a left-right then up-down bidirectional GRU) and the pair logits the "scl" term reads (the similarity
subnet, an auxiliary head). The phases and 4-step shifted testing below run on the seams that exist
(semeda_jax/phases.py, semeda_jax/inference.py); `check_config` stops at once with a ConfigError naming the
model. Today `--config.model.name=deeplab_v3 --config.model.depth=101 --config.loss=ohem
--config.phases.fine.loss=ohem --config.phases.fine_decay.loss=ohem --config.phases.fine_again.loss=ohem`
trains the OHEM baseline through the same phases.
Settings (RelationNet §III, SPEC.md 3(b)-(c)): batch 8, crop 512x520 ("(512, 520)"), scale 0.55-1.3, flip,
output stride 8, ImageNet init; lr 5e-4 for 35 epochs then linear to 5e-6 over the last 25 (stage 1);
OHEM threshold 0.6; SCL weight 0.1.
Paper, Cityscapes val mIoU: stage 1 79.88, + multi-step 80.92, stage 3 + multi-step 81.76.
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.dataset.update(name="cityscapes", num_classes=19, train_split="train", val_split="val",
                          annotation="gtFine")
    config.model.update(dict(
        name="relationnet", depth=38, output_stride=8, bn_mode="train"))
    config.data.update(crop_size=(512, 520), scale_range=(0.55, 1.3), batch_size=8, eval_pad_size=(1024, 2048),
                       eval_batch_size=1)
    config.loss = "ohem+scl"
    config.losses.scl.weight = 0.1
    config.losses.ohem.update(threshold=0.6, min_kept=0)
    config.optimizer.update(learning_rate=5e-4, warmup_steps=0)
    # The alternation (SPEC.md 3(c)) as training phases: stage 1 is 35 epochs at 5e-4 then 25 linear to 5e-6;
    # the paper gives no learning rate for stages 2 and 3 (ours: linear 5e-4 -> 5e-6 each).
    config.phases = ml_collections.ConfigDict(dict(
        order="fine,fine_decay,coarse,fine_again",
        fine=dict(split="train", annotation="gtFine", loss="ohem+scl", epochs=35, schedule="constant"),
        fine_decay=dict(split="train", annotation="gtFine", loss="ohem+scl", epochs=25, schedule="linear",
                        end_learning_rate=5e-6),
        coarse=dict(split="train_extra", annotation="gtCoarse", loss="ohem", epochs=30, schedule="linear",
                    end_learning_rate=5e-6),
        fine_again=dict(split="train", annotation="gtFine", loss="ohem+scl", epochs=15, schedule="linear",
                        end_learning_rate=5e-6),
    ))
    # 4-step testing: 2x2 shifts of output_stride / 2 pixels, interleaved (SPEC.md 3(a))
    config.eval.inference.update(mode="shifted", shifts=4)
    return common.apply_variant(config, arg, "configs/relationnet_cityscapes.py")
