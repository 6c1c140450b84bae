"""The loss zoo as terms of the objective: each term through objective.Objective is its loss function times its
weight with its config section's hyperparameters, bad hyperparameters and class weights fail at check time
naming the key (also from the command line), and config.sampler ("ohem") restricts the terms that take a
pixel mask."""
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from semeda_jax import losses, objective
from semeda_jax.validation import ConfigError

C = 3
ZOO = {  # term -> (loss function, non-default hyperparameters its section sets)
    "dice": (losses.dice_loss, dict(smooth=0.5, per_image=True, absent="exclude", squared=True,
                                    class_weights=(1.0, 2.0, 0.5))),
    "gdl": (losses.generalized_dice_loss, dict(smooth=1e-3, per_image=True, class_weights=(1.0, 0.0, 2.0))),
    "tversky": (losses.tversky_loss, dict(alpha=0.6, beta=0.2, smooth=1.0, absent="include")),
    "focal": (losses.focal_loss, dict(gamma=1.5, alpha=(0.25, 0.5, 1.0), class_weights=(2.0, 1.0, 1.0))),
    "lovasz": (losses.lovasz_softmax_loss, dict(per_image=True, classes="all", class_weights=(1.0, 1.0, 3.0))),
    "surface": (losses.surface_loss, dict(max_distance=3, class_weights=(0.0, 1.0, 1.0))),
    "ce": (losses.cross_entropy, dict(class_weights=(1.0, 2.0, 3.0))),
}


def config_of(loss, **overrides):
    config = common.base_config()
    config.dataset.num_classes = C
    config.loss = loss
    config.update_from_flattened_dict(overrides)
    return config


def case(rng):
    """Logits at half the labels' resolution (the terms resize them), some void pixels."""
    logits = rng.normal(size=(2, 6, 8, C)) * 2.0
    labels = rng.integers(0, C, (2, 12, 16))
    labels[0, :3] = 255
    return {"logits": jnp.asarray(logits)}, jnp.asarray(labels, jnp.int32)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_each_term_is_its_loss_times_its_weight(rng, name):
    fn, hyper = ZOO[name]
    config = config_of(name, **{f"losses.{name}.{k}": v for k, v in hyper.items()},
                       **{f"losses.{name}.weight": 0.7})
    objective.check_config(config)
    outputs, labels = case(rng)
    total, terms = jax.jit(objective.Objective(config))(outputs, labels, {})
    expected = 0.7 * fn(outputs["logits"], labels, **hyper)
    np.testing.assert_allclose(float(terms[name]), float(expected), rtol=1e-12)
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-12)
    assert float(expected) != pytest.approx(0.7 * float(fn(outputs["logits"], labels)))  # the hyperparameters count


def test_the_config_defaults_are_the_functions_defaults():
    """Every zoo section sets its function's keyword defaults (None = a placeholder left unset)."""
    sections = common.base_config().losses
    for name in ("dice", "gdl", "tversky", "focal", "lovasz", "surface"):
        term = objective.TERMS[name]
        assert term.reads == ("logits",) and term.needs == () and term.takes("pixel_mask"), name
        defaults = {k: p.default for k, p in inspect.signature(term.fn).parameters.items()
                    if k in term.hyperparameters()}
        assert {k: v for k, v in sections[name].to_dict().items() if k != "weight"} == defaults, name


@pytest.mark.parametrize("loss, override, message", [
    ("ce+tversky", {"losses.tversky.alpha": -1.0}, "config.losses.tversky.alpha: expected a number >= 0.0, got -1.0"),
    ("lovasz", {"losses.lovasz.classes": "some"},
     "config.losses.lovasz.classes: expected one of ('present', 'all'), got 'some'"),
    ("ce", {"losses.ce.class_weights": (1.0, 2.0)}, "config.losses.ce.class_weights: expected shape (3,), got (2,)"),
    ("ce+focal", {"losses.focal.alpha": (1.0, 2.0, 3.0, 4.0)},
     "config.losses.focal.alpha: expected shape (3,), got (4,)"),
    ("ce+surface", {"losses.surface.max_distance": 0},
     "config.losses.surface.max_distance: expected an integer >= 1, got 0"),
    ("dice", {"losses.dice.absent": "skip"},
     "config.losses.dice.absent: expected one of ('zero', 'exclude', 'include'), got 'skip'"),
    ("ohem+scl", {"sampler.name": "ohem"},
     "config.sampler.name: sampler 'ohem' restricts no term of config.loss 'ohem+scl'; the terms that take its "
     "pixels: ['bal', 'ce', 'dice', 'focal', 'gdl', 'lovasz', 'surface', 'tversky']"),
    ("ce", {"sampler.name": "hard"}, "config.sampler.name: unknown sampler 'hard'; valid: ['', 'ohem']"),
    ("ce", {"sampler.name": "ohem", "sampler.ohem.min_kept": -1},
     "config.sampler.ohem.min_kept: expected an integer >= 0, got -1"),
])
def test_bad_settings_fail_at_check_time_naming_the_key(loss, override, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        objective.check_config(config_of(loss, **override))


def test_a_sampler_section_takes_only_its_functions_arguments():
    config = config_of("ce")
    config.sampler.ohem.thresh = 0.7
    with pytest.raises(ConfigError, match=r"^config.sampler.ohem.thresh: no such hyperparameter of the 'ohem' "
                                          r"sampler; valid: \['threshold', 'min_kept'\]$"):
        objective.check_config(config)


def test_a_phase_whose_mix_the_sampler_would_not_touch_is_refused():
    config = config_of("ce+dice", **{"sampler.name": "ohem"})
    config.phases = ml_collections.ConfigDict(dict(order="a,b", a=dict(steps=2, loss="ce+dice"),
                                                          b=dict(steps=2, loss="ohem+scl")))
    with pytest.raises(ConfigError, match=r"^config.sampler.name: sampler 'ohem' restricts no term of "
                                          r"config.phases.b.loss 'ohem\+scl'"):
        objective.check_config(config)


def parse_flags(*overrides):
    """The config main.py would build from these flags (configs/demo.py:smoke, 8 classes, locked)."""
    demo = Path(__file__).resolve().parent.parent / "configs" / "demo.py"
    argv = ["main", f"--config={demo}:smoke", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_class_weights_and_alpha_are_set_from_the_command_line():
    config = parse_flags("--config.loss=ce+focal", "--config.losses.ce.class_weights=(1,2,1,1,1,1,1,0.5)",
                         "--config.losses.focal.alpha=(0.25,1,1,1,1,1,1,1)", "--config.sampler.name=ohem",
                         "--config.sampler.ohem.min_kept=100")
    objective.check_config(config)
    assert config.losses.ce.class_weights == (1, 2, 1, 1, 1, 1, 1, 0.5)
    assert objective.Objective(config).hyper["focal"]["alpha"] == (0.25, 1, 1, 1, 1, 1, 1, 1)
    assert objective.sampler_of(config) == ("ohem", {"threshold": 0.6, "min_kept": 100})
    config = parse_flags("--config.loss=ce", "--config.losses.ce.class_weights=(1,2,3)")
    with pytest.raises(ConfigError, match=r"^config.losses.ce.class_weights: expected shape \(8,\), got \(3,\)$"):
        objective.check_config(config)


SAMPLER = {"sampler.name": "ohem", "sampler.ohem.threshold": 0.5, "sampler.ohem.min_kept": 40}


def test_ce_with_the_ohem_sampler_is_the_ohem_term(rng):
    outputs, labels = case(rng)
    sampled, _ = objective.Objective(config_of("ce", **SAMPLER))(outputs, labels, {})
    ohem, _ = objective.Objective(config_of("ohem", **{"losses.ohem.threshold": 0.5, "losses.ohem.min_kept": 40}))(
        outputs, labels, {})
    plain, _ = objective.Objective(config_of("ce"))(outputs, labels, {})
    assert float(sampled) == float(ohem) != float(plain)


def test_the_sampler_restricts_the_terms_that_take_a_pixel_mask_only(rng):
    outputs, labels = case(rng)
    config = config_of("dice+sobel", **SAMPLER)
    objective.check_config(config)
    loss_fn = objective.Objective(config)
    total, terms = jax.jit(loss_fn)(outputs, labels, {})
    kept = losses.ohem_kept_mask(outputs["logits"], labels, threshold=0.5, min_kept=40)
    assert 40 <= int(kept.sum()) < int((labels != 255).sum())
    np.testing.assert_allclose(float(terms["dice"]), float(losses.dice_loss(outputs["logits"], labels,
                                                                            pixel_mask=kept)), rtol=1e-12)
    plain = objective.Objective(config_of("dice+sobel"))(outputs, labels, {})[1]
    assert float(terms["dice"]) != pytest.approx(float(plain["dice"]))
    assert float(terms["sobel"]) == float(plain["sobel"])  # sobel takes no pixel mask
    # one term alone (train.logit_grad_norms) computes the same mask; the mask carries no gradient
    assert float(loss_fn.term("dice", outputs, labels, {})) == float(terms["dice"])
    masked_grad = jax.grad(lambda x: loss_fn.term("dice", {"logits": x}, labels, {}))(outputs["logits"])
    fixed_grad = jax.grad(lambda x: losses.dice_loss(x, labels, pixel_mask=kept))(outputs["logits"])
    np.testing.assert_allclose(masked_grad, fixed_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_mixed_precision_gives_the_semeda_term_bfloat16_maps(rng, mixed_precision):
    """Under config.mixed_precision the objective passes compute_dtype=bfloat16 to the terms that take one
    (semeda), not to the others; the dtype is the step's, not a hyperparameter of the term's section."""
    config = config_of("ce+semeda", mixed_precision=mixed_precision)
    edge_net = losses.init_edge_net(jax.random.PRNGKey(0), C)
    logits = jnp.asarray(rng.normal(size=(2, 4, 5, C)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, C, size=(2, 8, 10)))
    total, values = objective.Objective(config)({"logits": logits}, labels, {"edge_net": edge_net})
    section = {k: v for k, v in config.losses.semeda.to_dict().items() if k != "weight"}
    dtype = jnp.bfloat16 if mixed_precision else None
    want = config.losses.semeda.weight * losses.semeda_loss(logits, labels, edge_net, **section, compute_dtype=dtype)
    assert float(values["semeda"]) == pytest.approx(float(want), rel=1e-6)
    assert float(values["ce"]) == pytest.approx(config.losses.ce.weight * float(losses.cross_entropy(logits, labels)))
    assert not objective.TERMS["ce"].takes("compute_dtype") and "compute_dtype" not in objective.TERMS[
        "semeda"].hyperparameters()
    config.losses.semeda.compute_dtype = "bfloat16"
    with pytest.raises(ConfigError, match="^config.losses.semeda.compute_dtype: no such hyperparameter"):
        objective.check_config(config)
