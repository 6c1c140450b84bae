"""Test-wide settings: float64 JAX so that comparisons with the NumPy float64 references are tight."""
import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test (tests stay independent of their order)."""
    return np.random.default_rng(0)
