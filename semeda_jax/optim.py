"""Optimiser: SGD with momentum, decoupled weight decay on conv/dense kernels, warm-up then poly decay.

lr(t) = base * t / warmup for t < warmup, then base * (1 - (t - warmup) / (steps - warmup)) ** power (the
DeepLab "poly" schedule, power 0.9). Frozen batch norm (SEMEDA's setting) also freezes BN scale and bias: their
updates are zero.
"""
from __future__ import annotations

import jax
import ml_collections
import optax
from flax import traverse_util

from semeda_jax.models.layers import frozen_bn_mask
from semeda_jax.validation import ConfigError, check_fields, is_number

CONFIG_FIELDS = ("learning_rate", "momentum", "weight_decay", "warmup_steps", "poly_power")  # of config.optimizer


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.optimizer (stages.check_config): only CONFIG_FIELDS; a finite learning rate > 0."""
    check_fields(config.optimizer, CONFIG_FIELDS, "config.optimizer")
    lr = config.optimizer.learning_rate
    if not is_number(lr) or lr <= 0:
        raise ConfigError(f"config.optimizer.learning_rate: expected a finite number > 0, got {lr!r}")


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int, *, base: float | None = None,
                           warmup: int | None = None) -> optax.Schedule:
    """Warm-up (linear from 0) followed by poly decay to 0 at `total_steps`; `base` and `warmup` default to
    config.learning_rate and config.warmup_steps."""
    base = config.learning_rate if base is None else base
    warmup = int(config.warmup_steps if warmup is None else warmup)
    poly = optax.polynomial_schedule(init_value=base, end_value=0.0, power=config.poly_power,
                                     transition_steps=max(total_steps - warmup, 1))
    if warmup <= 0:
        return poly
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), poly], [warmup])


def _kernel_mask(params) -> dict:
    """True for weight matrices: conv/dense "kernel"s and the relation module's GRU "input_kernel" and
    "hidden_kernel" (weight decay applies); False for biases and norm parameters."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1].endswith("kernel") for path in flat})


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule, params,
                     freeze_batch_norm: bool) -> optax.GradientTransformation:
    """SGD(momentum) with the learning rate `schedule` + weight decay on kernels; BN scale/bias frozen when
    `freeze_batch_norm`."""
    sgd = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=_kernel_mask(params)),
                      optax.sgd(schedule, momentum=config.momentum))
    if not freeze_batch_norm:
        return sgd
    labels = jax.tree_util.tree_map(lambda trainable: "trained" if trainable else "frozen", frozen_bn_mask(params))
    return optax.multi_transform({"trained": sgd, "frozen": optax.set_to_zero()}, labels)


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
