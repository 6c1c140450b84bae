#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md in one command (< 8 minutes on one H100/H200): our train step against the
# PyTorch peer (segmentation_models_pytorch DeepLabV3Plus) at the papers' sizes, bf16 and fp32 (rows: benchmarks/peer.py
# GPU_SUITE: VOC 513x513 and Cityscapes 769x769 crops, batch 8, DeepLab v3+ ResNet-101 / Xception-71 OS 16; ours
# CE and CE+SEMEDA; the peer eager in fp32, torch.compile + AMP in bf16). MFU is against the device's dense
# spec-sheet peak for the precision.
#
#   benchmarks/gpu_suite.sh                  # on a GPU machine whose python has jax[cuda], torch, timm and smp
#   benchmarks/gpu_suite.sh --dry-run        # every row's config checked on any machine, nothing run (CI)
#
# PYTHON (default: python) runs ours; PEER_PYTHON (default: python3) the peer. Ours needs jax, flax, optax,
# orbax-checkpoint and ml-collections, not TensorFlow (the step imports no data code); the peer torch, timm and
# segmentation-models-pytorch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--dry-run" ]]; then
  JAX_PLATFORMS=cpu exec "${PYTHON:-python}" -m benchmarks.peer --gpu-suite --plan
fi
exec "${PYTHON:-python}" -m benchmarks.peer --gpu-suite --peer-python "${PEER_PYTHON:-python3}"
