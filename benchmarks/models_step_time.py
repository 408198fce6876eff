"""Training throughput of ResNet-18 with ReLU vs hard-threshold activations.

Times one XLA-compiled (``jit_compile=True``) training step of ResNet-18 at
64x64 input, batch 32 (SGD with momentum, cross-entropy on logits), for ReLU,
the step activation (FTP-SH, ``target_loss="soft_hinge"``) and the 5-step
staircase. All models are built and warmed up in one process, then timed in
interleaved rounds (one step of each activation per round) so that load
changes on the machine affect all of them alike; the table reports the median
step time (and the fastest, less sensitive to other load on the machine),
images per second and the throughput relative to ReLU (target:
hard-threshold variants >= 0.90).

Run from the repository root::

    python benchmarks/models_step_time.py [--rounds 30] [--batch-size 32]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models import get_model  # noqa: E402

VARIANTS = {
    "relu": dict(activation="relu"),
    "step (soft_hinge)": dict(activation="step", target_loss="soft_hinge"),
    "staircase (5 steps)": dict(activation="staircase", steps=5),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per model after compilation")
    parser.add_argument("--rounds", type=int, default=30,
                        help="timed steps per model (interleaved)")
    parser.add_argument("--no-jit", action="store_true",
                        help="plain tf.function instead of XLA")
    return parser.parse_args()


def build_trainer(variant, args):
    keras.utils.set_random_seed(0)
    model = get_model(
        "resnet18",
        input_shape=(args.image_size, args.image_size, 3),
        classes=args.classes,
        **variant,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=not args.no_jit,
    )
    return model


def main():
    args = parse_args()
    rng = np.random.default_rng(0)
    images = rng.standard_normal(
        (args.batch_size, args.image_size, args.image_size, 3)
    ).astype("float32")
    labels = rng.integers(0, args.classes, size=(args.batch_size,))

    trainers = {}
    for label, variant in VARIANTS.items():
        start = time.perf_counter()
        trainers[label] = build_trainer(variant, args)
        for _ in range(1 + args.warmup):  # the first call compiles
            trainers[label].train_on_batch(images, labels)
        print(f"{label}: built, compiled and warmed up in "
              f"{time.perf_counter() - start:.1f} s", flush=True)

    step_times = {label: [] for label in trainers}
    for _ in range(args.rounds):
        for label, model in trainers.items():
            start = time.perf_counter()
            loss = model.train_on_batch(images, labels)
            float(np.asarray(loss))  # make sure the step has finished
            step_times[label].append(time.perf_counter() - start)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nResNet-18, {args.image_size}x{args.image_size} input, batch "
          f"{args.batch_size}, {args.classes} classes, "
          f"jit_compile={not args.no_jit}, median of {args.rounds} steps, "
          f"{os.cpu_count()} CPUs, load average (1 min) {load:.2f}\n")
    relu_median = statistics.median(step_times["relu"])
    print("| activation | median step (ms) | fastest step (ms) | images/s "
          "(median) | vs ReLU |")
    print("|---|---:|---:|---:|---:|")
    for label, times in step_times.items():
        median = statistics.median(times)
        print(f"| {label} | {1000 * median:.1f} | {1000 * min(times):.1f} | "
              f"{args.batch_size / median:.1f} | {relu_median / median:.3f} |")


if __name__ == "__main__":
    main()
