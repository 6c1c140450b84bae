"""Entry point: run the stages of an experiment config in a workdir.

    python -m semeda_jax.main --config=configs/demo.py --workdir=/tmp/semeda_demo
    python -m semeda_jax.main --config=configs/demo.py --workdir=/tmp/semeda_demo --stages=eval
    python -m semeda_jax.main --config=configs/demo.py --workdir=/tmp/semeda_demo --images=FOLDER   # predict

`--config.a.b=value` overrides any config field; an unknown field is an error. Without --stages the config's own
list runs (config.stages, e.g. edge_pretrain,train,eval); --images alone runs predict. User errors (a missing
dataset file, a bad label, a bad config value) end with one line naming the file or key, and exit status 2.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and reports (created if needed).")
flags.DEFINE_list("stages", None, "Stages to run (edge_pretrain, train, eval, predict); default: config.stages.")
flags.DEFINE_string("images", None, "Folder of images for the predict stage.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, stages, images: str | None) -> None:
    """Run `stages` in order (importing the JAX side only now, so flag errors come back fast)."""
    from semeda_jax import predict, stages as stage_lib
    from semeda_jax.validation import ConfigError

    os.makedirs(workdir, exist_ok=True)
    for stage in stages:
        if stage == "predict":
            if not images:
                raise ConfigError("--images: the predict stage needs a folder of images")
            state = stage_lib.restore_for_inference(config, workdir)
            predict.predict_folder(state, images, os.path.join(workdir, "predictions"), mean=config.data.mean,
                                   std=config.data.std)
        elif stage in stage_lib.STAGES:
            stage_lib.STAGES[stage](config, workdir)
        else:
            raise ConfigError(f"--stages: unknown stage {stage!r}; valid: {[*stage_lib.STAGES, 'predict']}")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from semeda_jax.data.errors import DatasetError
    from semeda_jax.validation import ConfigError, InputError

    stages = FLAGS.stages or (["predict"] if FLAGS.images else list(FLAGS.config.stages))
    try:
        run(FLAGS.config, FLAGS.workdir, stages, FLAGS.images)
    except (DatasetError, InputError, ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
