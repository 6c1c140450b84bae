"""The dense CRF (Kraehenbuehl & Koltun, pydensecrf2) for benchmarks/crf.py, run in the dense CRF's own venv.

Not imported by the project: `crf.py` starts this file with that venv's python (benchmarks.peer.Peer) and talks
to it over stdin/stdout, one JSON object per line; arrays go through .npy files.

    {"cmd": "setup"} -> {"pydensecrf": version}
    {"cmd": "crf", "probs": "p.npy" (float32 [H,W,C]), "image": "i.npy" (uint8 [H,W,3]), "iterations": T,
     "out": "q.npy" or null} -> {"seconds": time of one image (unary, both kernels, T iterations)}
    {"cmd": "quit"}

Settings: DeepLab's dense CRF as in pydensecrf's README: unary -log p, a Gaussian kernel (sxy 3, compat 3) and
a bilateral one (sxy 80, srgb 13, compat 10), Potts compatibility.
"""
from __future__ import annotations

import json
import sys
import time
from importlib import metadata


def dense_crf(probs, image, iterations: int):
    """probs [H,W,C] float32, image [H,W,3] uint8 -> Q [H,W,C] after `iterations` mean-field steps."""
    import numpy as np
    import pydensecrf.densecrf as dcrf

    height, width, classes = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.maximum(probs, 1e-12)).transpose(2, 0, 1).reshape(classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
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
            start = time.perf_counter()
            q = dense_crf(probs, image, int(request["iterations"]))
            reply = {"seconds": time.perf_counter() - start}
            if request.get("out"):
                np.save(request["out"], q.astype(np.float32))
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
