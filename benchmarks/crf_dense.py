"""The dense CRF (Kraehenbuehl & Koltun, pydensecrf2) for benchmarks/crf.py, run in the dense CRF's own venv.

Run by the project, not imported (crf.py reads only BILATERAL): `crf.py` starts this file with that venv's
python (benchmarks.peer.Peer) and talks to it over stdin/stdout, one JSON object per line; arrays go through
.npy files.

    {"cmd": "setup"} -> {"pydensecrf": version}
    {"cmd": "crf", "probs": "p.npy" (float32 [H,W,C] or [N,H,W,C]), "image": "i.npy" (uint8 [H,W,3] or
     [N,H,W,3]), "iterations": T, "out": "q.npy" or null, "argmax": "a.npy" or null,
     "sxy": 80, "srgb": 13, "compat": 10 (the bilateral kernel's; optional, DeepLab's by default)}
     -> {"seconds": time of the images (unary, both kernels, T iterations each)}; "out" gets Q (float32, the
     shape of probs), "argmax" the labels argmax Q (uint8 [H,W] or [N,H,W]); a stack is N separate images
    {"cmd": "quit"}

Settings: unary -log p, a Gaussian kernel (sxy 3, compat 3) and a bilateral one, Potts compatibility; the
bilateral kernel's defaults are DeepLab's as in pydensecrf's README (sxy 80, srgb 13, compat 10).
"""
from __future__ import annotations

import json
import sys
import time
from importlib import metadata


BILATERAL = dict(sxy=80, srgb=13, compat=10)  # DeepLab's


def dense_crf(probs, image, iterations: int, sxy: float = 80, srgb: float = 13, compat: float = 10):
    """probs [H,W,C] float32, image [H,W,3] uint8 -> Q [H,W,C] after `iterations` mean-field steps, with the
    bilateral kernel (sxy, srgb, compat)."""
    import numpy as np
    import pydensecrf.densecrf as dcrf

    height, width, classes = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.maximum(probs, 1e-12)).transpose(2, 0, 1).reshape(classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=compat)
    return np.asarray(crf.inference(iterations)).reshape(classes, height, width).transpose(1, 2, 0)


def main() -> None:
    import numpy as np

    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        if request["cmd"] == "setup":
            reply = {"pydensecrf": metadata.version("pydensecrf2")}
        else:
            probs, image = np.load(request["probs"]), np.load(request["image"])
            bilateral = {key: float(request.get(key, value)) for key, value in BILATERAL.items()}
            stack = probs.ndim == 4
            start = time.perf_counter()
            q = np.stack([dense_crf(p, i, int(request["iterations"]), **bilateral)
                          for p, i in zip(*((probs, image) if stack else (probs[None], image[None])))])
            reply = {"seconds": time.perf_counter() - start}
            q = q if stack else q[0]
            if request.get("out"):
                np.save(request["out"], q.astype(np.float32))
            if request.get("argmax"):
                np.save(request["argmax"], np.argmax(q, -1).astype(np.uint8))
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
