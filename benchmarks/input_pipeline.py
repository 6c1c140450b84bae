"""Images/s of the tf.data training and evaluation pipelines against the number of host threads.

    python -m benchmarks.input_pipeline                              # VOC-sized data, threads 1 2 4 8
    python -m benchmarks.input_pipeline --threads 1 2 --batches 10 --step-rate 12.5

The data is the built-in synthetic dataset written at Pascal VOC's image size (500x375 JPEGs with palette PNG
labels, generated once into --root), read by the VOC reader exactly as training reads VOC: the training stream
(decode, random scale 0.5-2, normalise, pad, 321x321 crop, flip, batch 8) and the evaluation stream (decode,
normalise, pad to 512x512, batch 8). Each thread count runs the pipeline with that many tf.data threads
(`num_parallel_calls` and a private thread pool of that size), times `--batches` batches after 3 warm-up batches,
and prints images/s. With `--step-rate` (training images/s of a step, e.g. from benchmarks/peer.py on a GPU) the
table adds pipeline / step: the pipeline must stay ahead of the step (>= 2x leaves room for hosts busier than
this one). Thread counts above the machine's cores cannot scale: the header states the core count.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import tensorflow as tf

from semeda_jax.data import pipeline
from semeda_jax.data.synthetic import write_synthetic_voc
from semeda_jax.data.voc import VOCSegmentation

VOC_IMAGE_SIZE = (375, 500)  # H, W of a typical Pascal VOC image


def with_threads(dataset: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def images_per_second(dataset: tf.data.Dataset, batches: int, batch_size: int) -> float:
    iterator = dataset.as_numpy_iterator()
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("~/.cache/semeda_jax/pipeline_benchmark").expanduser())
    parser.add_argument("--images", type=int, default=200, help="images per split of the generated data")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--step-rate", type=float, default=None, help="a train step's images/s to compare with")
    args = parser.parse_args()
    root = write_synthetic_voc(args.root, num_train=args.images, num_val=args.images, image_size=VOC_IMAGE_SIZE,
                               num_classes=21)
    readers = {split: VOCSegmentation(str(root), split, num_classes=21) for split in ("train", "val")}
    print(f"{os.cpu_count()} CPU core(s); {args.images} images of {VOC_IMAGE_SIZE[1]}x{VOC_IMAGE_SIZE[0]} per "
          f"split in {root}; batch {args.batch_size}")
    compare = f"{'train / step':>14}" if args.step_rate else ""
    print(f"{'threads':>8}{'train img/s':>13}{'eval img/s':>12}{compare}")
    for threads in args.threads:
        train = pipeline.train_dataset(readers["train"], crop_size=(321, 321), batch_size=args.batch_size,
                                       scale_range=(0.5, 2.0), seed=0, num_parallel_calls=threads)
        evaluation = pipeline.eval_dataset(readers["val"], pad_size=(512, 512), batch_size=args.batch_size,
                                           num_parallel_calls=threads).repeat()
        train_rate = images_per_second(with_threads(train, threads), args.batches, args.batch_size)
        eval_rate = images_per_second(with_threads(evaluation, threads), args.batches, args.batch_size)
        ratio = f"{train_rate / args.step_rate:>14.2f}" if args.step_rate else ""
        print(f"{threads:>8}{train_rate:>13.1f}{eval_rate:>12.1f}{ratio}", flush=True)


if __name__ == "__main__":
    main()
