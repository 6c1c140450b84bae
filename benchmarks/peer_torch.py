"""The PyTorch peer's train step, run by benchmarks/peer.py in the peer's own virtual environment.

Not imported by the project: `peer.py` starts this file with the peer venv's python and talks to it over
stdin/stdout, one JSON object per line, so that the two frameworks never share a process and the timed rounds
can alternate (ours, peer, ours, peer ...) with both steps kept warm.

    {"cmd": "setup", "encoder": "resnet101", "output_stride": 16, "batch": 2, "crop": 192, "classes": 21,
     "amp": false, "compile": false, "channels_last": true, "threads": 2, "device": "cpu"}
        -> {"warmup_s": ..., "gflop_per_step": ..., "versions": ..., "parameters_m": ...}
    {"cmd": "time", "steps": 5} -> {"step_s": [...], "peak_memory_mib": ..., "memory_kind": "peak RSS" | ...}
    {"cmd": "quit"}

The model is segmentation_models_pytorch's DeepLabV3Plus with the settings closest to ours: plain (not
separable) ASPP convolutions at our rates (6, 12, 18 at OS 16, doubled at OS 8), dropout 0.1, train-mode BN,
per-pixel CE with ignore_index 255 on logits upsampled to the crop, SGD with momentum 0.9 and weight decay 1e-4.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def versions() -> str:
    import segmentation_models_pytorch as smp
    import timm
    import torch

    return f"torch {torch.__version__}, smp {smp.__version__}, timm {timm.__version__}"


def build(spec: dict):
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    rates = tuple(r * 16 // int(spec["output_stride"]) for r in (6, 12, 18))
    model = smp.DeepLabV3Plus(encoder_name=spec["encoder"], encoder_weights=None,
                              encoder_output_stride=int(spec["output_stride"]), classes=int(spec["classes"]),
                              decoder_aspp_separable=False, decoder_atrous_rates=rates, decoder_aspp_dropout=0.1)
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    generator = torch.Generator().manual_seed(0)
    shape = (int(spec["batch"]), 3, int(spec["crop"]), int(spec["crop"]))
    images = torch.randn(shape, generator=generator).to(device, memory_format=memory_format)
    labels = torch.randint(0, int(spec["classes"]), (shape[0], shape[2], shape[3]), generator=generator).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(spec["amp"]))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = criterion(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        return loss

    compiled = torch.compile(step) if spec["compile"] else step
    return model, step, compiled, device


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_step(step) -> float:
    """FLOPs of one eager forward + backward + update, counted by torch's FlopCounterMode (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def peak_memory_mib(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20, "max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


def main() -> None:
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        if request["cmd"] == "setup":
            model, eager, compiled, device = build(request)
            flops = flops_per_step(eager)
            start = time.perf_counter()
            for _ in range(3):  # torch.compile traces and compiles here; eager warms its caches
                compiled()
            synchronize(device)
            state = dict(step=compiled, device=device)
            reply = {"warmup_s": time.perf_counter() - start, "gflop_per_step": flops / 1e9,
                     "versions": versions(),
                     "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
        else:
            times = []
            for _ in range(int(request["steps"])):
                start = time.perf_counter()
                state["step"]()
                synchronize(state["device"])
                times.append(time.perf_counter() - start)
            memory, kind = peak_memory_mib(state["device"])
            reply = {"step_s": times, "peak_memory_mib": memory, "memory_kind": kind}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
