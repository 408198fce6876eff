"""keras_ftprop.micro: the C array of a flatbuffer, TFLite Micro's arena and its outputs."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from keras_ftprop import HardThreshold, deploy, micro


@pytest.fixture(scope="module")
def flatbuffer():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), name="x")
    h = HardThreshold(name="act")(keras.layers.Conv2D(8, 3, padding="same", name="conv")(x))
    model = keras.Model(x, keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D(name="gap")(h)))
    data = np.random.default_rng(0).uniform(0, 1, size=(16, 8, 8, 3)).astype(np.float32)
    return deploy.to_tflite(model, data, quantize="int8", io_dtype="int8")


def parse_c_bytes(source):
    body = source[source.index("{") + 1:source.index("};")]
    return bytes(int(token, 16) for token in body.replace("\n", " ").split(",") if token.strip())


def test_c_array_holds_the_flatbuffer_byte_for_byte(flatbuffer, tmp_path):
    header, source = micro.c_array(flatbuffer, "digits_model")
    data = bytes(flatbuffer)
    assert parse_c_bytes(source) == data
    assert f"const unsigned int digits_model_len = {len(data)};" in source
    assert "alignas(16) const unsigned char digits_model[]" in source
    assert "extern const unsigned char digits_model[];" in header and "#ifndef DIGITS_MODEL_H_" in header
    h_path, cc_path = micro.write_c_array(flatbuffer, str(tmp_path / "model_data"), "digits_model")
    text = open(cc_path).read()
    assert text.startswith('#include "model_data.h"') and parse_c_bytes(text) == data
    assert open(h_path).read() == header


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        micro.c_array(b"12345678")
    with pytest.raises(ValueError, match="variable must be a C identifier"):
        micro.c_array(b"\x00\x00\x00\x00TFL3", "1model")


def test_arena_is_measured_and_tflite_micro_runs_each_example(flatbuffer):
    arena = micro.arena_bytes(flatbuffer)
    assert 8 * 8 * 8 < arena < 64 * 1024  # at least the 8x8x8 int8 activation
    codes = np.random.default_rng(1).integers(-128, 128, size=(5, 8, 8, 3)).astype(np.int8)
    (got,) = micro.run(flatbuffer, codes)
    assert got.shape == (5, 4) and got.dtype == np.int8
    # LiteRT's builtin reference kernels requantize in fixed point as TFLM's do: the same codes.
    interpreter = Interpreter(model_content=bytes(flatbuffer),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    for example in range(5):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], codes[example:example + 1])
        interpreter.invoke()
        want = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        np.testing.assert_array_equal(got[example], want)
    with pytest.raises(ValueError, match="input 0 is float32, the model takes int8"):
        micro.run(flatbuffer, codes.astype(np.float32))
