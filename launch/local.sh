#!/usr/bin/env bash
# Run an experiment on this machine.
#   launch/local.sh configs/demo.py /tmp/semeda_demo [--config.train.steps=200 ...]    one process, all devices
#   launch/local.sh --processes=2 configs/demo.py:smoke /tmp/mp [flags...]             N processes on 127.0.0.1
# With --processes=N, N copies run with --distributed, process 0 coordinating on a free local port: the
# multi-host code path (jax.distributed, per-process data shards, orbax multi-host saves) on one machine, e.g. on
# CPU to test it (each process then has its own CPU device; set XLA_FLAGS=--xla_force_host_platform_device_count=K
# for K devices per process). SIGTERM/SIGINT are forwarded to every process (each checkpoints and exits 0); the
# script exits with the first non-zero status.
# Allocator: each process is semeda_jax.main, which re-executes itself once under tcmalloc or mimalloc
# (semeda_jax/allocator.py); this script leaves LD_PRELOAD alone. SEMEDA_JAX_ALLOCATOR=system keeps glibc.
set -euo pipefail
processes=1
if [[ "${1:-}" == --processes=* ]]; then
  processes=${1#--processes=}
  shift
fi
config=${1:?usage: launch/local.sh [--processes=N] CONFIG WORKDIR [flags...]}
workdir=${2:?usage: launch/local.sh [--processes=N] CONFIG WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
if (( processes == 1 )); then
  exec python -m semeda_jax.main --config="$config" --workdir="$workdir" "$@"
fi

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < processes; i++)); do
  python -m semeda_jax.main --config="$config" --workdir="$workdir" --distributed \
    --coordinator_address="127.0.0.1:$port" --num_processes="$processes" --process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do
  while true; do
    code=0
    wait "$pid" || code=$?
    # A wait cut short by the trapped signal returns > 128 while the process still runs: wait for it again.
    if (( code > 128 )) && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  if (( code != 0 && status == 0 )); then status=$code; fi
done
exit "$status"
