"""Train a step network for a microcontroller on scikit-learn's digits, export it, run it under TFLite Micro.

    python examples/microcontroller.py [--epochs 15] [--qat-epochs 2] [--out-dir DIR]

1. Trains ``models.micro_convnet`` (four 3x3 convolutions with batch norm and step units, FTP-SH) on the
   digits, upsampled to 32x32 grey images.
2. Fine-tunes its quantization-aware copy (``deploy.quantization_aware``): the int8 rounding in the loop.
3. Exports a full-integer TFLite model (int8 input and output) and writes it as a C array
   (``DIR/model_data.h``, ``DIR/model_data.cc``) for a TFLite Micro firmware.
4. Runs the test split under TFLite Micro's reference kernels (``keras_ftprop.micro.run``) and on LiteRT
   (XNNPACK), and prints the export report (flash bytes, TFLite Micro arena, ops) and the accuracies.

Run from the repository root (``models`` is not installed).
"""

import argparse
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_ftprop import deploy, micro
from models import get_model

SIDE = 32


def digits_32x32():
    """(x_train, x_test, y_train, y_test): digits in [0, 1], bilinearly upsampled from 8x8 to 32x32x1."""
    digits = load_digits()
    images = tf.image.resize(digits.images[..., None] / 16.0, (SIDE, SIDE)).numpy().astype(np.float32)
    return train_test_split(images, digits.target, test_size=0.25, random_state=0, stratify=digits.target)


def compiled(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def int8_codes(flatbuffer, images):
    """The images as the int8 model's input codes (its input scale and zero point)."""
    details = Interpreter(model_content=bytes(flatbuffer)).get_input_details()[0]
    scale, zero_point = details["quantization"]
    return np.clip(np.round(images / scale) + zero_point, -128, 127).astype(np.int8)


def litert_logits(flatbuffer, codes):
    interpreter = Interpreter(model_content=bytes(flatbuffer))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    logits = []
    for example in codes:
        interpreter.set_tensor(inp, example[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(out)[0])
    return np.array(logits)


def measure(epochs=15, qat_epochs=2, out_dir=None):
    """Steps 1-4: {"flatbuffer", "report": its export report (flash and arena bytes, ops), "c_source": the .cc path,
    "test_images": count, "accuracy": {model: test top-1}, "agreement": {runtime: top-1 agreement with the
    quantization-aware copy}, "identical_logits": fraction of images whose int8 logits TFLite Micro and
    XNNPACK agree on}."""
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = digits_32x32()
    model = compiled(get_model("micro_convnet", activation="step", input_shape=(SIDE, SIDE, 1), classes=10), 1e-3)
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    float_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

    qat = compiled(deploy.quantization_aware(model, x_train[:500]), 1e-4)
    qat.fit(x_train, y_train, batch_size=32, epochs=qat_epochs, verbose=0)
    qat_top1 = qat.predict(x_test, verbose=0).argmax(1)

    flatbuffer = deploy.to_tflite(qat, x_train[:500], io_dtype="int8")  # batch 1, int8 in and out
    out_dir = out_dir or tempfile.mkdtemp()
    os.makedirs(out_dir, exist_ok=True)
    _, source = micro.write_c_array(flatbuffer, os.path.join(out_dir, "model_data"))

    codes = int8_codes(flatbuffer, x_test)
    (micro_logits,) = micro.run(flatbuffer, codes)
    xnnpack_logits = litert_logits(flatbuffer, codes)
    micro_top1, xnnpack_top1 = micro_logits.argmax(1), xnnpack_logits.argmax(1)
    return {
        "flatbuffer": flatbuffer, "report": flatbuffer.report, "c_source": source, "test_images": len(codes),
        "accuracy": {"float": float_accuracy, "quantization-aware": np.mean(qat_top1 == y_test),
                     "int8 TFLite Micro": np.mean(micro_top1 == y_test),
                     "int8 XNNPACK": np.mean(xnnpack_top1 == y_test)},
        "agreement": {"TFLite Micro": np.mean(micro_top1 == qat_top1), "XNNPACK": np.mean(xnnpack_top1 == qat_top1)},
        "identical_logits": np.mean(np.all(micro_logits == xnnpack_logits, 1)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--out-dir", default=None, help="where model_data.h/.cc go (default: a temporary one)")
    args = parser.parse_args()

    result = measure(args.epochs, args.qat_epochs, args.out_dir)
    report = result["report"]
    print(report)
    print(f"flash: {report.size_bytes:,} bytes of flatbuffer ({result['c_source']}); "
          f"TFLite Micro arena: {report.arena_bytes:,} bytes")
    print("test accuracy: " + ", ".join(f"{name} {value:.4f}" for name, value in result["accuracy"].items()))
    print("top-1 agreement with the quantization-aware copy: "
          + ", ".join(f"{name} {value:.4f}" for name, value in result["agreement"].items())
          + f"; identical int8 logits TFLite Micro vs XNNPACK: {result['identical_logits']:.4f} "
          f"of {result['test_images']} images")


if __name__ == "__main__":
    main()
