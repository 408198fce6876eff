"""Step time of model.fit with TargetDiagnostics(every=100) relative to no diagnostics.

An 8-conv step network (``conv_net`` below), XLA-compiled (``--no_jit``: not);
each variant trains one untimed epoch (tracing and compilation), then
``--rounds`` rounds of one timed epoch of ``--steps`` steps per variant,
alternating in one process. Prints the median CPU time (``time.process_time``,
all threads) and wall time per step, and the median of the per-round ratios.

Both variants run the same compiled training step: the statistics sit behind a
``tf.cond`` on a variable in the threshold layers' backward, which the callback
turns on for a logged step (see ``keras_ftprop.diagnostics``).

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
    """CPU and wall seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.cpu, self.wall = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.process_time(), time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.cpu.append(time.process_time() - self._start[0])
        self.wall.append(time.perf_counter() - self._start[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed epoch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--no_jit", action="store_true", help="without XLA")
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
                      jit_compile=not args.no_jit)
        models[name] = model

    def callbacks(name):
        if name == "off":
            return []
        return [TargetDiagnostics(every=args.every, log_dir=log_dir, probe_data=x)]

    cpu, wall = ({name: [] for name in models} for _ in range(2))
    for round_ in range(args.rounds + 1):  # round 0: tracing and compilation, dropped
        for name, model in models.items():  # alternating, so that slow drift hits both
            epoch_times = EpochTimes()
            model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0,
                      callbacks=callbacks(name) + [epoch_times])
            if round_:
                cpu[name].append(epoch_times.cpu[0] / args.steps)
                wall[name].append(epoch_times.wall[0] / args.steps)

    print(f"8-conv step net, batch {args.batch}, {'no XLA' if args.no_jit else 'XLA'}, "
          f"TargetDiagnostics(every={args.every}), {args.rounds} rounds x {args.steps} steps, medians")
    print("| diagnostics | CPU ms/step | ratio | wall ms/step | ratio |\n|---|---|---|---|---|")
    for name in models:
        ratio = {kind: statistics.median(a / b for a, b in zip(times[name], times["off"]))
                 for kind, times in (("cpu", cpu), ("wall", wall))}
        print(f"| {name} | {1000 * statistics.median(cpu[name]):.1f} | {ratio['cpu']:.3f} "
              f"| {1000 * statistics.median(wall[name]):.1f} | {ratio['wall']:.3f} |")


if __name__ == "__main__":
    main()
