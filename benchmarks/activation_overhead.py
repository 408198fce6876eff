"""Training-step time of hard-threshold activations relative to ReLU.

Builds one mid-sized conv net per activation (8 conv layers, 32x32x3 input,
batch 64), compiles its training step with XLA, and times the steps in
interleaved rounds in one process, so that all variants see the same machine
state. Prints the median step time of each variant and its ratio to ReLU.

    python benchmarks/activation_overhead.py [--rounds 7] [--steps 10] [--batch 64] [--no-jit]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ftprop import HardThreshold, Staircase  # noqa: E402

VARIANTS = {
    "relu": keras.layers.ReLU,
    "step (soft_hinge)": lambda: HardThreshold(target_loss="soft_hinge"),
    "step (sste)": lambda: HardThreshold(target_loss="sste"),
    "staircase (soft_hinge)": lambda: Staircase(steps=3, target_loss="soft_hinge"),
}


def conv_net(activation, classes=10):
    """8 conv layers (3x3, 32-32-64-64-128-128-256-256 filters, BN, 2x2 pooling every 2), GAP, dense."""
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i, filters in enumerate([32, 32, 64, 64, 128, 128, 256, 256]):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = activation()(x)
        if i % 2 == 1 and i < 7:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def make_train_step(model, jit_compile):
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="time without XLA")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, size=args.batch))
    steps = {}
    for name, activation in VARIANTS.items():
        keras.utils.set_random_seed(0)
        steps[name] = make_train_step(conv_net(activation), args.jit)
        for _ in range(3):  # compile and warm up
            steps[name](x, y).numpy()

    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step(x, y)
            loss.numpy()
            times[name].append((time.perf_counter() - start) / args.steps)

    base = statistics.median(times["relu"])
    print(f"8-conv net, batch {args.batch}, 32x32x3, jit_compile={args.jit}, "
          f"{args.rounds} rounds x {args.steps} steps, median step time")
    print(f"| activation | ms/step | ratio to ReLU |\n|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {1000 * median:.1f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
