#!/usr/bin/env bash
# Run an experiment on this machine (all local devices, one process).
#   launch/local.sh configs/demo.py /tmp/semeda_demo [--config.train.steps=200 ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m semeda_jax.main --config="$config" --workdir="$workdir" "$@"
