"""``train.py --export_tflite``: TFLite models of the final network, checked against Keras.

``export(model, mode, train_ds, eval_ds, model_dir)`` writes
``export/model_int8.tflite`` and/or ``export/model_float.tflite`` with
[keras_ftprop.deploy.to_tflite][] (int8 calibrated on the first
``REPRESENTATIVE_EXAMPLES`` training images), runs each with the TFLite
interpreter on the evaluation split and reports top-1 agreement with the Keras
model and the accuracy of both.
"""

import os

import numpy as np

from keras_ftprop import deploy

MODES = ("none", "int8", "float", "both")
REPRESENTATIVE_EXAMPLES = 500


def _interpreter(flatbuffer):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT's predecessor, in TensorFlow itself
        from tensorflow.lite import Interpreter
    return Interpreter(model_content=bytes(flatbuffer))


def predict(flatbuffer, images):
    """Logits of a (float-input) TFLite model for a batch of images, in one invoke."""
    interpreter = _interpreter(flatbuffer)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _first_images(ds, count):
    taken, seen = [], 0
    for images, _ in ds:
        taken.append(images.numpy())
        seen += len(taken[-1])
        if seen >= count:
            break
    return np.concatenate(taken)[:count]


def export(model, mode, train_ds, eval_ds, model_dir, log=print, exact_input_staircases=True):
    """Write the TFLite model(s) of ``mode`` to ``model_dir/export``; returns {description: path}
    (``exact_input_staircases``: ``to_tflite``'s)."""
    if mode == "none":
        return {}
    quantizations = ("int8", "float") if mode == "both" else (mode,)
    representative = _first_images(train_ds, REPRESENTATIVE_EXAMPLES)
    batches = [(images.numpy(), labels.numpy()) for images, labels in eval_ds]
    labels = np.concatenate([b[1] for b in batches])
    keras_top1 = np.concatenate([model.predict(b[0], verbose=0).argmax(axis=1) for b in batches])
    files = {}
    for quantize in quantizations:
        path = os.path.join(model_dir, "export", f"model_{quantize}.tflite")
        flatbuffer = deploy.to_tflite(model, representative, quantize=quantize, path=path,
                                      exact_input_staircases=exact_input_staircases)
        tflite_top1 = np.concatenate([predict(flatbuffer, b[0]).argmax(axis=1) for b in batches])
        log(f"TFLite {quantize}: {path}, {len(flatbuffer):,} bytes; top-1 agreement with Keras "
            f"{np.mean(tflite_top1 == keras_top1):.4f} on {len(labels)} eval images; accuracy "
            f"{100 * np.mean(tflite_top1 == labels):.2f}% (Keras {100 * np.mean(keras_top1 == labels):.2f}%)")
        files[f"TFLite {quantize}"] = path
    return files
