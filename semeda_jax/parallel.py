"""One device mesh over all devices of all processes, and the shardings of the train/eval steps.

    mesh  [data, model] = [device_count / m, m]   (m = config.parallel.model_parallelism, 1 today)
    batch       [B,...]  sharded on `data`         B = config.data.batch_size, the GLOBAL batch
    state       params, batch_stats, opt_state     replicated, or with param_sharding="data" every leaf of
                                                   >= 2^14 elements split along its largest divisible axis
    metrics, eval counts                           replicated (one value, the same on every process)

Every process reads B / process_count examples (data/pipeline.py shards the file ids per process);
`global_batch` assembles those per-process arrays into one jax.Array with `make_array_from_process_local_data`,
so process p holds rows [p * B/P, (p+1) * B/P) (the mesh lists devices in process order). A reduction over the
batch axis inside the jitted step (the loss mean, batch-norm statistics) is therefore a reduction over the
global batch: XLA inserts the all-reduces, and `jax.grad` of the global mean is the gradient of the global
batch. Multi-host: `initialize` calls `jax.distributed.initialize` before anything touches a device.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semeda_jax.validation import ConfigError, check_fields, check_positive_ints

DATA_AXIS, MODEL_AXIS = "data", "model"
PARAM_SHARDINGS = ("replicated", "data")
CONFIG_FIELDS = ("model_parallelism", "param_sharding")  # of config.parallel
MIN_SHARDED_SIZE = 2 ** 14  # smaller leaves stay replicated under param_sharding="data": not worth a gather


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.parallel (stages.check_config): only CONFIG_FIELDS; model_parallelism an integer >= 1, a known
    param_sharding (whether the devices split evenly is known only at make_mesh)."""
    check_fields(config.parallel, CONFIG_FIELDS, "config.parallel")
    check_positive_ints(config, ["parallel.model_parallelism"])
    _check_param_sharding(config.parallel.param_sharding)


def _check_param_sharding(mode: str) -> None:
    if mode not in PARAM_SHARDINGS:
        raise ConfigError(f"config.parallel.param_sharding: unknown {mode!r}; valid: {list(PARAM_SHARDINGS)}")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """`jax.distributed.initialize`: unset arguments come from the environment (SLURM, Cloud TPU, MPI...)."""
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence | None = None) -> Mesh:
    """The [data, model] mesh over `devices` (default jax.devices(): all processes, in process order; or e.g.
    the compile-only devices of a TPU topology)."""
    devices = jax.devices() if devices is None else list(devices)
    model = int(config.parallel.model_parallelism)
    if model < 1 or len(devices) % model:
        raise ConfigError(f"config.parallel.model_parallelism: {model} does not divide the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(len(devices) // model, model), (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def local_batch_size(global_batch: int, mesh: Mesh, name: str = "config.data.batch_size",
                     multiple_of: int = 1) -> int:
    """The per-process share of a global batch; ConfigError unless it splits evenly over the `data` axis
    (times `multiple_of`, e.g. the gradient-accumulation steps, so every micro-batch splits evenly too)."""
    shards = mesh.shape[DATA_AXIS] * multiple_of
    if global_batch % shards or global_batch % jax.process_count():
        raise ConfigError(f"{name}: the global batch {global_batch} must be a multiple of {shards} "
                          f"(data-parallel devices{' x micro-batches' if multiple_of > 1 else ''}) and of the "
                          f"{jax.process_count()} processes")
    return global_batch // jax.process_count()


def local_eval_batch_size(requested: int, mesh: Mesh) -> int:
    """The per-process eval batch: the global `requested` rounded up to a multiple of the data-parallel devices.
    The eval stream fills its last batch with all-void examples that count nothing, so a larger batch changes no
    number, and a config's eval batch (e.g. 1 full Cityscapes image) runs on any device count."""
    shards = mesh.shape[DATA_AXIS]
    return local_batch_size(-(-requested // shards) * shards, mesh, "config.data.eval_batch_size")


def global_batch(local: dict, mesh: Mesh) -> dict:
    """{name: this process's rows [B/P,...]} -> {name: global jax.Array [B,...] sharded on `data`}."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def host_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order (the inverse of `global_batch`)."""
    shards = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start or 0)
    starts, rows = [], []
    for shard in shards:  # with a `model` axis several devices hold the same rows: keep one copy
        if shard.index[0].start not in starts:
            starts.append(shard.index[0].start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows)


def _leaf_sharding(mesh: Mesh, leaf, mode: str) -> NamedSharding:
    data = mesh.shape[DATA_AXIS]
    shape = getattr(leaf, "shape", ())
    if mode == "replicated" or math.prod(shape) < MIN_SHARDED_SIZE:
        return replicated(mesh)
    divisible = [axis for axis in np.argsort(shape)[::-1] if shape[axis] % data == 0]
    if not divisible:
        return replicated(mesh)
    spec = [None] * len(shape)
    spec[divisible[0]] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def state_shardings(mesh: Mesh, abstract_state, mode: str):
    """Shardings for every leaf of a (train) state of ShapeDtypeStructs: replicated, or (mode "data", ZeRO-3
    style) big leaves split along `data`; optimiser moments follow their parameters (same shape, same rule)."""
    _check_param_sharding(mode)
    return jax.tree_util.tree_map(lambda leaf: _leaf_sharding(mesh, leaf, mode), abstract_state)


def with_shardings(abstract, shardings):
    """A tree of ShapeDtypeStructs (jax.eval_shape's) with the matching tree of shardings attached."""
    return jax.tree_util.tree_map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                              sharding=sharding),
                                  abstract, shardings)


def any_process(flag: bool) -> bool:
    """True on every process iff `flag` is True on at least one (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
