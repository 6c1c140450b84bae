"""The training objective: a loss mix ("ce+semeda", "bal", "ohem+scl", ...) as one pure function of the model's
named outputs, from the registry of loss terms.

A term (`TERMS[name]`) is a pure function `fn(*outputs it reads, labels, *frozen nets it needs, **hyper)`
-> scalar, the names of the model outputs it reads ("logits", "pair_logits", ...; models/builder.py) and of
the frozen networks it needs from the step's `frozen` pytree ("edge_net": g_phi). Its config section
`config.losses.<name>` holds its `weight` in the mix and its keyword hyperparameters. Adding a loss: its
function in semeda_jax/losses/, one `Term` in TERMS here, its section in configs/common.py; a term reading an
output other than a [B,h,w,C] map also gives that output's shape in OUTPUTS, one needing a new frozen network
its init in FROZEN_NETS (both only to trace the term when a config is checked, check_config).

`config.loss` (or a phase's `loss`) joins term names with '+'. The objective maps (outputs {name: array},
labels [B,H,W], frozen {net: params}) to (total scalar, {term name: weighted value}) so the step can log every
term. The paper settings: PPCE "ce"; SEMEDA "ce+semeda" (Eq. 6); Sobel baseline "ce+sobel"; BAL "bal" (a
weighted CE, so it replaces "ce"); RelationNet "ohem+scl" (SCL reads "pair_logits"); the guidance models'
optional "ce+multilabel" (reads "class_logits"). The loss zoo: "dice", "gdl", "tversky", "focal", "lovasz",
"surface" (losses/dice.py, focal.py, lovasz.py, surface.py), e.g. "ce+dice".

A pixel sampler (`config.sampler.name`, one of SAMPLERS; "" = none) picks the pixels that count: the objective
computes its mask once per step from the stop-gradient logits, with the hyperparameters of
`config.sampler.<name>`, and passes it as `pixel_mask` to every term whose function takes one (`Term.takes`:
ce, bal and the zoo; semeda, sobel, ohem, scl and multilabel ignore it). "ohem" is mmseg's OHEMPixelSampler
design (losses.ohem_kept_mask): "ce" with it equals the "ohem" term.

Under `config.mixed_precision` a term whose function takes a `compute_dtype` (semeda: its full-resolution maps
and g_phi passes) gets bfloat16; the others compute as they are written (the logits are float32).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from semeda_jax import losses, phases
from semeda_jax.validation import ConfigError, InputError, is_number


def keyword_only(fn: Callable) -> tuple[str, ...]:
    """The keyword-only arguments of fn."""
    return tuple(name for name, p in inspect.signature(fn).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


# Keyword-only arguments of a term's function that the objective passes, not its config section: the sampler's
# pixels, and under config.mixed_precision the compute dtype bfloat16 (to the terms that take one).
STEP_ARGUMENTS = ("pixel_mask", "compute_dtype")


@dataclasses.dataclass(frozen=True)
class Term:
    """One loss term: fn(*outputs[reads], labels, *frozen[needs], **config.losses.<name> minus weight)."""
    fn: Callable
    reads: tuple[str, ...] = ("logits",)
    needs: tuple[str, ...] = ()

    def hyperparameters(self) -> tuple[str, ...]:
        """The keyword-only arguments of fn but those the objective passes (STEP_ARGUMENTS): the fields its
        config section may set besides `weight`."""
        return tuple(name for name in keyword_only(self.fn) if name not in STEP_ARGUMENTS)

    def takes(self, argument: str) -> bool:
        """True when fn takes the keyword-only `argument` of STEP_ARGUMENTS (e.g. "pixel_mask": the sampler's
        pixels; "compute_dtype": of its full-resolution maps, bfloat16 under mixed precision)."""
        return argument in keyword_only(self.fn)


TERMS = {
    "ce": Term(losses.cross_entropy),
    "semeda": Term(losses.semeda_loss, needs=("edge_net",)),
    "sobel": Term(losses.sobel_loss),
    "bal": Term(losses.boundary_aware_loss),
    "ohem": Term(losses.ohem_cross_entropy),
    "scl": Term(losses.spatial_correlation_loss_from_labels, reads=("pair_logits",)),  # labels -> pairs' size
    "multilabel": Term(losses.multilabel_loss, reads=("class_logits",)),
    "dice": Term(losses.dice_loss),
    "gdl": Term(losses.generalized_dice_loss),
    "tversky": Term(losses.tversky_loss),
    "focal": Term(losses.focal_loss),
    "lovasz": Term(losses.lovasz_softmax_loss),
    "surface": Term(losses.surface_loss),  # distance maps computed on device (max_distance truncates them)
}
# Pixel samplers, name -> fn(logits, labels, **config.sampler.<name>) -> bool [B,H,W], the pixels that count.
SAMPLERS = {"ohem": losses.ohem_kept_mask}

PROBE_SIZE = 16  # side of the abstract batch the terms are traced on (check_config)
# The abstract model outputs the terms are traced on, name -> shape fn(num_classes); an output not listed is a
# [1, PROBE_SIZE, PROBE_SIZE, num_classes] map.
OUTPUTS = {
    "logits": lambda num_classes: (1, PROBE_SIZE, PROBE_SIZE, num_classes),
    "pair_logits": lambda num_classes: (1, PROBE_SIZE, PROBE_SIZE, 9),  # 3x3 neighbours (losses/scl.py)
    "class_logits": lambda num_classes: (1, num_classes),  # image-level [B,C]
}
# The frozen networks a term may need, name -> init(key, num_classes) -> params (the terms are traced on them).
FROZEN_NETS = {"edge_net": losses.init_edge_net}


def parse_mix(mix: str, key: str = "config.loss") -> list[str]:
    """'ce+semeda' -> ['ce', 'semeda'], checked against TERMS (a ConfigError names `key` and the bad or
    repeated term)."""
    names = [name.strip() for name in str(mix).split("+") if name.strip()]
    if not names:
        raise ConfigError(f"{key}: expected term names joined by '+', e.g. 'ce+semeda', got {mix!r}")
    for index, name in enumerate(names):
        if name not in TERMS:
            raise ConfigError(f"{key}: unknown term {name!r}; valid terms: {sorted(TERMS)}")
        if name in names[:index]:
            raise ConfigError(f"{key}: term {name!r} appears twice in {mix!r}; set its weight in "
                              f"config.losses.{name}.weight instead")
    return names


def all_mixes(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{config key: mix} of config.loss and of every training phase's loss (phases.py)."""
    mixes = {"config.loss": config.loss}
    for name in phases.phase_names(config):
        if name in config.phases and config.phases[name].get("loss"):
            mixes[f"config.phases.{name}.loss"] = config.phases[name].loss
    return mixes


def frozen_nets(config: ml_collections.ConfigDict) -> set[str]:
    """The frozen networks any mix of the config needs (e.g. {"edge_net"} when a SEMEDA term is in one)."""
    return {net for key, mix in all_mixes(config).items() for name in parse_mix(mix, key)
            for net in TERMS[name].needs}


def needs_edge_net(config: ml_collections.ConfigDict) -> bool:
    """True when some mix uses g_phi (the SEMEDA term), i.e. the edge net must be pre-trained first."""
    return "edge_net" in frozen_nets(config)


def sampler_of(config: ml_collections.ConfigDict) -> tuple[str, dict]:
    """(config.sampler.name, the hyperparameters of its section); ("", {}) without a sampler."""
    section = config.get("sampler")
    name = section.name if section else ""
    return name, (section[name].to_dict() if name else {})


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.loss, the phases' losses, config.losses and config.sampler (stages.check_config): a one-line
    ConfigError naming the key of a bad mix, section, weight, hyperparameter or sampler."""
    check_sections(config)
    check_sampler(config)
    check_values(config)


def check_sections(config: ml_collections.ConfigDict) -> None:
    """Every mix names registered terms; every config.losses section belongs to a term, has a weight and sets
    only its term's hyperparameters (a ConfigError names the key)."""
    for key, mix in all_mixes(config).items():
        for name in parse_mix(mix, key):
            if name not in config.losses:
                raise ConfigError(f"config.losses.{name}: missing (the {name!r} term of {key} needs its section, "
                                  f"at least its weight)")
    for name, section in config.losses.items():
        if name not in TERMS:
            raise ConfigError(f"config.losses.{name}: no such loss term; valid terms: {sorted(TERMS)}")
        if "weight" not in section:
            raise ConfigError(f"config.losses.{name}.weight: missing (the term's weight in the mix)")
        valid = TERMS[name].hyperparameters()
        for field in section:
            if field != "weight" and field not in valid:
                raise ConfigError(f"config.losses.{name}.{field}: no such hyperparameter of the {name!r} term; "
                                  f"valid: {['weight', *valid]}")


def check_sampler(config: ml_collections.ConfigDict) -> None:
    """config.sampler: `name` "" or a SAMPLERS name, one section per sampler setting only its keyword-only
    arguments; a named sampler is traced on abstract logits and labels, and every mix must have a term that
    takes its pixel mask (a ConfigError names the key)."""
    section = config.get("sampler") or {}
    for field in section:
        if field == "name":
            continue
        if field not in SAMPLERS:
            raise ConfigError(f"config.sampler.{field}: no such sampler; valid: {['name', *sorted(SAMPLERS)]}")
        valid = keyword_only(SAMPLERS[field])
        for option in section[field]:
            if option not in valid:
                raise ConfigError(f"config.sampler.{field}.{option}: no such hyperparameter of the {field!r} "
                                  f"sampler; valid: {list(valid)}")
    name = section.get("name", "")
    if not name:
        return
    if name not in SAMPLERS:
        raise ConfigError(f"config.sampler.name: unknown sampler {name!r}; valid: {['', *sorted(SAMPLERS)]}")
    if name not in section:
        raise ConfigError(f"config.sampler.{name}: missing (the section of the sampler config.sampler.name names)")
    for key, mix in all_mixes(config).items():
        if not any(TERMS[term].takes("pixel_mask") for term in parse_mix(mix, key)):
            takers = sorted(t for t in TERMS if TERMS[t].takes("pixel_mask"))
            raise ConfigError(f"config.sampler.name: sampler {name!r} restricts no term of {key} {mix!r}; the "
                              f"terms that take its pixels: {takers}")
    _, hyper = sampler_of(config)
    logits = jax.ShapeDtypeStruct(OUTPUTS["logits"](config.dataset.num_classes), jnp.float32)
    labels = jax.ShapeDtypeStruct((1, PROBE_SIZE, PROBE_SIZE), jnp.int32)
    _trace(f"config.sampler.{name}", hyper, lambda x, y: SAMPLERS[name](x, y, **hyper), logits, labels)


def check_values(config: ml_collections.ConfigDict) -> None:
    """Every term of every mix: a finite weight, and hyperparameters its loss function accepts, found by tracing
    the term once on abstract outputs (OUTPUTS) and frozen nets (FROZEN_NETS) with `jax.eval_shape` (the
    static checks of the loss functions run, nothing is computed; with a sampler, a term that takes a pixel mask
    gets one), so a bad `losses.semeda.reduction` fails before g_phi's pre-training."""
    num_classes = config.dataset.num_classes
    names = {name for key, mix in all_mixes(config).items() for name in parse_mix(mix, key)}
    sampled = bool(sampler_of(config)[0])
    for name in sorted(names):
        term, section = TERMS[name], config.losses[name]
        if not is_number(section.weight):
            raise ConfigError(f"config.losses.{name}.weight: expected a finite number, got {section.weight!r}")
        hyper = {k: v for k, v in section.to_dict().items() if k != "weight"}
        lambdas = hyper.get("lambdas")
        if lambdas is not None and not (isinstance(lambdas, (tuple, list)) and len(lambdas) == 3
                                        and all(is_number(v) and v >= 0 for v in lambdas)):
            raise ConfigError(f"config.losses.{name}.lambdas: expected three finite weights >= 0 (one per "
                              f"edge-net layer), got {lambdas!r}")
        nets = [FROZEN_NETS[net](jax.random.PRNGKey(0), num_classes) for net in term.needs]
        outputs = [jax.ShapeDtypeStruct(OUTPUTS.get(out, OUTPUTS["logits"])(num_classes), jnp.float32)
                   for out in term.reads]
        labels = jax.ShapeDtypeStruct((1, PROBE_SIZE, PROBE_SIZE), jnp.int32)
        mask = {"pixel_mask": jnp.ones(labels.shape, bool)} if sampled and term.takes("pixel_mask") else {}
        _trace(f"config.losses.{name}", hyper,
               lambda *inputs: term.fn(*inputs[:-1], inputs[-1], *nets, **hyper, **mask), *outputs, labels)


def _trace(key: str, hyper: dict, fn: Callable, *inputs) -> None:
    """jax.eval_shape(fn, *inputs), fn a loss or sampler with the hyperparameters `hyper` of config section
    `key`: its error becomes a one-line ConfigError naming `key`.<field> when it names a field of `hyper`."""
    try:
        jax.eval_shape(fn, *inputs)
    except (InputError, TypeError, ValueError) as error:
        message = str(error).splitlines()[0]
        field = message.split(":", 1)[0]
        raise ConfigError(f"{key}.{message}" if field in hyper else f"{key}: {message}") from None


def check_outputs(config: ml_collections.ConfigDict, outputs, mix: str | None = None, key: str = "config.loss"):
    """A ConfigError when a term of `mix` (default config.loss) reads an output the model does not produce."""
    for name in parse_mix(config.loss if mix is None else mix, key):
        missing = [out for out in TERMS[name].reads if out not in outputs]
        if missing:
            raise ConfigError(f"{key}: term {name!r} reads the model output {missing[0]!r}, which model "
                              f"{config.model.name!r} does not produce (its outputs: {sorted(outputs)})")


class Objective:
    """The weighted sum of a mix's terms: objective(outputs, labels, frozen) -> (total, {name: weighted term}).

    Pure and jit-able; `term(name, outputs, labels, frozen)` is one weighted term (for per-term gradients).
    With a sampler (config.sampler.name), `pixel_mask(outputs, labels)` is its mask, computed once per call (per
    micro-batch with grad_accum_steps) and passed to the terms that take a `pixel_mask`.
    """

    def __init__(self, config: ml_collections.ConfigDict, mix: str | None = None, key: str = "config.loss"):
        self.config, self.key = config, key
        self.names = parse_mix(config.loss if mix is None else mix, key)
        self.weights = {name: float(config.losses[name].weight) for name in self.names}
        self.hyper = {name: {k: v for k, v in config.losses[name].to_dict().items() if k != "weight"}
                      for name in self.names}
        self.sampler, self.sampler_hyper = sampler_of(config)
        self.compute_dtype = jnp.bfloat16 if config.get("mixed_precision") else None

    def reads(self, name: str) -> tuple[str, ...]:
        return TERMS[name].reads

    def pixel_mask(self, outputs: dict, labels: jax.Array) -> jax.Array | None:
        """The sampler's pixels, bool [B,H,W], from the stop-gradient logits; None without a sampler."""
        if not self.sampler:
            return None
        return SAMPLERS[self.sampler](jax.lax.stop_gradient(outputs["logits"]), labels, **self.sampler_hyper)

    def term(self, name: str, outputs: dict, labels: jax.Array, frozen,
             pixel_mask: jax.Array | None = None) -> jax.Array:
        """One weighted term; with a sampler, a term that takes a pixel mask gets `pixel_mask` (None: the
        sampler's, computed here)."""
        term = TERMS[name]
        missing = [out for out in term.reads if out not in outputs]
        if missing:  # at trace time: a model without that head
            check_outputs(self.config, outputs, "+".join(self.names), self.key)
        nets = [(frozen or {})[net] for net in term.needs]
        hyper = self.hyper[name]
        if self.sampler and term.takes("pixel_mask"):
            hyper = {**hyper, "pixel_mask": self.pixel_mask(outputs, labels) if pixel_mask is None else pixel_mask}
        if self.compute_dtype is not None and term.takes("compute_dtype"):
            hyper = {**hyper, "compute_dtype": self.compute_dtype}
        return self.weights[name] * term.fn(*(outputs[out] for out in term.reads), labels, *nets, **hyper)

    def __call__(self, outputs: dict, labels: jax.Array, frozen) -> tuple[jax.Array, dict]:
        pixel_mask = self.pixel_mask(outputs, labels)  # once per step, shared by the terms
        values = {name: self.term(name, outputs, labels, frozen, pixel_mask) for name in self.names}
        return sum(values.values()), values
