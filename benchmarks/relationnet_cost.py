"""The cost of RelationNet's parts as shares of its train step: ResNet-38 alone, + deformable convolutions in B6/B7,
+ the relation module, + the similarity subnet with the SCL term (the full model).

    python -m benchmarks.relationnet_cost                                  # base width 32, batch 2 of 128x128
    python -m benchmarks.relationnet_cost --base-width 64 --crop 256 256 --batch 1 --repeats 5

Every arm is the real jitted train step (benchmarks/train_step.py's compile_step: the model and loss as `train`
builds them, random weights, one random batch), OHEM for the first three arms and OHEM + 0.1 SCL for the last.
All arms are compiled first, then timed interleaved (round r times one step of every arm, after one warm-up
round), so a load change on a shared machine hits every arm alike; the table gives the median step time, its
ratio to ResNet-38 alone, and each part's share of the full model's step: (arm - previous arm) / full. The
shares depend on the size: the relation module's two scans are sequential over the feature rows / columns.
"""
from __future__ import annotations

import argparse
import os
import statistics

import jax

from benchmarks.train_step import compile_step, time_steps
from configs import common

# arm name -> (model fields, loss mix)
ARMS = (
    ("ResNet-38", dict(deformable=False, relation=False), "ohem"),
    ("+ DCN (B6, B7)", dict(deformable=True, relation=False), "ohem"),
    ("+ relation module", dict(deformable=True, relation=True), "ohem"),
    ("+ similarity / SCL", dict(deformable=True, relation=True, aux_heads="similarity"), "ohem+scl"),
)


def arm_config(fields: dict, loss: str, base_width: int, crop: tuple[int, int], batch: int):
    """The RelationNet config of one arm (19 classes, BN trained, OHEM t = 0.6, SCL weight 0.1)."""
    config = common.base_config()
    config.dataset.num_classes = 19
    config.model.update(name="relationnet", backbone="resnet38", depth=38, stem="standard", output_stride=8,
                        base_width=base_width, bn_mode="train", **fields)
    config.data.update(crop_size=tuple(crop), batch_size=batch)
    config.loss = loss
    config.losses.scl.weight = 0.1
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-width", type=int, default=32, help="ResNet-38 width (64 = the paper's)")
    parser.add_argument("--crop", type=int, nargs=2, default=(128, 128), help="crop height width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    args = parser.parse_args()
    device = jax.devices()[0]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"device: {device.device_kind} x {jax.device_count()} ({device.platform}), jax {jax.__version__}; "
          f"load average {load}")
    print(f"base width {args.base_width}, batch {args.batch} of {args.crop[0]}x{args.crop[1]}, "
          f"{args.repeats} interleaved rounds\n", flush=True)
    compiled = {name: compile_step(arm_config(fields, loss, args.base_width, args.crop, args.batch))
                for name, fields, loss in ARMS}
    times = {name: [] for name in compiled}
    for round_ in range(args.repeats + 1):
        for name, arm in compiled.items():
            seconds = time_steps(arm, 1)[0]
            if round_:  # round 0 warms up
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    full, first = median[ARMS[-1][0]], median[ARMS[0][0]]
    print(f"{'arm':<22}{'loss':<10}{'step (s)':>9}{'x ResNet-38':>12}{'share of full':>15}"
          f"{'memory (MiB)':>14}{'GFLOP':>9}{'compile (s)':>12}")
    previous = 0.0
    for name, _, loss in ARMS:
        arm = compiled[name]
        share = (median[name] - previous) / full
        previous = median[name]
        print(f"{name:<22}{loss:<10}{median[name]:>9.3f}{median[name] / first:>12.2f}{share:>14.1%} "
              f"{arm['memory_mib']:>14.0f}{arm['gflop_per_step']:>9.1f}{arm['compile_s']:>12.1f}")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
