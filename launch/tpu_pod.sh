#!/usr/bin/env bash
# Cloud TPU VM (a pod slice): the same command on every worker, one process per worker (host); JAX finds the
# coordinator, process count and id from the TPU metadata.
#   launch/tpu_pod.sh my-tpu us-central2-b configs/voc.py /mnt/shared/runs/voc [--config.train.steps=30000 ...]
# The repository must be at ~/semeda_jax on every worker (e.g. `gcloud ... --worker=all --command="git clone ..."`)
# with `pip install -r requirements.txt "jax[tpu]"`. WORKDIR must be a path all workers see (NFS/Filestore, or a
# bucket mounted with gcsfuse).
# config.data.batch_size is the GLOBAL batch (a multiple of the number of TPU chips). Maintenance events and
# preemption send SIGTERM: the run checkpoints at the next step and exits 0; rerun this script to resume.
# Allocator: TPU VM images preload tcmalloc (LD_PRELOAD), which semeda_jax.main keeps; elsewhere it
# re-executes itself once under tcmalloc or mimalloc (semeda_jax/allocator.py). This script leaves LD_PRELOAD alone.
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
zone=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
config=${3:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
workdir=${4:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
shift 4
printf -v extra ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="cd ~/semeda_jax && \
python -m semeda_jax.main --config=$(printf %q "$config") --workdir=$(printf %q "$workdir") --distributed$extra"
