"""Where the inputs of a trained network's threshold units fall, against the thresholds.

For every ``HardThreshold`` and ``Staircase`` layer of each run's final model,
over the first ``--images`` evaluation images, with ``x`` the layer's input,
``x' = (x - a) / (b - a)`` and the centred unit ``u`` (``x`` for a step,
``2 x' - 1`` for a staircase):

    levels       fraction of outputs at each level (step: -1, +1; staircase: 0, 1/n, ..., 1)
    constant     fraction of units (one per feature position) whose output is the same on every image
    in window    fraction inside SSTE's window (|x| <= 1; staircase 0 <= x' <= 1)
    factor       mean of 1 - tanh(u)^2, the soft hinge's backward factor (grad_x = g * factor)
    x quantiles  5%, 50% and 95% of x

A staircase's thresholds sit at fixed values of x (0, 1/2 and 1 for n = 3 on
[0, 1]) while a step's at 0 is scale-invariant, so these numbers tell whether
a network's pre-activations use the staircase's levels. Usage:

    python benchmarks/threshold_inputs.py RUN_DIR [RUN_DIR ...] [--images 2000] [--output table.md]

A run directory is a ``train.py --model_dir`` (``final.keras`` and
``settings.json``); the evaluation data is the run's own data set.
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402

from keras_ftprop import HardThreshold, Staircase  # noqa: E402
from keras_ftprop.layers import leaf_layers  # noqa: E402
from training import data  # noqa: E402


def threshold_layers(model):
    return [layer for layer in leaf_layers(model) if isinstance(layer, (HardThreshold, Staircase))]


def layer_statistics(layer, x):
    """The statistics above for one layer's inputs ``x`` (numpy, first axis = images)."""
    x = x.astype(np.float64)
    if isinstance(layer, Staircase):
        scaled = (x - layer.low) / (layer.high - layer.low)
        unit = 2.0 * scaled - 1.0
        # Level index k of y = k / n: ceil(x' (n - 1)) clipped to [0, n].
        level = np.clip(np.ceil(scaled * (layer.steps - 1)), 0, layer.steps).astype(int)
        level_names = [f"{k}/{layer.steps}" for k in range(layer.steps + 1)]
        in_window = (scaled >= 0) & (scaled <= 1)
    else:
        unit = x
        level = (x > 0).astype(int)
        level_names = ["-1", "+1"]
        in_window = np.abs(x) <= 1
    flat = level.reshape(len(level), -1)
    return {
        "levels": {name: float(np.mean(level == k)) for k, name in enumerate(level_names)},
        "constant": float(np.mean(flat.min(axis=0) == flat.max(axis=0))),
        "in_window": float(np.mean(in_window)),
        "factor": float(np.mean(1.0 - np.tanh(unit) ** 2)),
        "quantiles": [float(q) for q in np.quantile(x, [0.05, 0.5, 0.95])],
    }


def run_statistics(run_dir, images):
    with open(os.path.join(run_dir, "settings.json")) as f:
        settings = json.load(f)
    model = keras.saving.load_model(os.path.join(run_dir, "final.keras"))
    layers = threshold_layers(model)
    if not layers:
        raise SystemExit(f"{run_dir}: the model has no HardThreshold or Staircase layer")
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    _, evaluation, _ = data.load(settings["dataset"], batch_size=250, image_size=settings["image_shape"][0])
    batches = [probe.predict_on_batch(x) for x, _ in evaluation.take(-(-images // 250))]
    out = {}
    for i, layer in enumerate(layers):
        x = np.concatenate([np.asarray(batch[i] if len(layers) > 1 else batch) for batch in batches])[:images]
        out[layer.name] = layer_statistics(layer, x)
    return os.path.basename(os.path.normpath(run_dir)), out


def format_table(results):
    lines = ["| run | layer | output levels | constant units | in SSTE window | soft-hinge factor"
             " | x: 5% / 50% / 95% |",
             "|---|---|---|---|---|---|---|"]
    for run, layers in results:
        for name, s in layers.items():
            levels = " / ".join(f"{100 * v:.0f}" for v in s["levels"].values())
            q = " / ".join(f"{v:.2f}" for v in s["quantiles"])
            lines.append(f"| {run} | {name} | {levels} | {100 * s['constant']:.1f}% | {100 * s['in_window']:.1f}% "
                         f"| {s['factor']:.3f} | {q} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="train.py model directories")
    parser.add_argument("--images", type=int, default=2000, help="evaluation images to look at (default 2000)")
    parser.add_argument("--output", default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    results = [run_statistics(run_dir, args.images) for run_dir in args.runs]
    table = "Output levels in % (step: -1 / +1; staircase: 0 / 1/n / ... / 1)\n\n" + format_table(results)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)
    return results


if __name__ == "__main__":
    main()
