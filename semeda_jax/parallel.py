"""One device mesh over all devices of all processes, and the shardings of the train/eval steps.

    mesh  [data, spatial] = [device_count / s, s]   (s = config.parallel.spatial_partitions, default 1)
    batch maps  [B,H,W,...]  PartitionSpec("data", "spatial")   rows over `data`, height over `spatial`
    batch rows  [B] / [B,k]  PartitionSpec("data")             per-example values (mask, index, sizes)
    state       params, batch_stats, opt_state     replicated, or with param_sharding="data" every leaf of
                                                   >= 2^14 elements split along its largest divisible axis
    metrics, eval counts                           replicated (one value, the same on every process)

`batch_sharding` gives a batch leaf's sharding by its rank; every caller (the train and eval steps, global
batches, the compile stage's abstract inputs) takes it from there. With s > 1 one image is split by height over
the s chips of its `spatial` group: XLA's SPMD partitioner runs each convolution on the local rows plus a halo
exchanged with the neighbours, and reduces over the whole image where the math does (batch-norm statistics, loss
means), so the numbers are those of s = 1 (tests/test_spatial.py). It pays when one image's activations do not
fit one chip (large crops, e.g. 1024x2048 Cityscapes); every spatial group must lie inside one process.

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

DATA_AXIS, SPATIAL_AXIS = "data", "spatial"
PARAM_SHARDINGS = ("replicated", "data")
CONFIG_FIELDS = ("spatial_partitions", "param_sharding")  # of config.parallel
MIN_SHARDED_SIZE = 2 ** 14  # smaller leaves stay replicated under param_sharding="data": not worth a gather


def check_config(config: ml_collections.ConfigDict) -> None:
    """config.parallel (stages.check_config): only CONFIG_FIELDS; spatial_partitions an integer >= 1, a known
    param_sharding (whether the devices split evenly is known only at make_mesh)."""
    check_fields(config.parallel, CONFIG_FIELDS, "config.parallel")
    check_positive_ints(config, ["parallel.spatial_partitions"])
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
    """The [data, spatial] mesh over `devices` (default jax.devices(): all processes, in process order; or e.g.
    the compile-only devices of a TPU topology). ConfigError unless spatial_partitions divides the devices and,
    with several processes, each process's devices (a spatial group holds whole images of one process)."""
    devices = jax.devices() if devices is None else list(devices)
    spatial = int(config.parallel.spatial_partitions)
    if spatial < 1 or len(devices) % spatial:
        raise ConfigError(f"config.parallel.spatial_partitions: {spatial} does not divide the {len(devices)} "
                          f"devices")
    if jax.process_count() > 1 and jax.local_device_count() % spatial:
        raise ConfigError(f"config.parallel.spatial_partitions: {spatial} does not divide the "
                          f"{jax.local_device_count()} devices of a process; a spatial group must lie inside one "
                          f"process")
    return Mesh(np.asarray(devices).reshape(len(devices) // spatial, spatial), (DATA_AXIS, SPATIAL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rank: int) -> NamedSharding:
    """The sharding of a batch leaf of `rank`: an image or map [B,H,W,...] (rank >= 3) split by rows over `data`
    and by height over `spatial`; a per-example value [B] or [B,k] over `data`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, SPATIAL_AXIS) if rank >= 3 else PartitionSpec(DATA_AXIS))


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
    """{name: this process's rows [B/P,...]} -> {name: global jax.Array [B,...] with its `batch_sharding`}.
    ConfigError when a map's height does not split over the `spatial` axis."""
    spatial = mesh.shape[SPATIAL_AXIS]
    for name, value in local.items():
        if np.ndim(value) >= 3 and np.shape(value)[1] % spatial:
            raise ConfigError(f"config.parallel.spatial_partitions: {spatial} does not divide the height of the "
                              f"batch's {name!r} {list(np.shape(value))}; use crop / eval pad heights (times "
                              f"config.data.input_scale) that are multiples of {spatial}")
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}


def host_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order (the inverse of `global_batch`): its shards
    pasted into place (a spatial group lies inside one process, so they cover whole rows; copies on several
    devices paste the same values)."""
    shards = array.addressable_shards
    first = min(shard.index[0].start or 0 for shard in shards)
    last = max(shard.index[0].stop or array.shape[0] for shard in shards)
    rows = np.empty((last - first, *array.shape[1:]), array.dtype)
    for shard in shards:
        start, stop = shard.index[0].start or 0, shard.index[0].stop or array.shape[0]
        rows[(slice(start - first, stop - first), *shard.index[1:])] = np.asarray(shard.data)
    return rows


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
