"""Per-layer size of a trained network's weights, to see where weight decay drove them.

For every weight of each saved model (a ``.keras`` file, or a ``train.py
--model_dir`` whose ``final.keras`` is read), the root mean square

    rms(w) = sqrt(mean(w^2))

side by side, one column per model. A step unit after batch norm sees only
the sign of gamma * x_hat + beta, so the loss does not resist a common
shrinking of (gamma, beta), while coupled L2 weight decay always pulls them
to 0; this table shows whether they got there. Usage:

    python benchmarks/weight_norms.py MODEL [MODEL ...] [--output table.md]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402

import keras_ftprop  # noqa: E402, F401  (registers the layers for loading)


def model_path(path):
    """``path`` itself, or the ``final.keras`` of a run directory."""
    if os.path.isdir(path):
        path = os.path.join(path, "final.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model at {path}")
    return path


def weight_rms(model):
    """``{weight path: rms}`` over every weight of ``model``, in model order."""
    return {w.path: float(np.sqrt(np.mean(np.square(np.asarray(w.numpy(), np.float64)))))
            for w in model.weights}


def format_table(names, tables):
    """Markdown: one row per weight (union in first-seen order), one column per model."""
    rows = list(dict.fromkeys(path for table in tables for path in table))
    lines = ["| weight | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for path in rows:
        cells = [f"{t[path]:.3g}" if path in t else "" for t in tables]
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help=".keras files or train.py run directories")
    parser.add_argument("--output", help="also write the table here")
    args = parser.parse_args(argv)
    tables = [weight_rms(keras.saving.load_model(model_path(p), compile=False)) for p in args.models]
    names = [os.path.basename(os.path.normpath(p)) for p in args.models]
    text = format_table(names, tables)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
