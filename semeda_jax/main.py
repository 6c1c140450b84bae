"""Entry point: run the stages of an experiment config in a workdir.

    python -m semeda_jax.main --config=configs/demo.py --workdir=/tmp/semeda_demo
    python -m semeda_jax.main --config=configs/demo.py --workdir=/tmp/semeda_demo --stages=eval
    python -m semeda_jax.main --config=configs/demo.py --workdir=/tmp/semeda_demo --images=FOLDER   # predict

Multi-host (one process per host or per GPU, see launch/): `--distributed` calls jax.distributed.initialize
first; the coordinator address, process count and id come from the environment (SLURM, Cloud TPU) or from
--coordinator_address/--num_processes/--process_id. SIGTERM stops the run at its next safe point (training: a
checkpoint at the next step; eval, learn_fusion: the next batch; predict: the next image; preemption.py) and exits
with 0. First of all, the process re-executes itself once under a page-keeping malloc (allocator.py); its first
log line names it.

`--config.a.b=value` overrides any config field; an unknown field is an error. Without --stages the config's own
list runs (config.stages, e.g. edge_pretrain,train,eval); --images alone runs predict. The config is checked
(stages.check_config) and the stage plan too (stages.check_run) before any work. User errors (a missing
or undecodable dataset file, a bad label, a bad config value, a read-only, full or busy workdir, a diverged
run, unreadable files in --images) end with one line naming the file or key, and exit status 2.
The workdir is created, checked writable and, for the training stages, locked (workdir.py: one training per
workdir; eval, predict, export and compile run beside it) before any work. `--stages=compile --topology=v5p-8`
compiles the steps for a device topology without data or weights (compile_report.py).
"""
from __future__ import annotations

import errno
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep its C++ banner quiet

from semeda_jax import allocator, preemption  # noqa: E402  (import nothing heavy)

if __name__ == "__main__":
    preemption.install()  # first: a SIGTERM during the imports and start-up is a clean stop too (exit 0)
    # Once, before anything heavy: the same command again under tcmalloc/mimalloc (allocator.py); SIGTERM waits
    # blocked across the exec and reaches the handler the new process installs on the line above.
    allocator.reexec(stop_requested=preemption.received)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and reports (created if needed).")
flags.DEFINE_list("stages", None, "Stages to run (edge_pretrain, train, learn_fusion, eval, predict, export, "
                  "compile); default: config.stages.")
flags.DEFINE_string("images", None, "Folder of images for the predict stage.")
flags.DEFINE_string("topology", None, "The compile stage's devices: a TPU topology (v5p-32, v5e-16, v4-32, v6e-8; "
                    "needs pip install -e .[tpu]) or cpu:N.")
flags.DEFINE_bool("fit_batch", False, "The compile stage: also find the largest per-chip train batch that fits the "
                  "chip's HBM (a few more compiles).")
flags.DEFINE_bool("distributed", False, "Multi-process run: call jax.distributed.initialize first.")
flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0 (default: from the "
                    "environment, e.g. SLURM or Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "--distributed: number of processes (default: from the environment).")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index (default: from the environment).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, stages, images: str | None) -> None:
    """Run `stages` in order (importing the JAX side only now, so flag errors come back fast)."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data runs on the host: TensorFlow must not take GPU memory
    import jax

    from semeda_jax import parallel, stages as stage_lib
    from semeda_jax import workdir as workdir_lib
    from semeda_jax.validation import ConfigError

    if FLAGS.distributed:  # before anything touches a device
        parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.set_verbosity(logging.WARNING)  # orbax and clu log every checkpoint save at INFO
    log = print if jax.process_index() == 0 else (lambda line: None)  # progress from process 0 only
    unknown = [stage for stage in stages if stage not in stage_lib.STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; valid: {list(stage_lib.STAGES)}")
    if "predict" in stages and not images:
        raise ConfigError("--images: the predict stage needs a folder of images")
    stage_lib.check_config(config)
    stage_lib.check_run(config, stages, workdir)
    workdir = workdir_lib.prepare(workdir)
    options = {"predict": {"images": images},  # the stages' own flags
               "compile": {"topology": FLAGS.topology, "fit_batch": FLAGS.fit_batch}}
    # Training stages hold the workdir exclusively; eval, predict and export alone run beside a training (they
    # read only finished checkpoints and write only reports, plots, predictions/ and export/).
    training = bool({"edge_pretrain", "train", "learn_fusion"} & set(stages))
    with workdir_lib.WorkdirLock(workdir, jax.process_index(), exclusive=training):
        for stage in stages:
            preemption.check_stage_boundary(stage)
            stage_lib.STAGES[stage](config, workdir, log=log, **options.get(stage, {}))


def user_error_message(error: BaseException, config=None) -> str | None:
    """The one-line message of a user error (bad data, input or config, an unusable workdir, a diverged run),
    or None for a bug. A TensorFlow error from the input pipeline (a file that does not decode, an image and
    label of different sizes) carries no usable path: the splits of `config` are then checked file by file
    to name the culprit."""
    from semeda_jax.checkpointing import CheckpointError
    from semeda_jax.data.errors import DatasetError
    from semeda_jax.validation import ConfigError, InputError
    from semeda_jax.workdir import WorkdirError, free_bytes

    if isinstance(error, (DatasetError, InputError, ConfigError, FileNotFoundError, WorkdirError,
                          CheckpointError)):
        return str(error)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        where = error.filename or "a file"  # a report, plot or event file the run was writing
        return f"{where}: {error.strerror}; {free_bytes(str(error.filename or '.'))} bytes free there"
    marker = "DatasetError: "  # raised inside a tf.data map function, TensorFlow wraps it in its own error
    if marker in str(error):
        return str(error).split(marker, 1)[1].splitlines()[0]
    if type(error).__module__.startswith("tensorflow") and config is not None:
        return find_bad_file(config, error)
    return None


def find_bad_file(config, error: BaseException) -> str | None:
    """The DatasetError message of the first file of config's train and val splits that does not decode or
    whose image and label sizes differ (reader.find_bad_file); None when every file reads."""
    from semeda_jax.data import build_reader

    print(f"[data] the input pipeline failed ({str(error).strip().splitlines()[0][:200]}); "
          f"checking every file of the splits to name it", flush=True)
    for split in dict.fromkeys((config.dataset.train_split, config.dataset.val_split)):
        problem = build_reader(config.dataset, split).find_bad_file()
        if problem is not None:
            return problem
    return None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    stages = FLAGS.stages or (["predict"] if FLAGS.images else list(FLAGS.config.stages))
    from semeda_jax.preemption import Preempted

    try:
        run(FLAGS.config, FLAGS.workdir, stages, FLAGS.images)
    except Preempted as preempted:  # a clean stop: the checkpoint is on disk, later stages wait for the rerun
        print(f"[{preempted.stage}] {preempted}", flush=True)
    except Exception as error:  # noqa: BLE001 -- every failure ends the same way, see below
        try:
            message = user_error_message(error, FLAGS.config)
        except Exception as diagnosis_error:  # noqa: BLE001 -- the original error is the one to show
            message = None
            print(f"(finding the bad file failed too: {diagnosis_error})", file=sys.stderr)
        if message is None:
            traceback.print_exc()
        else:
            print(f"error: {message}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: destroying a tf.data iterator with map calls in flight can deadlock there.
        os._exit(1 if message is None else 2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with a bad --config override (unknown key, wrong type) reported in one line, exit 2."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        print(f"error: a --config.* override names no config field, or gives a value of the wrong type: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
