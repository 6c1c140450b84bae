"""Value checks of a config, run before any data is read or anything compiles (stages.check_config).

Each failure is a one-line ConfigError naming the config path, the value and what is expected: the training
cadence (`train.steps`, `train.eval_every`, ...: integers >= 1), batch and crop sizes (a crop dimension below
`model.output_stride` leaves the deepest features without one full cell), the optimiser's learning rate, and
every loss term of every mix: its weight, and its hyperparameters, checked by tracing the term once on a tiny
abstract batch (`jax.eval_shape`: the static checks of the loss functions run, nothing is computed), so a bad
`losses.semeda.reduction` fails here instead of after g_phi's pre-training.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from semeda_jax import objective
from semeda_jax.losses import init_edge_net
from semeda_jax.validation import ConfigError, InputError

POSITIVE_INTS = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                 "train.keep_checkpoints", "train.grad_accum_steps", "data.batch_size", "data.eval_batch_size",
                 "edge_net.steps", "edge_net.batch_size")
PROBE_SIZE = 16  # side of the abstract batch the loss terms are traced on


def _get(config: ml_collections.ConfigDict, path: str):
    value = config
    for part in path.split("."):
        value = value[part]
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_pair(config, path: str, minimum: int = 1) -> tuple[int, int]:
    value = _get(config, path)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value)
            and min(value) >= minimum):
        raise ConfigError(f"config.{path}: expected two integers (H, W) >= {minimum}, got {value!r}")
    return tuple(value)


def check_training_values(config: ml_collections.ConfigDict) -> None:
    """Cadence, batch, crop, scale and learning-rate fields (see the module docstring)."""
    for path in POSITIVE_INTS:
        value = _get(config, path)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"config.{path}: expected an integer >= 1, got {value!r}")
    stride = config.model.get("output_stride") or 1
    crop = _check_pair(config, "data.crop_size")
    if min(crop) < stride:
        raise ConfigError(f"config.data.crop_size: {crop} is smaller than config.model.output_stride={stride} "
                          f"(the deepest features would not hold one full cell); use a crop >= {stride} per side")
    _check_pair(config, "data.eval_pad_size")
    low, high = (tuple(config.data.scale_range) + (None, None))[:2]
    if len(config.data.scale_range) != 2 or not (_is_number(low) and _is_number(high) and 0 < low <= high):
        raise ConfigError(f"config.data.scale_range: expected (min, max) with 0 < min <= max, "
                          f"got {tuple(config.data.scale_range)!r}")
    lr = config.optimizer.learning_rate
    if not _is_number(lr) or lr <= 0:
        raise ConfigError(f"config.optimizer.learning_rate: expected a finite number > 0, got {lr!r}")


def _abstract_inputs(reads, num_classes: int):
    channels = {"logits": num_classes, "pair_logits": 9}
    per_image = {"class_logits": (1, num_classes)}  # image-level outputs [B,C]; the others are maps
    return [jax.ShapeDtypeStruct(per_image.get(name, (1, PROBE_SIZE, PROBE_SIZE, channels.get(name, num_classes))),
                                 jnp.float32) for name in reads]


def check_loss_values(config: ml_collections.ConfigDict) -> None:
    """Every term of every mix: a finite weight, and hyperparameters its loss function accepts."""
    num_classes = config.dataset.num_classes
    names = {name for key, mix in objective.all_mixes(config).items() for name in objective.parse_mix(mix, key)}
    for name in sorted(names):
        term, section = objective.TERMS[name], config.losses[name]
        if not _is_number(section.weight):
            raise ConfigError(f"config.losses.{name}.weight: expected a finite number, got {section.weight!r}")
        hyper = {k: v for k, v in section.to_dict().items() if k != "weight"}
        lambdas = hyper.get("lambdas")
        if lambdas is not None and not (isinstance(lambdas, (tuple, list)) and len(lambdas) == 3
                                        and all(_is_number(v) and v >= 0 for v in lambdas)):
            raise ConfigError(f"config.losses.{name}.lambdas: expected three finite weights >= 0 (one per "
                              f"edge-net layer), got {lambdas!r}")
        nets = [init_edge_net(jax.random.PRNGKey(0), num_classes) if net == "edge_net" else None
                for net in term.needs]
        labels = jax.ShapeDtypeStruct((1, PROBE_SIZE, PROBE_SIZE), jnp.int32)
        try:
            jax.eval_shape(lambda *inputs: term.fn(*inputs[:-1], inputs[-1], *nets, **hyper),
                           *_abstract_inputs(term.reads, num_classes), labels)
        except (InputError, TypeError, ValueError) as error:
            message = str(error).splitlines()[0]
            field = message.split(":", 1)[0]
            where = f"config.losses.{name}.{message}" if field in hyper else f"config.losses.{name}: {message}"
            raise ConfigError(where) from None


def check_values(config: ml_collections.ConfigDict) -> None:
    """All value checks of this module (ConfigError on the first failure)."""
    check_training_values(config)
    check_loss_values(config)
