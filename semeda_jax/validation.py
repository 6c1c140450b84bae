"""Eager input checks shared by the losses and metrics, and the config checks' helpers (ConfigError).

The numerical cores stay branch-free under `jax.jit`: shape checks run at trace time (shapes are static, so
they cost nothing in the compiled program) and value checks (label range) run only when the labels are
concrete arrays, i.e. when a loss or metric is called eagerly. Every error names the argument and says what
was expected, so a user sees `labels: values {3, 7} are outside [0, 3) and not the void label 255` instead
of a silent NaN or an out-of-range gather.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

IGNORE_LABEL = 255


class InputError(ValueError):
    """A caller passed an array of the wrong rank, shape, dtype or value range."""


class ConfigError(ValueError):
    """A config field holds a value the code cannot use (the message names the field)."""


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_rank(name: str, x, rank: int, layout: str) -> None:
    """Raise InputError unless `x` has `rank` dimensions (`layout` is shown to the user, e.g. "[B,H,W,C]")."""
    if np.ndim(x) != rank:
        raise InputError(f"{name}: expected rank {rank} {layout}, got shape {tuple(np.shape(x))}")


def check_int(name: str, value, *, minimum: int = 1, odd: bool = False) -> None:
    """Raise InputError unless `value` is a Python/NumPy integer >= `minimum` (and odd, if asked)."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum
            or (odd and value % 2 == 0)):
        wanted = f"an {'odd ' if odd else ''}integer >= {minimum}"
        raise InputError(f"{name}: expected {wanted}, got {value!r}")


def check_integer_map(name: str, x) -> None:
    """Raise InputError unless `x` has an integer dtype (a label or prediction map)."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not np.issubdtype(dtype, np.integer):
        raise InputError(f"{name}: expected an integer label map, got dtype {dtype}")


def check_class_map(name: str, x, num_classes: int, ignore_label: int | None = IGNORE_LABEL) -> None:
    """Raise InputError unless `x` is an integer map whose concrete values lie in [0, num_classes).

    `ignore_label` (void) is also allowed unless it is None (e.g. for predictions). Under jit the values are
    unknown and only the dtype is checked.
    """
    check_integer_map(name, x)
    if not _is_concrete(x):
        return
    values = np.unique(np.asarray(x))
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        void = "" if ignore_label is None else f" and not the void label {ignore_label}"
        raise InputError(f"{name}: values {{{shown}}} are outside [0, {num_classes}){void}")


def check_labels(name: str, labels, num_classes: int, ignore_label: int = IGNORE_LABEL) -> None:
    """Raise InputError if `labels` is not an integer map with values in [0, num_classes) or void."""
    check_class_map(name, labels, num_classes, ignore_label)


def check_logits_labels(logits, labels, ignore_label: int = IGNORE_LABEL, logits_name: str = "logits") -> int:
    """Validate a (logits [B,h,w,C], labels [B,H,W]) pair and return C.

    The logits may be at a lower resolution than the labels (they are resized to the labels); batch sizes
    must match.
    """
    check_rank(logits_name, logits, 4, "[B,H,W,C]")
    check_rank("labels", labels, 3, "[B,H,W]")
    if logits.shape[0] != labels.shape[0]:
        raise InputError(
            f"{logits_name} and labels: batch sizes differ ({logits.shape[0]} vs {labels.shape[0]}); "
            f"shapes {tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = int(logits.shape[-1])
    if num_classes < 2:
        raise InputError(f"{logits_name}: expected at least 2 classes in the last axis, got {num_classes}")
    check_labels("labels", labels, num_classes, ignore_label)
    return num_classes


def check_same_shape(names: Sequence[str], *arrays) -> None:
    """Raise InputError unless all `arrays` have the same shape."""
    shapes = [tuple(np.shape(a)) for a in arrays]
    if any(s != shapes[0] for s in shapes):
        listed = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise InputError(f"shapes must match: {listed}")


def config_value(config, path: str):
    """config["a"]["b"] of the dotted `path` "a.b"."""
    value = config
    for part in path.split("."):
        value = value[part]
    return value


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_fields(section, known: Sequence[str], key: str) -> None:
    """A ConfigError naming the first field of `section` (config key `key`, e.g. "config.train") that no code
    reads, e.g. `config.eval.tta` or a typo: it would be silently ignored."""
    for field in section:
        if field not in known:
            raise ConfigError(f"{key}.{field}: no code reads this field, so it would be silently ignored; valid "
                              f"fields of {key}: {list(known)}")


def check_positive_ints(config, paths: Sequence[str]) -> None:
    """A ConfigError naming the first of the dotted `paths` of `config` that is not an integer >= 1."""
    for path in paths:
        value = config_value(config, path)
        if not is_int(value) or value < 1:
            raise ConfigError(f"config.{path}: expected an integer >= 1, got {value!r}")


def check_pair(config, path: str, minimum: int = 1) -> tuple[int, int]:
    """config's (H, W) at `path`, two integers >= minimum, else a ConfigError naming it."""
    value = config_value(config, path)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value)
            and min(value) >= minimum):
        raise ConfigError(f"config.{path}: expected two integers (H, W) >= {minimum}, got {value!r}")
    return tuple(value)
