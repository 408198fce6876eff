"""Throughput of the ``folder:`` (JPEG, ImageNet-style) training pipeline.

Generates N synthetic JPEGs (default 512 of 300x400) in a temporary
``folder:`` tree, then measures images/second of

* ``bare``:  list -> read_file -> decode_jpeg (AUTOTUNE) -> prefetch, the
  cheapest possible tf.data pipeline over the same files;
* ``train``: ``training.data.load("folder:...")``'s training pipeline
  (decode, resize shorter side to 256, random crop 224, flip, batch,
  normalize);
* ``eval``:  its evaluation pipeline (resize 256, centre crop 224),

as medians over ``--repeats`` full passes, taken in turns after one warm-up
pass each (files in the page cache for all of them; turns even out load changes), and prints train / bare
(target >= 0.8). Also reports ``load`` (with its one-time validation pass)
and the rate of that pass alone.

Run from the repository root: ``python benchmarks/input_pipeline.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import data  # noqa: E402


def synthetic_image(rng, height, width):
    """A smooth, photo-like uint8 image: random low-frequency waves plus mild noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.002, 0.05, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            image[..., c] += np.sin(fy * yy * 2 * np.pi + fx * xx * 2 * np.pi + phase)
    image = 127.5 + 25.0 * image + rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_tree(root, count, height, width, classes=4, seed=0):
    """root/{train,val}/class_k/*.jpg: ``count`` training and count / 4 val images."""
    rng = np.random.default_rng(seed)
    train_files = []
    for split, per_class in (("train", count // classes), ("val", count // (4 * classes))):
        for k in range(classes):
            folder = os.path.join(root, split, f"class_{k}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                path = os.path.join(folder, f"{i:05d}.jpg")
                encoded = tf.io.encode_jpeg(synthetic_image(rng, height, width), quality=90)
                tf.io.write_file(path, encoded)
                if split == "train":
                    train_files.append(path)
    return train_files


def bare_pipeline(files):
    def decode(path):
        return tf.io.decode_jpeg(tf.io.read_file(path), channels=3)

    ds = tf.data.Dataset.from_tensor_slices(files)
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def one_pass(dataset, batched):
    """(images/s, process CPU ms per image) of one full pass over ``dataset``."""
    count = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for element in dataset:
        count += int(element[0].shape[0]) if batched else 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, 1e3 * cpu / count


def interleaved_medians(pipelines, repeats):
    """{name: (median images/s, median CPU ms per image)}; one warm-up pass each,
    then the pipelines take turns for ``repeats`` rounds, so a change in
    machine load hits all of them alike."""
    runs = {name: [] for name in pipelines}
    for dataset, batched in pipelines.values():
        one_pass(dataset, batched)
    for _ in range(repeats):
        for name, (dataset, batched) in pipelines.items():
            runs[name].append(one_pass(dataset, batched))
    return {name: tuple(statistics.median(column) for column in zip(*values))
            for name, values in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as root:
        files = write_tree(root, args.images, args.height, args.width)
        start = time.perf_counter()
        train, evaluation, info = data.load(f"folder:{root}", batch_size=args.batch_size, seed=0)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        data.readable_files(files)
        validation_rate = len(files) / (time.perf_counter() - start)
        rates = interleaved_medians(
            {"bare": (bare_pipeline(files), False), "train": (train, True),
             "eval": (evaluation, True)}, args.repeats)
        bare, ours, evals = rates["bare"], rates["train"], rates["eval"]

    print(f"{len(files)} training JPEGs {args.height}x{args.width}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats} interleaved passes")
    print(f"load() incl. validation pass: {load_seconds:.2f} s for "
          f"{info.train_examples + info.eval_examples} files; "
          f"validation pass alone: {validation_rate:.0f} files/s")
    for label, (rate, cpu) in (("bare decode pipeline", bare), ("train pipeline", ours),
                               ("eval pipeline", evals)):
        print(f"{label + ':':22s} {rate:8.1f} images/s  {cpu:6.2f} CPU ms/image")
    print(f"ratio train / bare:    {ours[0] / bare[0]:8.2f}  (target >= 0.8); "
          f"CPU-cost ratio bare / train: {bare[1] / ours[1]:.2f}")


if __name__ == "__main__":
    main()
