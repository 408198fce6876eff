"""Predict with an exported SavedModel using TensorFlow alone (keras_ftprop is not imported).

    python examples/serve_saved_model.py EXPORT_DIR INPUTS.npy

Prints one predicted class per input row.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(export_dir, inputs_path):
    served = tf.saved_model.load(export_dir)
    logits = served.serve(tf.constant(np.load(inputs_path), tf.float32))
    assert "keras_ftprop" not in sys.modules
    print("\n".join(str(label) for label in np.argmax(logits.numpy(), axis=1)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
