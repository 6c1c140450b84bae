"""The guided-filter mean-field CRF (semeda_jax/crf.py) against the dense CRF (pydensecrf2) on the same unaries:
time per image, and the mIoU change each gives on the validation split of a trained model.

    python -m benchmarks.crf --setup-dense      # once: the dense CRF's venv (pydensecrf2 builds with the local C++)
    python -m benchmarks.crf                    # VOC 500x375 (21 classes), Cityscapes 2048x1024 (19); T = 5, 10
    python -m benchmarks.crf --tiny             # seconds: tiny sizes, checks that the script works
    python -m benchmarks.crf --miou --config demo --workdir W [--dataset-cache-dir D]   # mIoU on W's val split
    python -m benchmarks.crf --tune --workdir W          # both CRFs tuned, compared on val (crf_tuning.py)
    python -m benchmarks.crf --tune --tiny --workdir W   # its smoke run (~2 minutes on the 2-core CPU)

Timing. Each image size gets one scene: colour regions on a coarse random label grid (64 px cells) with pixel
noise as the image, and unaries p = softmax(2.5 onehot(label) + N(0, 1.5^2) per pixel and class); both CRFs
get the same p and image. Ours: one jitted mean_field (guide set-up + T iterations, radius 4, eps 10, weight 1,
Potts; float32) per (size, T), compiled first, then timed; the dense CRF: one image in its worker process
(benchmarks/crf_dense.py in the venv --dense-venv, default ~/.cache/semeda_jax/crf-venv; the unary, its two
kernels and T iterations, DeepLab's settings). `--repeats` alternating rounds (ours, dense, ours, dense ...);
the table gives the medians and the ratio dense / ours at equal T. Without the venv the dense columns are
skipped with a one-line message saying how to create it.

mIoU. The trained model of --workdir (its best checkpoint; --config names the configs/ file it was trained
with) predicts its validation split whole-image; the table gives the mIoU of argmax p, of the guided CRF
(config.eval.crf's settings) and of the dense CRF (T = config.eval.crf.iterations), each image cropped to its
size first.

Tuned (--tune): benchmarks/crf_tuning.py (both CRFs tuned on a tuning split, compared on val).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.peer import Peer, setup_peer
from semeda_jax import crf

DENSE_VENV = Path("~/.cache/semeda_jax/crf-venv").expanduser()
DENSE_PACKAGES = ("pydensecrf2==1.1", "numpy==2.4.6")
WORKER = Path(__file__).with_name("crf_dense.py")
# (name, height, width, classes)
SIZES = (("VOC", 375, 500, 21), ("Cityscapes", 1024, 2048, 19))
TINY_SIZES = (("tiny", 40, 48, 5), ("tiny-wide", 48, 96, 4))


def scene(height: int, width: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H,W,3], labels [H,W], unary probabilities float32 [H,W,C]) of the timing scene."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, classes, (-(-height // 64), -(-width // 64)))
    labels = np.kron(cells, np.ones((64, 64), int))[:height, :width]
    colours = rng.uniform(20, 235, (classes, 3))
    image = np.clip(colours[labels] + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    logits = 2.5 * np.eye(classes)[labels] + rng.normal(0, 1.5, (height, width, classes))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return image, labels, (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def guided_fn(radius: int, eps: float, iterations: int, weight: float):
    """jit(probs [H,W,C], image [H,W,3]) -> Q [H,W,C]: the guided CRF on unary log p."""
    def run(probs, image):
        unary = jnp.log(jnp.maximum(probs, 1e-12))[None]
        return crf.mean_field(unary, image[None].astype(jnp.float32), radius=radius, eps=eps, iterations=iterations,
                              weight=weight)[0]
    return jax.jit(run)


class DenseCRF:
    """The dense CRF's worker (benchmarks/crf_dense.py in its venv); arrays through files in a temp folder."""

    def __init__(self, python: Path):
        self.folder = tempfile.TemporaryDirectory(prefix="crf_bench_")
        self.peer = Peer(python, {}, worker=WORKER)

    def run(self, probs: np.ndarray, image: np.ndarray, iterations: int, want: str | None = None, **bilateral):
        """probs [(N,)H,W,C], image [(N,)H,W,3]; `bilateral`: sxy, srgb, compat (default DeepLab's) ->
        (seconds, Q [(N,)H,W,C] for want="out", argmax Q [(N,)H,W] for want="argmax", else None)."""
        paths = {name: os.path.join(self.folder.name, f"{name}.npy") for name in ("probs", "image", "out", "argmax")}
        np.save(paths["probs"], probs.astype(np.float32))
        np.save(paths["image"], image.astype(np.uint8))
        reply = self.peer.ask({"cmd": "crf", "probs": paths["probs"], "image": paths["image"],
                               "iterations": int(iterations), **{key: float(v) for key, v in bilateral.items()},
                               **{name: paths[name] if want == name else None for name in ("out", "argmax")}})
        return reply["seconds"], (np.load(paths[want]) if want else None)

    def close(self) -> None:
        self.peer.close()
        self.folder.cleanup()


def time_ours(fn, probs, image, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(probs, image))
        times.append(time.perf_counter() - start)
    return times


def timing_table(sizes, iterations, repeats: int, dense: DenseCRF | None) -> list[dict]:
    """One row per (size, T): medians of ours and of the dense CRF (None without it) and their ratio."""
    rows = []
    for name, height, width, classes in sizes:
        image, _, probs = scene(height, width, classes)
        device_probs, device_image = jax.device_put(probs), jax.device_put(image)
        for t in iterations:
            fn = guided_fn(4, 10.0, t, 1.0)
            start = time.perf_counter()
            jax.block_until_ready(fn(device_probs, device_image))
            compile_s = time.perf_counter() - start
            ours, theirs = [], []
            for _ in range(repeats):
                ours += time_ours(fn, device_probs, device_image, 1)
                if dense is not None:
                    theirs.append(dense.run(probs, image, t)[0])
            row = {"name": name, "size": f"{width}x{height}", "classes": classes, "T": t,
                   "ours_s": statistics.median(ours), "compile_s": compile_s,
                   "dense_s": statistics.median(theirs) if theirs else None}
            row["ratio"] = row["dense_s"] / row["ours_s"] if theirs else None
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    dense = (f" {row['dense_s']:>9.3f} | {row['ratio']:>9.1f}x" if row["dense_s"] is not None
             else f" {'-':>9} | {'-':>10}")
    return (f"| {row['name']:<11}| {row['size']:>10} | {row['classes']:>3} | {row['T']:>3} | {row['ours_s']:>9.3f} "
            f"|{dense} | {row['compile_s']:>7.1f} |")


HEADER = (f"| {'image':<11}| {'W x H':>10} | {'C':>3} | {'T':>3} | {'guided (s)':>9} | {'dense (s)':>9} | "
          f"{'dense/ours':>10} | {'compile':>7} |")


def split_predictions(config, workdir: str, log=print):
    """Yield (probs float32 [h,w,C], image uint8 [h,w,3], labels [h,w]) per image of config's val split: the
    trained model of `workdir` (its best checkpoint) predicting whole images, each cropped to its size."""
    from semeda_jax import inference, stages
    from semeda_jax.data import pipeline

    reader = stages.build_readers(config)["val"]
    state = stages.restore_for_inference(config, workdir, log=log)
    predict = jax.jit(inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn,
                                                 output_stride=int(config.model.output_stride)), static_argnums=2)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    dataset = pipeline.eval_dataset(reader, pad_size=config.data.eval_pad_size, batch_size=config.data.eval_batch_size,
                                    mean=config.data.mean, std=config.data.std, input_scale=config.data.input_scale)
    for batch in dataset.as_numpy_iterator():
        probs = np.asarray(predict(variables, batch["image"], batch["label"].shape[1:3]))
        for i in np.flatnonzero(batch["mask"]):
            h, w = int(batch["height"][i]), int(batch["width"][i])
            image = pipeline.denormalize(batch["image"][i], config.data.mean, config.data.std)[:h, :w]
            yield probs[i, :h, :w], image, batch["label"][i, :h, :w]


def miou_table(config_name: str, workdir: str, cache_dir: str | None, dense: DenseCRF | None) -> dict:
    """{"none", "guided", "dense"}: val mIoU of the trained model of `workdir` without a CRF and with each."""
    from benchmarks.train_step import load_config
    from semeda_jax import metrics

    config = load_config(config_name)
    if cache_dir:
        config.dataset.cache_dir = cache_dir
    options = crf.options_from_config(config.eval.crf, config.data)
    guided = guided_fn(options["radius"], options["eps"], options["iterations"], options["weight"])
    classes = config.dataset.num_classes
    totals = {name: np.zeros((classes, classes), np.int64) for name in ("none", "guided", "dense")}
    for p, image, label in split_predictions(config, workdir):
        outs = {"none": p, "guided": np.asarray(guided(p, image))}
        if dense is not None:
            outs["dense"] = dense.run(p, image, options["iterations"], want="out")[1]
        for name, q in outs.items():
            totals[name] += np.asarray(metrics.confusion_matrix(label[None], np.argmax(q, -1)[None], classes))
    return {name: metrics.segmentation_summary(cm)["miou"] for name, cm in totals.items()
            if dense is not None or name != "dense"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds per row")
    parser.add_argument("--dense-venv", type=Path, default=DENSE_VENV)
    parser.add_argument("--setup-dense", action="store_true", help="create the dense CRF's venv and exit")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the script's own check)")
    parser.add_argument("--miou", action="store_true", help="the mIoU table of --workdir's model instead")
    parser.add_argument("--tune", action="store_true", help="the tuned comparison in --workdir instead (with "
                        "--tiny: crf_tuning.TINY_TUNE, the smoke run)")
    parser.add_argument("--config", default="demo", help="--miou: the configs/ file[:variant] of the model")
    parser.add_argument("--workdir", default=None, help="--miou: the trained run's workdir; --tune: the study's")
    parser.add_argument("--dataset-cache-dir", default=None, help="--miou: config.dataset.cache_dir")
    args = parser.parse_args()
    if args.setup_dense:
        setup_peer(args.dense_venv, DENSE_PACKAGES)
        return
    if args.tune:
        if not args.workdir:
            parser.error("--tune needs --workdir")
        os.makedirs(args.workdir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        from benchmarks import crf_tuning  # it imports this module

        crf_tuning.run_tuning(args.workdir, dense_venv=args.dense_venv, tiny=args.tiny,
                              **(crf_tuning.TINY_TUNE if args.tiny else {}))
        return
    python = args.dense_venv / "bin" / "python"
    dense = None
    if python.exists():
        dense = DenseCRF(python)
        print(f"dense CRF: pydensecrf2 {dense.peer.setup['pydensecrf']} ({args.dense_venv})")
    else:
        print(f"dense CRF skipped: no venv at {args.dense_venv} (create it with `python -m benchmarks.crf "
              f"--setup-dense`)")
    load = os.getloadavg()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPU(s), load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    try:
        if args.miou:
            result = miou_table(args.config, args.workdir, args.dataset_cache_dir, dense)
            print("| CRF | val mIoU | change |\n|---|---|---|")
            for name, value in result.items():
                print(f"| {name} | {value:.4f} | {value - result['none']:+.4f} |")
            return
        print(HEADER)
        timing_table(TINY_SIZES if args.tiny else SIZES, [2] if args.tiny else args.iterations,
                     1 if args.tiny else args.repeats, dense)
    finally:
        if dense is not None:
            dense.close()


if __name__ == "__main__":
    main()
