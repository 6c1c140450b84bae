"""Training phases: `config.phases` runs one training as a sequence of phases (RelationNet's fine -> coarse ->
fine), each with its own data, loss mix, length, learning-rate schedule and eval cadence.

    config.phases.order = "fine,coarse"                      # phase names, in order ("" = no phases)
    config.phases.fine = ConfigDict(dict(split="train", loss="ohem+scl", epochs=60, schedule="poly"))
    --config.phases.fine.epochs=10                           # every field overrides from the command line

Phase fields (all optional but the length): split (default config.dataset.train_split), annotation (default
the dataset's; Cityscapes: gtFine / gtCoarse), loss (default config.loss), steps or epochs (exactly one;
epochs = ceil(epochs * training images / batch) steps), schedule ("poly" with config.optimizer.poly_power,
"constant", "linear" from learning_rate to end_learning_rate), learning_rate (default
config.optimizer.learning_rate), end_learning_rate (default 0), eval_every (default config.train.eval_every).

The step count runs on across phases (phase k covers global steps start_k + 1 .. start_k + steps_k; with
phases the run length is their sum and config.train.steps is not read); one optimiser state carries through
(momentum included), its learning rate from the phases' schedules joined at the boundaries. A phase's data
stream starts at its own batch 0 with seed config.seed + phase index, and a resumed run re-enters its phase at
batch (step - start), so a run killed inside any phase resumes there bit for bit. Without phases, the whole run
is one phase "train" from the top-level fields, exactly as before.
"""
from __future__ import annotations

import dataclasses
import math

import ml_collections
import optax

from semeda_jax.optim import learning_rate_schedule
from semeda_jax.validation import ConfigError

SCHEDULES = ("poly", "constant", "linear")
FIELDS = ("split", "annotation", "loss", "steps", "epochs", "schedule", "learning_rate", "end_learning_rate",
          "eval_every")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of the plan: global steps start + 1 .. start + steps."""
    name: str
    index: int
    start: int
    steps: int
    split: str
    annotation: str
    loss: str
    eval_every: int
    schedule: optax.Schedule  # of the step inside the phase (0 .. steps - 1)

    @property
    def end(self) -> int:
        return self.start + self.steps


def phase_names(config: ml_collections.ConfigDict) -> list[str]:
    """The phase names of config.phases.order ([] = no phases)."""
    phases = config.get("phases")
    if phases is None:
        return []
    return [name.strip() for name in str(phases.get("order", "")).split(",") if name.strip()]


def check_phases(config: ml_collections.ConfigDict) -> None:
    """A ConfigError naming the key of a phase that is missing, has an unknown field, no (or two) lengths, an
    unknown schedule, or a section no phase order lists (its loss mix: objective.check_config)."""
    names = phase_names(config)
    if config.get("phases") is None:
        return
    for name in config.phases:
        if name != "order" and name not in names:
            raise ConfigError(f"config.phases.{name}: not in config.phases.order {config.phases.order!r}")
    for name in names:
        key = f"config.phases.{name}"
        if name not in config.phases:
            raise ConfigError(f"config.phases.order: phase {name!r} has no section {key}")
        section = config.phases[name]
        for field in section:
            if field not in FIELDS:
                raise ConfigError(f"{key}.{field}: no such phase field; valid: {list(FIELDS)}")
        lengths = [f for f in ("steps", "epochs") if section.get(f)]
        if len(lengths) != 1 or section[lengths[0]] <= 0:
            raise ConfigError(f"{key}: give exactly one of steps or epochs, > 0")
        if section.get("schedule", "poly") not in SCHEDULES:
            raise ConfigError(f"{key}.schedule: unknown {section.schedule!r}; valid: {list(SCHEDULES)}")


def _phase_schedule(config: ml_collections.ConfigDict, section, steps: int, first: bool) -> optax.Schedule:
    """A phase's schedule of its own step; poly warms up (config.optimizer.warmup_steps) in the first phase only."""
    kind = section.get("schedule", "poly")
    base = float(section.get("learning_rate") or config.optimizer.learning_rate)
    if kind == "constant":
        return optax.constant_schedule(base)
    if kind == "linear":
        return optax.linear_schedule(base, float(section.get("end_learning_rate") or 0.0), max(steps, 1))
    return learning_rate_schedule(config.optimizer, steps, base=base, warmup=None if first else 0)


def plan(config: ml_collections.ConfigDict, train_sizes: dict[str, int] | None = None) -> list[Phase]:
    """The phases of `config` with their global step ranges; `train_sizes` {phase name: training images} turns
    epochs into steps. Without config.phases: one phase "train" of config.train.steps."""
    names = phase_names(config)
    if not names:
        steps = int(config.train.steps)
        return [Phase("train", 0, 0, steps, config.dataset.train_split, "", config.loss,
                      int(config.train.eval_every), learning_rate_schedule(config.optimizer, steps))]
    check_phases(config)
    phases, start = [], 0
    for index, name in enumerate(names):
        section = config.phases[name]
        if section.get("steps"):
            steps = int(section.steps)
        else:
            if not train_sizes or name not in train_sizes:
                raise ConfigError(f"config.phases.{name}.epochs: the training set size is needed to count steps")
            steps = math.ceil(float(section.epochs) * train_sizes[name] / config.data.batch_size)
        phases.append(Phase(name, index, start, steps, section.get("split") or config.dataset.train_split,
                            section.get("annotation") or "", section.get("loss") or config.loss,
                            int(section.get("eval_every") or config.train.eval_every),
                            _phase_schedule(config, section, steps, first=index == 0)))
        start += steps
    return phases


def joined_schedule(phases: list[Phase]) -> optax.Schedule:
    """The learning rate of a global step: each phase's schedule of (step - its start)."""
    if len(phases) == 1:
        return phases[0].schedule
    return optax.join_schedules([p.schedule for p in phases], [p.start for p in phases[1:]])


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that runs global step `step` (1-based; step 0 = the first phase)."""
    for phase in phases:
        if step <= phase.end:
            return phase
    return phases[-1]


def phase_data(config: ml_collections.ConfigDict) -> dict[str, tuple[ml_collections.ConfigDict, str]]:
    """{phase name: (config.dataset with the phase's annotation, its split)} of the phases that read other data
    than config.dataset's training split."""
    data = {}
    for name in phase_names(config):
        section = config.phases[name]
        split, annotation = section.get("split") or config.dataset.train_split, section.get("annotation") or ""
        if split == config.dataset.train_split and not annotation:
            continue
        dataset = config.dataset.copy_and_resolve_references()
        if annotation:
            with dataset.unlocked():
                dataset.annotation = annotation
        data[name] = (dataset, split)
    return data
