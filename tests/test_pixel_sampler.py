"""OHEM as a pixel sampler: ohem_kept_mask passed as `pixel_mask` reproduces ohem_cross_entropy, and a pixel mask
restricts every loss exactly as if the unmasked pixels were void (the label-derived maps of BAL and the surface
loss still see all labels)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references as ref
from semeda_jax.losses.bal import boundary_aware_loss, boundary_weight_map
from semeda_jax.losses.ce import cross_entropy
from semeda_jax.losses.common import pixel_cross_entropy, resize_to_labels
from semeda_jax.losses.dice import dice_loss, generalized_dice_loss, tversky_loss
from semeda_jax.losses.focal import focal_loss
from semeda_jax.losses.lovasz import lovasz_softmax_loss
from semeda_jax.losses.ohem import ohem_cross_entropy, ohem_kept_mask
from semeda_jax.losses.surface import signed_distance_maps, surface_loss


@pytest.mark.parametrize("threshold,min_kept", [(0.6, 0), (0.3, 40), (0.0, 0)])
def test_ohem_cross_entropy_is_cross_entropy_on_the_sampled_pixels(rng, threshold, min_kept):
    logits, labels, _ = ref.loss_case(rng, 5, shape=(2, 9, 11), logits_hw=(5, 6))
    mask = ohem_kept_mask(logits, labels, threshold=threshold, min_kept=min_kept)
    np.testing.assert_allclose(cross_entropy(logits, labels, pixel_mask=mask),
                               ohem_cross_entropy(logits, labels, threshold=threshold, min_kept=min_kept),
                               rtol=1e-15, atol=0)


SAME_AS_VOID = {
    "ce": cross_entropy, "focal": focal_loss, "dice": dice_loss, "tversky": tversky_loss,
    "gdl": generalized_dice_loss, "lovasz": lovasz_softmax_loss,
    "dice_per_image": lambda x, y, **kw: dice_loss(x, y, per_image=True, absent="exclude", **kw),
    "lovasz_per_image": lambda x, y, **kw: lovasz_softmax_loss(x, y, per_image=True, classes="all", **kw),
}


@pytest.mark.parametrize("name", sorted(SAME_AS_VOID))
def test_mask_acts_as_void(rng, name):
    logits, labels, mask = ref.loss_case(rng, 4, shape=(2, 7, 8), logits_hw=(4, 4))
    fn = SAME_AS_VOID[name]
    np.testing.assert_allclose(fn(logits, labels, pixel_mask=mask), fn(logits, np.where(mask, labels, 255)),
                               rtol=1e-12, atol=1e-15)


def test_mask_restricts_the_sums_of_bal_and_the_surface_loss(rng):
    logits, labels, mask = ref.loss_case(rng, 4, shape=(2, 12, 13), logits_hw=(6, 7))
    phi = signed_distance_maps(labels, 4)
    np.testing.assert_allclose(surface_loss(logits, labels, pixel_mask=mask),
                               surface_loss(logits, np.where(mask, labels, 255), phi), rtol=1e-12)
    ce = pixel_cross_entropy(resize_to_labels(jnp.asarray(logits), labels), labels)
    kept = mask & (labels != 255)
    expected = np.sum((boundary_weight_map(labels, 4, size=5, dtype=np.float64) * ce)[kept]) / kept.sum()
    np.testing.assert_allclose(boundary_aware_loss(logits, labels, size=5, pixel_mask=mask), expected, rtol=1e-12)


def test_ohem_sampler_composes_with_dice_under_jit(rng):
    logits, labels, _ = ref.loss_case(rng, 3, shape=(2, 8, 8))

    def ohem_dice(x):
        return dice_loss(x, labels, pixel_mask=ohem_kept_mask(x, labels, min_kept=10))

    mask = np.asarray(ohem_kept_mask(logits, labels, min_kept=10))
    assert 0 < mask.sum() < (labels != 255).sum()
    np.testing.assert_allclose(jax.jit(ohem_dice)(logits), dice_loss(logits, labels, pixel_mask=mask), rtol=1e-12)
    grad = np.asarray(jax.jit(jax.grad(ohem_dice))(logits))
    assert not grad[~mask].any() and grad[mask].any()
