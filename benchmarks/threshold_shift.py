"""Does a learnable per-channel shift in front of each threshold help the Bi-Real ResNet-18?

ReActNet's RSign decides h(x - a_c) with a learnable a_c per channel instead of h(x). This trains
``models.bireal_resnet18`` both ways (the same seeds, data order and initial weights but for a_c = 0)
and prints the final test top-1 per seed, the means and the paired differences:

    python benchmarks/threshold_shift.py --dataset digits --epochs 5 --seeds 3

The shift's gradient is minus the threshold's input gradient summed over the batch and the positions:
under FTPROP that is the target loss's, under SSTE the straight-through one. The models keep no shift
unless this shows it is worth its layers (``docs/models.md`` states the measurement).
"""

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from keras_ftprop import HardThreshold, Staircase  # noqa: E402
from training import data  # noqa: E402


class ShiftedThreshold(keras.layers.Layer):
    """h(x - a), a a trainable per-channel shift (zeros at the start) and h the wrapped threshold."""

    def __init__(self, threshold, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold

    def build(self, input_shape):
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")
        self.threshold.build(input_shape)

    def call(self, inputs):
        return self.threshold(inputs - self.shift)


def activation(units, target_loss, shifted):
    """A factory of fresh threshold layers, shifted or not."""
    def new():
        threshold = HardThreshold(target_loss=target_loss) if units == "step" else Staircase(target_loss=target_loss)
        return ShiftedThreshold(threshold) if shifted else threshold
    return new


def train(args, seed, shifted):
    """Final test top-1 of one run."""
    keras.utils.set_random_seed(seed)
    train_ds, eval_ds, info = data.load(args.dataset, batch_size=args.batch_size, seed=seed,
                                        image_size=args.image_size)
    if args.train_examples:
        train_ds = train_ds.unbatch().take(args.train_examples).batch(args.batch_size, drop_remainder=True)
    model = models.get_model("bireal_resnet18", activation=activation(args.units, args.target_loss, shifted),
                             input_shape=tuple(info.image_shape), classes=info.num_classes, stem=args.stem)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train_ds, epochs=args.epochs, verbose=0)
    return model.evaluate(eval_ds, verbose=0, return_dict=True)["accuracy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="train.py --dataset (default digits)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--units", choices=("step", "staircase"), default="step")
    parser.add_argument("--target_loss", default="soft_hinge")
    parser.add_argument("--stem", default="imagenet", help="the builder's stem (the study's: imagenet)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam (the digits recipe's)")
    parser.add_argument("--train_examples", type=int, default=0, help="train on the first N only (0: all)")
    args = parser.parse_args(argv)

    rows = []
    for seed in range(1, args.seeds + 1):
        plain, shifted = train(args, seed, False), train(args, seed, True)
        rows.append((seed, plain, shifted))
        print(f"seed {seed}: h(x) {100 * plain:.2f}%, h(x - a) {100 * shifted:.2f}%", flush=True)
    plain, shifted = np.array([r[1] for r in rows]) * 100, np.array([r[2] for r in rows]) * 100
    spread = statistics.stdev(plain) if len(plain) > 1 else float("nan")
    diffs = shifted - plain
    print(f"{args.units} {args.target_loss}, {args.dataset}, {args.epochs} epochs, {len(rows)} seeds: "
          f"h(x) {plain.mean():.2f}% (std {spread:.2f}), h(x - a) {shifted.mean():.2f}%; "
          f"paired difference {diffs.mean():+.2f} (per seed {', '.join(f'{d:+.2f}' for d in diffs)})")


if __name__ == "__main__":
    main()
