"""Throughput of the ``folder:`` (JPEG, ImageNet-style) training pipeline, and what it feeds.

Generates ``--images`` synthetic JPEGs (default 1024 of 300x400) in a
temporary ``folder:`` tree, then measures images/second of

* ``bare``:  list -> read_file -> decode_jpeg (AUTOTUNE) -> prefetch, the
  cheapest possible tf.data pipeline over the same files;
* ``train``: ``training.data.load("folder:...")``'s training pipeline
  (decode, crop the window that becomes a random 224 crop of the image
  resized to shorter side 256, flip, resize, normalize, batch);
* ``eval``:  its evaluation pipeline (centre crop),

each consumed in-graph (``Dataset.reduce`` in a ``tf.function``, as ``fit``
consumes it), as medians over ``--repeats`` full passes taken in turns after
one warm-up pass each (files in the page cache for all), and prints
train / bare (target >= 0.8). Then:

* the CPU cost of each stage of the training map on one image, which
  explains the ratio (the baseline only decodes);
* the training throughput of ``--model`` (default ResNet-18, step
  activations, 224x224) on this machine, to tell whether the pipeline or the
  model is the bottleneck;
* the time of ``load`` (with its one-time validation pass).

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


def counter(dataset, batched):
    """A compiled function that runs one full pass over ``dataset`` in-graph and returns the image count.

    Both pipelines are consumed the same way, as ``fit`` consumes its input:
    no Python work per element (which would penalise the unbatched baseline).
    """

    @tf.function
    def count():
        if batched:
            return dataset.reduce(tf.constant(0), lambda n, element: n + tf.shape(element[0])[0])
        return dataset.reduce(tf.constant(0), lambda n, _: n + 1)

    return count


def one_pass(count):
    """(images/s, process CPU ms per image) of one pass of a ``counter``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    images = int(count())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return images / wall, 1e3 * cpu / images


def interleaved_medians(pipelines, repeats):
    """{name: (median images/s, median CPU ms per image)} of {name: (dataset, batched)};
    one warm-up pass each, then the pipelines take turns for ``repeats``
    rounds, so a change in machine load hits all of them alike."""
    counters = {name: counter(dataset, batched) for name, (dataset, batched) in pipelines.items()}
    runs = {name: [] for name in pipelines}
    for count in counters.values():
        one_pass(count)
    for _ in range(repeats):
        for name, count in counters.items():
            runs[name].append(one_pass(count))
    return {name: tuple(statistics.median(column) for column in zip(*values))
            for name, values in runs.items()}


def stage_costs(path, recipe, calls=50, repeats=5):
    """Median process CPU ms per call of each stage of the training map on one file:
    full decode (the baseline's work), decode for the recipe, crop + flip, resize, normalize;
    each net of the cost of calling a trivial ``tf.function`` (measured alike), which a
    map function does not pay per stage."""
    contents = tf.io.read_file(path)
    image = data.decode_shrunk(contents, recipe.resize)
    shape = tf.shape(image)
    top, left, side = data.crop_window(shape[0], shape[1], recipe, tf.constant([0.3, 0.6]))
    window = image[top:top + side, left:left + side]
    resized = tf.image.resize(window, [recipe.size, recipe.size], method="bilinear")
    stages = {
        "decode (full, as the baseline)": lambda: tf.io.decode_jpeg(contents, channels=3),
        "decode (recipe: DCT-shrunk when >= 2x)": lambda: data.decode_shrunk(contents, recipe.resize),
        "crop window + flip": lambda: tf.reverse(image[top:top + side, left:left + side], axis=[1]),
        f"bilinear resize to {recipe.size}x{recipe.size}": lambda: tf.image.resize(
            window, [recipe.size, recipe.size], method="bilinear"),
        "normalize": lambda: data.normalize(resized, recipe.mean, recipe.std, max_value=255.0),
    }
    def cost(stage):
        stage = tf.function(stage)
        stage()
        samples = []
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(calls):
                stage()
            samples.append(1e3 * (time.process_time() - start) / calls)
        return statistics.median(samples)

    overhead = cost(lambda: tf.identity(tf.constant(0)))
    return {name: max(cost(stage) - overhead, 0.0) for name, stage in stages.items()}


def model_images_per_second(model_name, image_size, batch_size, rounds=3):
    """Median training images/s of ``model_name`` (step activations, FTP-SH) on one fixed batch."""
    from benchmarks import activation_overhead

    times = activation_overhead.time_configs(
        model_name, image_size=image_size, batch_size=batch_size, classes=1000, rounds=rounds,
        steps=1, warmup=1, configs=("step-ftp_sh",))
    return batch_size / statistics.median(times["step-ftp_sh"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="resnet18",
                        help="network whose training throughput the pipeline is compared with; none: skip")
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
        recipe = data.large_recipe()
        costs = stage_costs(files[0], recipe)
    bare, ours, evals = rates["bare"], rates["train"], rates["eval"]
    results = {"rates": rates, "stage_costs": costs, "ratio": ours[0] / bare[0]}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(files)} training JPEGs {args.height}x{args.width}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, load average {load:.2f}, median of {args.repeats} interleaved passes")
    print(f"load() incl. validation pass: {load_seconds:.2f} s for "
          f"{info.train_examples + info.eval_examples} files; "
          f"validation pass alone: {validation_rate:.0f} files/s\n")
    print("| pipeline | images/s | CPU ms/image | ratio to bare |\n|---|---:|---:|---:|")
    for label, (rate, cpu) in (("bare decode", bare), ("train (folder:)", ours), ("eval (folder:)", evals)):
        print(f"| {label} | {rate:.1f} | {cpu:.2f} | {rate / bare[0]:.2f} |")
    print(f"\ntrain / bare: {results['ratio']:.2f} (target >= 0.8)\n")
    print("| stage of the training map (one image) | CPU ms, net of call overhead |\n|---|---:|")
    for name, cost in costs.items():
        print(f"| {name} | {cost:.3f} |")
    if args.model != "none":
        side = recipe.size
        model_rate = model_images_per_second(args.model, side, args.batch_size)
        results["model_images_per_second"] = model_rate
        print(f"\n{args.model} training (step, FTP-SH, {side}x{side}, batch {args.batch_size}): "
              f"{model_rate:.1f} images/s; the train pipeline delivers {ours[0]:.1f} images/s, "
              f"{ours[0] / model_rate:.0f}x what the model consumes: the "
              f"{'model' if ours[0] > model_rate else 'input pipeline'} is the bottleneck")
    return results


if __name__ == "__main__":
    main()
