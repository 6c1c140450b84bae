"""A randomly initialised model saved as a training run's checkpoint, for tests that read checkpoints back."""
import os

import jax
import jax.numpy as jnp

from semeda_jax import train
from semeda_jax.checkpointing import Checkpoints, model_fingerprint


def save_fresh_checkpoint(config, workdir, seed=3, fingerprint=True) -> dict:
    """config's model initialised with PRNGKey(seed) as WORKDIR/checkpoints/latest/0 (its model fingerprint
    recorded unless `fingerprint` is False) -> its {"params", "batch_stats"}."""
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *config.data.crop_size, 3)), train=False)
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), writer=True, log=lambda line: None,
                              fingerprint=model_fingerprint(config) if fingerprint else None)
    checkpoints.save(0, variables, {"step": 0})
    checkpoints.close()
    return variables
