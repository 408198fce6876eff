"""Step time of model.fit with TargetDiagnostics(every=100) relative to no diagnostics.

An 8-conv step network (``conv_net`` below), XLA-compiled; each
variant trains ``--rounds`` timed epochs of ``--steps`` steps after one
untimed epoch (tracing and compilation), in two alternating passes in one
process. Prints the median step time and the ratio.

    python benchmarks/diagnostics_overhead.py [--rounds 5] [--steps 200] [--batch 16]
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ftprop import HardThreshold  # noqa: E402
from keras_ftprop.callbacks import TargetDiagnostics  # noqa: E402


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


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per pass")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed epoch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=args.batch)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    log_dir = tempfile.mkdtemp()

    models = {}
    for name in ("off", "on"):
        keras.utils.set_random_seed(0)
        model = conv_net(lambda: HardThreshold())
        model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=True)
        models[name] = model

    def callbacks(name):
        if name == "off":
            return []
        return [TargetDiagnostics(every=args.every, log_dir=log_dir, probe_data=x)]

    times = {name: [] for name in models}
    for _ in range(2):  # two passes, off then on, so slow drift hits both
        for name, model in models.items():
            epoch_times = EpochTimes()
            # one fit per pass: the first epoch includes tracing and XLA compilation and is dropped
            model.fit(data, steps_per_epoch=args.steps, epochs=args.rounds + 1, verbose=0,
                      callbacks=callbacks(name) + [epoch_times])
            times[name].extend(t / args.steps for t in epoch_times.seconds[1:])

    base = statistics.median(times["off"])
    print(f"8-conv step net, batch {args.batch}, XLA, TargetDiagnostics(every={args.every}), "
          f"{args.rounds} rounds x {args.steps} steps, median step time")
    print("| diagnostics | ms/step | ratio |\n|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {1000 * median:.1f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
