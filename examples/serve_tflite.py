"""Predict with a TFLite model using LiteRT alone (neither keras_ftprop nor Keras is imported).

    python examples/serve_tflite.py MODEL.tflite INPUTS.npy

Quantizes float inputs itself when the model takes int8 (q = round(x / scale) + zero_point),
runs the whole batch in one invoke (one invoke per row if the model's batch size is fixed, as an
int8-input export's is: 1) and prints one predicted class per input row.
"""

import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main(model_path, inputs_path):
    x = np.load(inputs_path).astype(np.float32)
    interpreter = Interpreter(model_path=model_path, num_threads=1)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    batch = len(x) if inp["shape_signature"][0] == -1 else int(inp["shape"][0])
    interpreter.resize_tensor_input(inp["index"], [batch, *x.shape[1:]])
    interpreter.allocate_tensors()
    if inp["dtype"] == np.int8:
        scale, zero_point = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    logits = []
    for start in range(0, len(x), batch):
        interpreter.set_tensor(inp["index"], x[start:start + batch])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(out["index"]))
    logits = np.concatenate(logits)  # int8 logits keep their order: argmax needs no dequantizing
    assert "keras_ftprop" not in sys.modules and "keras" not in sys.modules
    print("\n".join(str(label) for label in np.argmax(logits, axis=1)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
