"""Refuses, in one line, a Keras backend other than TensorFlow (imported before Keras loads)."""

import os


def require_tensorflow(backend, where):
    if backend != "tensorflow":
        raise ImportError(f"keras_ftprop needs Keras's TensorFlow backend, but {where} selects "
                          f"{backend!r}: set KERAS_BACKEND=tensorflow")


if "KERAS_BACKEND" in os.environ:  # before Keras would start that backend, or fail to
    require_tensorflow(os.environ["KERAS_BACKEND"], "KERAS_BACKEND")
else:
    import keras

    require_tensorflow(keras.backend.backend(), "the Keras configuration (keras.json)")
