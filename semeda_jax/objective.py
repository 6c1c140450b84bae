"""The training objective: a config's loss mix ("ce+semeda", "bal", "ohem", ...) as one pure function.

`config.loss` joins names of `semeda_jax.losses.LOSSES` with '+'; each term is multiplied by
`config.loss_weights.<name>` and takes its hyperparameters from `config.<name>`. The result maps
(logits [B,h,w,C], labels [B,H,W], edge_net_params) to (total scalar, {term name: scalar}) so the step can log
every term. The paper settings: PPCE "ce"; SEMEDA "ce+semeda" (Eq. 6); Sobel baseline "ce+sobel"; BAL "bal"
(a weighted CE, so it replaces "ce"); RelationNet "ohem" (+ "scl" once the relation model exists).
"""
from __future__ import annotations

from typing import Callable

import ml_collections

from semeda_jax import losses
from semeda_jax.validation import ConfigError

LossFn = Callable[..., tuple]
_NEEDS_PAIR_LOGITS = ("scl",)


def loss_terms(config: ml_collections.ConfigDict) -> list[str]:
    """The term names of `config.loss`, checked against the registry (ValueError names a bad one)."""
    names = [name.strip() for name in str(config.loss).split("+") if name.strip()]
    if not names:
        raise ConfigError(f"config.loss: expected names joined by '+', e.g. 'ce+semeda', got {config.loss!r}")
    for name in names:
        if name not in losses.LOSSES:
            raise ConfigError(f"config.loss: unknown term {name!r}; valid terms: {sorted(losses.LOSSES)}")
        if name in _NEEDS_PAIR_LOGITS:
            raise ConfigError(f"config.loss: term {name!r} needs the relation model's pair logits, which the "
                             f"segmentation models here do not produce yet")
    return names


def needs_edge_net(config: ml_collections.ConfigDict) -> bool:
    """True when the loss mix uses g_phi (the SEMEDA term), i.e. the edge net must be pre-trained first."""
    return "semeda" in loss_terms(config)


def _term_fn(name: str, config: ml_collections.ConfigDict) -> Callable:
    if name == "ce":
        return lambda logits, labels, edge: losses.cross_entropy(logits, labels)
    if name == "semeda":
        return lambda logits, labels, edge: losses.semeda_loss(
            logits, labels, edge, lambdas=tuple(config.semeda.lambdas), reduction=config.semeda.reduction)
    if name == "sobel":
        return lambda logits, labels, edge: losses.sobel_loss(
            logits, labels, coefficient=config.sobel.coefficient, reduction=config.sobel.reduction)
    if name == "bal":
        return lambda logits, labels, edge: losses.boundary_aware_loss(logits, labels, **config.bal.to_dict())
    if name == "ohem":
        return lambda logits, labels, edge: losses.ohem_cross_entropy(logits, labels, **config.ohem.to_dict())
    raise ConfigError(f"config.loss: no training term for {name!r}")


def build_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
    """-> f(logits, labels, edge_net_params) -> (total, {name: weighted term}); pure and jit-able."""
    terms = {name: (_term_fn(name, config), float(config.loss_weights.get(name, 1.0)))
             for name in loss_terms(config)}

    def loss_fn(logits, labels, edge_net_params):
        values = {name: weight * fn(logits, labels, edge_net_params) for name, (fn, weight) in terms.items()}
        return sum(values.values()), values

    return loss_fn
