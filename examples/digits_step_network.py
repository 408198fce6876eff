"""Train a small network of step units on scikit-learn's digits, export it, serve it elsewhere.

    python examples/digits_step_network.py [--export-dir DIR] [--epochs 30]

1. Trains 64 -> Dense 256 -> HardThreshold -> Dense 256 -> HardThreshold -> Dense 10
   with model.fit (FTP-SH targets; Adam).
2. Exports a SavedModel with ``model.export``.
3. Starts ``serve_saved_model.py`` in a separate Python process, which loads the
   SavedModel with plain TensorFlow (no keras_ftprop) and predicts the test set;
   compares its predictions with the Keras model's.
4. Converts the model to a full-integer TFLite model (int8 input, weights, activations
   and output; ``keras_ftprop.deploy.to_tflite``) and serves it the same way with
   ``serve_tflite.py``, which needs only LiteRT (``ai-edge-litert``) and numpy.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_ftprop import HardThreshold, deploy


def build_model():
    return keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(256, name="hidden1"),
            HardThreshold(name="step1"),
            keras.layers.Dense(256, name="hidden2"),
            HardThreshold(name="step2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_step_network",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", default=None, help="where to write the SavedModel (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    keras.utils.set_random_seed(args.seed)
    model = build_model()
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"Keras model: test accuracy {accuracy:.3f} on {len(x_test)} digits")

    export_dir = args.export_dir or os.path.join(tempfile.mkdtemp(), "digits_step_network")
    model.export(export_dir, verbose=False)
    print(f"SavedModel written to {export_dir}")

    inputs_path = os.path.join(os.path.dirname(export_dir) or ".", "digits_test_inputs.npy")
    np.save(inputs_path, x_test)
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_saved_model.py")
    served = subprocess.run(
        [sys.executable, server, export_dir, inputs_path], check=True, capture_output=True, text=True
    ).stdout.split()
    served = np.array([int(label) for label in served])
    expected = model.predict(x_test, verbose=0).argmax(axis=1)
    agreement = np.mean(served == expected)
    print(f"Served in a separate process: test accuracy {np.mean(served == y_test):.3f}, "
          f"agreement with Keras {agreement:.3f}")
    if agreement != 1.0:
        sys.exit("The served predictions differ from the Keras model's.")

    tflite_path = os.path.join(os.path.dirname(export_dir) or ".", "digits_step_network_int8.tflite")
    flatbuffer = deploy.to_tflite(model, x_train, quantize="int8", io_dtype="int8", path=tflite_path)
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_tflite.py")
    served = subprocess.run(
        [sys.executable, server, tflite_path, inputs_path], check=True, capture_output=True, text=True
    ).stdout.split()
    served = np.array([int(label) for label in served])
    print(f"int8 TFLite ({len(flatbuffer):,} bytes) served in a separate process: test accuracy "
          f"{np.mean(served == y_test):.3f}, agreement with Keras {np.mean(served == expected):.3f}")


if __name__ == "__main__":
    main()
