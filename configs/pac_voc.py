"""PAC + BAL on Pascal VOC 2012 + SBD (the PAC paper's best: ResNet + PAC + BAL, 77.93 val mIoU, its Table 3).

    python -m semeda_jax.main --config=configs/pac_voc.py --workdir=runs/pac_voc \
        --config.dataset.root=/data/VOCdevkit/VOC2012 --config.dataset.sbd_root=/data/benchmark_RELEASE/dataset

Model "deeplab_v3_pac": DeepLab v3 with the Pyramid Atrous Convolution head in place of ASPP (one 3x3 kernel
applied at dilation rates 1, 3, 5, 7, 9, outputs summed; PAC paper §3.3 / §4.2; semeda_jax/models/pac.py);
`--config.model.pac_merge=concat` is its ablation (concat + 1x1), `--config.model.name=deeplab_v3` the BAL half
(DeepLabV3 + BAL: 77.64), `--config.loss=ce` the PAC half (ResNet + PAC: 76.97).
Settings (PAC paper §4, SPEC.md 2(b)): crop 513, scale 0.5-2.0, trained BN with decay 0.9997, batch 16, poly 0.9,
30k iterations, weight decay 1e-4, momentum 0.9, base lr 0.007 (the text is truncated; DeepLabV3's value).
BAL: Gaussian kernel, size 35, sigma 3, beta 0.5, edge map downsampled 4x.
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.dataset.update(name="voc", num_classes=21, train_split="train_aug", val_split="val")
    config.model.update(dict(
        name="deeplab_v3_pac", depth=101, base_width=64, output_stride=16, stem="deeplab", bn_mode="train",
        bn_momentum=0.9997))
    config.data.update(crop_size=(513, 513), scale_range=(0.5, 2.0), batch_size=16, eval_pad_size=(512, 512))
    config.loss = "bal"
    config.losses.bal.update(kernel="gaussian", size=35, sigma=3.0, beta=0.5, down=4)
    config.optimizer.update(learning_rate=0.007, momentum=0.9, weight_decay=1e-4, warmup_steps=0, poly_power=0.9)
    config.train.steps = 30000
    if common.parse_variants(arg, "configs/pac_voc.py", common.SMOKE)["smoke"]:
        common.shrink_for_smoke(config)
    return config
