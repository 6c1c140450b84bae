"""Soft Dice, Tversky and generalised Dice against float64 NumPy references (per-class loops over the counted
pixels); void, absent classes, class weights, pixel masks, low-resolution logits, gradients, input errors."""
import jax
import numpy as np
import pytest

import references as ref
from semeda_jax.losses.dice import dice_loss, generalized_dice_loss, tversky_loss
from semeda_jax.validation import InputError

WEIGHTS = (0.5, 2.0, 1.0, 0.0)


def ref_loss(name, logits, labels, **kw):
    if name == "dice":
        return ref.tversky_family(logits, labels, "dice", **kw)
    if name == "tversky":
        return ref.tversky_family(logits, labels, "tversky", **kw)
    return ref.generalized_dice(logits, labels, **kw)


LOSSES = {"dice": dice_loss, "tversky": tversky_loss, "gdl": generalized_dice_loss}
CASES = [
    ("dice", {}), ("dice", {"absent": "exclude"}), ("dice", {"absent": "include", "smooth": 1.0}),
    ("dice", {"per_image": True, "smooth": 0.5}), ("dice", {"squared": True, "per_image": True, "absent": "exclude"}),
    ("tversky", {}), ("tversky", {"alpha": 0.7, "beta": 0.2, "smooth": 1.0, "absent": "include"}),
    ("tversky", {"per_image": True, "absent": "exclude"}),
    ("gdl", {}), ("gdl", {"per_image": True, "smooth": 1e-3}),
]


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("weighted,masked", [(False, False), (True, True)])
def test_matches_reference_with_void_and_absent_class(rng, name, kw, weighted, masked):
    logits, labels, mask = ref.loss_case(rng, 4, shape=(3, 7, 8), logits_hw=(4, 5), absent=(2,))
    labels[1] = np.where(labels[1] == 3, 1, labels[1])  # class 3 absent from image 1 only
    kw = dict(kw, class_weights=WEIGHTS if weighted else None, pixel_mask=mask if masked else None)
    np.testing.assert_allclose(LOSSES[name](logits, labels, **kw), ref_loss(name, logits, labels, **kw),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kw", [("dice", {"absent": "include", "smooth": 1.0}),
                                     ("tversky", {"per_image": True}), ("gdl", {"per_image": True})])
def test_gradient_matches_reference_finite_differences(rng, name, kw):
    logits, labels, mask = ref.loss_case(rng, 3, shape=(2, 5, 6), logits_hw=(3, 3), absent=(1,))
    kw = dict(kw, class_weights=(1.0, 0.5, 2.0), pixel_mask=mask)
    grad = jax.grad(lambda x: LOSSES[name](x, labels, **kw))(logits)
    expected = ref.numeric_grad(lambda x: ref_loss(name, x, labels, **kw), logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


def test_absent_class_modes(rng):
    """'zero' (smp) = 'exclude' x (present classes / all classes); only 'include' (with smoothing) penalises
    probability mass on the absent class."""
    logits, labels, _ = ref.loss_case(rng, 4, absent=(3,), void_fraction=0.0)
    zero, exclude = dice_loss(logits, labels), dice_loss(logits, labels, absent="exclude")
    np.testing.assert_allclose(zero, exclude * 3 / 4, rtol=1e-12)
    grad = lambda absent: jax.grad(lambda x: dice_loss(x, labels, absent=absent, smooth=1.0))(logits)  # noqa: E731
    for absent in ("zero", "exclude"):  # mass on class 3 only reaches the loss through the other classes
        np.testing.assert_allclose(grad(absent).sum(-1), 0.0, atol=1e-12)
    pushed = logits.copy()
    pushed[..., 3] += 3.0
    include = lambda x: float(dice_loss(x, labels, absent="include", smooth=1.0))  # noqa: E731
    assert include(pushed) > include(logits)


def test_tversky_half_half_is_dice_and_perfect_prediction_is_zero(rng):
    logits, labels, _ = ref.loss_case(rng, 3)
    np.testing.assert_allclose(tversky_loss(logits, labels, alpha=0.5, beta=0.5), dice_loss(logits, labels),
                               rtol=1e-12)
    perfect = 50.0 * np.eye(3)[np.where(labels == 255, 0, labels)]
    for fn in LOSSES.values():
        assert abs(float(fn(perfect, labels, absent="exclude") if fn is not generalized_dice_loss
                         else fn(perfect, labels))) < 1e-12


def test_void_and_unmasked_pixels_get_no_gradient_and_empty_batches_give_zero(rng):
    logits, labels, mask = ref.loss_case(rng, 3)
    for fn in LOSSES.values():
        grad = np.asarray(jax.grad(lambda x: fn(x, labels, pixel_mask=mask))(logits))
        assert not grad[(labels == 255) | ~mask].any() and grad[(labels != 255) & mask].any()
        void = np.full_like(labels, 255)
        assert float(fn(logits, void)) == 0.0 and not np.asarray(jax.grad(lambda x: fn(x, void))(logits)).any()
        np.testing.assert_allclose(jax.jit(lambda x: fn(x, labels))(logits), fn(logits, labels), rtol=1e-12)


@pytest.mark.parametrize("kw,message", [
    ({"absent": "skip"}, r"absent: expected one of \('zero', 'exclude', 'include'\), got 'skip'"),
    ({"smooth": -1.0}, "smooth: expected a number >= 0.0, got -1.0"),
    ({"eps": 0.0}, "eps: expected a number > 0.0, got 0.0"),
    ({"per_image": 1}, r"per_image: expected one of \(False, True\), got 1"),
    ({"class_weights": (1.0, 2.0)}, r"class_weights: expected shape \(3,\), got \(2,\)"),
    ({"class_weights": (1.0, -2.0, 1.0)}, r"class_weights: expected finite weights >= 0"),
    ({"pixel_mask": np.ones((1, 4, 4), np.int32)}, r"pixel_mask: expected a bool array of the labels' shape"),
    ({"pixel_mask": np.ones((1, 4, 5), bool)}, r"pixel_mask: expected a bool array of the labels' shape \(1, 4, 4\)"),
])
def test_bad_input_is_named(kw, message):
    with pytest.raises(InputError, match=message):
        dice_loss(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4), np.int32), **kw)


def test_bad_tversky_weights_and_labels():
    with pytest.raises(InputError, match="alpha: expected a number >= 0.0, got -0.1"):
        tversky_loss(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2), np.int32), alpha=-0.1)
    with pytest.raises(InputError, match=r"labels: values \{3\}"):
        generalized_dice_loss(np.zeros((1, 2, 2, 3)), np.full((1, 2, 2), 3, np.int32))
