"""keras_ftprop.micro and the microcontroller path of the export: the C array of a flatbuffer, TFLite Micro's
arena and its outputs, the static batch of an int8-input export and the flash, arena and ops its report states."""

import collections
import dataclasses
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from keras_ftprop import HardThreshold, deploy, micro
from keras_ftprop.deploy.report import measured_arena

KERAS_VERSION = tuple(int(part) for part in keras.version().split(".")[:2])
DYNAMIC_BATCH_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}  # what a reshape (Flatten) of a dynamic batch computes with


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), name="x")
    h = HardThreshold(name="act")(keras.layers.Conv2D(8, 3, padding="same", name="conv")(x))
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = HardThreshold(name="act2")(keras.layers.Conv2D(8, 3, padding="same", name="conv2")(h))
    flat = keras.layers.Flatten(name="flatten")(h)
    return keras.Model(x, keras.layers.Dense(4, name="logits")(flat))


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).uniform(0, 1, size=(16, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def flatbuffer(model, data):
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


def op_names(flatbuffer):
    return [op["op_name"] for op in Interpreter(model_content=bytes(flatbuffer))._get_ops_details()]


def litert_outputs(flatbuffer, inputs, resolver):
    """One invoke per example (batch 1), the LiteRT kernels of ``resolver``."""
    interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for example in inputs:
        interpreter.set_tensor(inp["index"], example[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0])
    return np.array(outputs)


def test_int8_io_export_has_a_static_batch_of_one_and_runs_as_the_dynamic_one(model, data, flatbuffer):
    assert not DYNAMIC_BATCH_OPS & set(op_names(flatbuffer))
    interpreter = Interpreter(model_content=bytes(flatbuffer))
    for details in interpreter.get_input_details() + interpreter.get_output_details():
        assert details["shape"][0] == 1 and -1 not in details["shape_signature"], details
        np.testing.assert_array_equal(details["shape"], details["shape_signature"])
    # float input and output keep the dynamic batch (resize_tensor_input serves whole batches): the Flatten's
    # batch is computed at run time there, and inside, the same int8 graph.
    dynamic = deploy.to_tflite(model, data, quantize="int8", io_dtype="float32")
    # (Keras 3.5's Flatten reshapes to -1 instead: nothing computes the batch in its dynamic export either)
    assert DYNAMIC_BATCH_OPS <= set(op_names(dynamic)) or KERAS_VERSION < (3, 6)
    details = Interpreter(model_content=bytes(dynamic)).get_input_details()[0]
    assert details["shape_signature"][0] == -1
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    codes = np.random.default_rng(1).integers(-128, 128, size=(8, 8, 8, 3)).astype(np.int8)
    reals = ((codes.astype(np.float32) - in_zero) * in_scale).astype(np.float32)
    outputs = {}
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_REF):  # XNNPACK, TFLite's reference kernels
        outputs[resolver] = litert_outputs(flatbuffer, codes, resolver)
        before = np.round(litert_outputs(dynamic, reals, resolver) / out_scale) + out_zero
        np.testing.assert_array_equal(outputs[resolver], before.astype(np.int8), err_msg=str(resolver))
    (tflm,) = micro.run(flatbuffer, codes)
    np.testing.assert_array_equal(tflm, outputs[OpResolverType.BUILTIN_REF])


def test_report_states_flash_arena_and_op_counts(flatbuffer):
    report = flatbuffer.report
    assert report.size_bytes == len(bytes(flatbuffer))
    assert report.arena_bytes == micro.arena_bytes(flatbuffer) and report.arena_note == ""
    assert report.op_counts == dict(collections.Counter(op_names(flatbuffer)))
    assert sum(report.ops.values()) == len(op_names(flatbuffer))
    text = str(report)
    assert (f"TFLite int8 model: {len(bytes(flatbuffer)):,} bytes of flash, "
            f"TFLite Micro arena {micro.arena_bytes(flatbuffer):,} bytes") in text
    assert "CONV_2D int8 x2" in text and "MAX_POOL_2D int8 x1" in text


def test_report_says_why_the_arena_is_not_measured(flatbuffer, monkeypatch):
    with pytest.raises(RuntimeError, match="TFLite Micro could not allocate the model.*Failed"):
        micro.arena_bytes(flatbuffer, max_arena=1024)  # (a few hundred bytes crash TFLM)
    monkeypatch.setitem(sys.modules, "tflite_micro.python.tflite_micro", None)  # as if not installed
    with pytest.raises(ImportError, match="tflite-micro"):
        micro.arena_bytes(flatbuffer)
    arena, note = measured_arena(flatbuffer)
    assert arena is None and "tflite-micro package is not installed" in note
    report = dataclasses.replace(flatbuffer.report, arena_bytes=arena, arena_note=note)
    assert "TFLite Micro arena not measured: the tflite-micro package is not installed" in str(report)
