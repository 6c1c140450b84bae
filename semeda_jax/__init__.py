"""semeda_jax: semantic segmentation with structure-aware losses in JAX/Flax."""
