"""SEMEDA on HELEN face parsing: train 2,000, evaluate on the 330 test images (230 tuning + 100 testing), 11 labels.

    python -m semeda_jax.main --config=configs/helen.py --workdir=runs/helen_semeda \
        --config.dataset.root=/data/helen --config.model.pretrained=/weights/xception71.safetensors
    python -m semeda_jax.main --config=configs/helen.py:ppce --workdir=runs/helen_ppce ...     # PPCE baseline

DeepLab v3+ / Xception-71 with CE + SEMEDA, frozen BN, 321x321 crops, batch 6, lr 5e-4. The paper gives no
lambdas for HELEN: we use VOC's (2, 4, 0). The report's HELEN F1 merges parts (brows, eyes, mouth, overall).
Paper, HELEN F1 brows / eyes / mouth / overall: PPCE 74.76 / 82.66 / 87.8 / 85.84, SEMEDA 75.42 / 83.5 / 90.37 /
87.36 (Table 6).
"""
from __future__ import annotations

import ml_collections

from configs import semeda_paper


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = semeda_paper.semeda_config(
        arg, config_file="configs/helen.py",
        dataset=dict(name="helen", num_classes=11, train_split="train", val_split="test"),
        lambdas=(2.0, 4.0, 0.0), steps=10000, eval_pad_size=(512, 512), eval_batch_size=4)
    config.eval.f1_groups = "helen"  # Table 6's merged parts
    return config
