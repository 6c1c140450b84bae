"""RelationNet on Cityscapes: OHEM + spatial correlation loss, fine -> coarse -> fine alternation (its Table I).

    python -m semeda_jax.main --config=configs/relationnet_cityscapes.py --workdir=runs/relationnet \
        --config.dataset.root=/data/cityscapes

Needs what is not built yet, and says so: the model "relationnet" (ResNet-38 + deformable convs + the relation
module, a left-right then up-down bidirectional GRU), the pair logits the "scl" term reads (the similarity subnet),
the multi-stage schedule below in the trainer, and 4-step shifted testing. The `train` stage stops at once with a
ConfigError naming the model. Today `--config.model.name=deeplab_v3 --config.model.depth=101 --config.loss=ohem`
trains the OHEM baseline.
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
    config.loss_weights.scl = 0.1
    config.ohem.update(threshold=0.6, min_kept=0)
    config.optimizer.update(learning_rate=5e-4, warmup_steps=0)
    # The alternation (SPEC.md 3(c)); each stage: data split + annotation, loss mix, length in epochs.
    config.schedule = (
        dict(name="fine", train_split="train", annotation="gtFine", loss="ohem+scl", epochs=60,
             lr=(5e-4, 5e-6), constant_epochs=35),
        dict(name="coarse", train_split="train_extra", annotation="gtCoarse", loss="ohem", epochs=30),
        dict(name="fine_again", train_split="train", annotation="gtFine", loss="ohem+scl", epochs=15),
    )
    config.eval.shifted_steps = 4  # 2x2 shifts of output_stride / 2 pixels, interleaved (SPEC.md 3(a))
    return common.apply_variant(config, arg, "configs/relationnet_cityscapes.py")
