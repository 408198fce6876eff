"""Predict with an exported SavedModel using TensorFlow alone (keras_ftprop is not imported).

    python examples/serve_saved_model.py EXPORT_DIR IMAGE [IMAGE ...]
    python examples/serve_saved_model.py EXPORT_DIR INPUTS.npy

Image files (JPEG, PNG, BMP, GIF) of any size go as their encoded bytes to the
``serving_bytes`` signature of a ``train.py`` export, which decodes, resizes and
normalizes them as in evaluation; prints one line per image: its class id,
class name (if the data set names its classes) and probability.

A .npy of float32 inputs, preprocessed already, goes to ``serving_float`` (a
``train.py`` export) or to ``serve`` (any ``keras.Model.export``); prints one
predicted class per input row.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def serve_images(served, paths):
    contents = []
    for path in paths:
        with open(path, "rb") as f:
            contents.append(f.read())
    out = served.signatures["serving_bytes"](image_bytes=tf.constant(contents))
    classes = out["classes"].numpy()
    probabilities = out["probabilities"].numpy()
    names = out["class_names"].numpy() if "class_names" in out else None
    for row, (path, label) in enumerate(zip(paths, classes)):
        name = f" {names[row].decode()!r}" if names is not None else ""
        print(f"{path}: class {label}{name}, probability {probabilities[row, label]:.3f}")


def serve_floats(served, inputs_path):
    inputs = tf.constant(np.load(inputs_path), tf.float32)
    if "serving_float" in served.signatures:
        classes = served.signatures["serving_float"](images=inputs)["classes"].numpy()
    else:
        classes = np.argmax(served.serve(inputs).numpy(), axis=1)
    print("\n".join(str(label) for label in classes))


def main(export_dir, paths):
    served = tf.saved_model.load(export_dir)
    if len(paths) == 1 and paths[0].endswith(".npy"):
        serve_floats(served, paths[0])
    else:
        serve_images(served, paths)
    assert "keras_ftprop" not in sys.modules


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
