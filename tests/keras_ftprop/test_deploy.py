"""Deployment: SavedModel -> float TFLite of every paper network, and keras_ftprop.deploy's int8 export."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from keras_ftprop import BatchNormThreshold, HardThreshold, Staircase, deploy
from keras_ftprop.deploy import export

try:  # LiteRT, the successor of tf.lite.Interpreter
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover
    Interpreter = tf.lite.Interpreter

SMALL_INPUTS = {"convnet4": 32, "convnet8": 32, "alexnet": 64, "resnet18": 32}


@pytest.mark.parametrize("activation", ["step", "staircase"])
@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_tflite_predicts_like_keras(name, activation, tmp_path):
    side = SMALL_INPUTS[name]
    keras.utils.set_random_seed(0)  # a unit within float rounding of a threshold may flip: fix the weights
    model = models.get_model(name, activation=activation, input_shape=(side, side, 3), classes=10)
    images = np.random.default_rng(0).normal(size=(8, side, side, 3)).astype(np.float32)
    # Move the batch-norm statistics away from their initial values so that every layer matters.
    model.predict(images, verbose=0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # BatchNormThreshold too
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.random.default_rng(1).normal(scale=0.1, size=mean.shape).astype(np.float32))
            var.assign(np.random.default_rng(2).uniform(0.5, 2.0, size=var.shape).astype(np.float32))
    expected = model.predict(images, verbose=0)

    export_dir = str(tmp_path / "export")
    model.export(export_dir)
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(export_dir).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner("serving_default")
    (input_name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    got = np.concatenate([next(iter(runner(**{input_name: images[i:i + 1]}).values()))
                          for i in range(len(images))])
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------
# keras_ftprop.deploy: int8 export with exact activation codes
# --------------------------------------------------------------------------

ALLOWED_INT8_TENSORS = {"INT8", "INT32", "BOOL"}


def exact_code(value, scale, zero_point):
    """The int8 code of ``value`` if it is one (|code - integer| < 1e-4), else None."""
    code = value / scale + zero_point
    return int(round(code)) if abs(code - round(code)) < 1e-4 and -128 <= round(code) <= 127 else None


@pytest.mark.parametrize("steps, low, high", [(1, -1.0, 1.0), (1, 0.0, 1.0), (3, 0.0, 1.0), (5, 0.0, 1.0),
                                              (7, 0.0, 1.0), (4, -1.0, 1.0), (3, 0.0, 6.0), (2, 0.5, 1.0)])
def test_exact_output_range_codes_every_level(steps, low, high):
    minimum, maximum, scale, zero_point = deploy.exact_output_range(low, high, steps)
    # The converter's (and TF fake quant's) rule: scale = (max - min) / 255, zero point = -128 - min / scale.
    assert scale == pytest.approx((maximum - minimum) / 255, rel=1e-9)
    assert -128 - minimum / scale == pytest.approx(zero_point, abs=1e-6)
    assert minimum <= 0.0 <= maximum
    levels = [low + (high - low) * k / steps for k in range(steps + 1)]
    codes = [exact_code(level, scale, zero_point) for level in levels]
    assert None not in codes, codes
    assert len(set(codes)) == len(levels)


@pytest.mark.parametrize("steps", range(1, 9))
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-1.0, 1.0), (0.0, 6.0), (0.5, 1.0)])
def test_staircase_thresholds_are_codes_of_the_pinned_input_grid(steps, low, high):
    """Every threshold a + k (b - a) / (n - 1) of y = clip(ceil((n - 1)(x - a) / (b - a)), 0, n) (b - a) / n + a
    an exact int8 code of the staircase's pinned input range, with a code to spare beyond each end."""
    rewrite = deploy.REWRITES[Staircase]
    export_layer = rewrite(Staircase(steps=steps, low=low, high=high), True, 1.0)
    minimum, maximum = export_layer.input_range
    scale = (maximum - minimum) / 255
    zero_point = -128 - minimum / scale
    thresholds = [low] if steps == 1 else [low + (high - low) * k / (steps - 1) for k in range(steps)]
    codes = [exact_code(t, scale, zero_point) for t in thresholds]
    assert None not in codes, (codes, scale, zero_point)
    assert min(codes) >= -127 and max(codes) <= 126
    # The compares are the layer's: y(t_j) is level j (x > t is strict), one code above it level j + 1.
    x = np.array([[(c - zero_point) * scale, (c + 1 - zero_point) * scale] for c in codes], np.float32)
    levels = [low + (high - low) * k / steps for k in range(steps + 1)]
    expected = [[levels[j], levels[j + 1]] for j in range(len(codes))]
    np.testing.assert_allclose(np.asarray(export_layer(x)), expected, rtol=0, atol=1e-6)


def test_exact_output_range_of_the_documented_cases():
    assert deploy.exact_output_range(-1.0, 1.0, 1)[2:] == pytest.approx((1 / 127, 0))
    assert deploy.exact_output_range(0.0, 1.0, 3)[2:] == pytest.approx((1 / 255, -128))
    assert deploy.exact_output_range(0.0, 1.0, 5)[2:] == pytest.approx((1 / 255, -128))
    assert deploy.exact_output_range(0.0, 1.0, 7)[2:] == pytest.approx((1 / 252, -126))


def threshold_network(seed=0, staircase_steps=(3, 7)):
    """conv -> BN -> step -> pool -> conv -> staircase(n1) -> conv -> staircase(n2) -> dense -> step(0/1) -> dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = HardThreshold(name="act1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = Staircase(steps=staircase_steps[0], name="act2")(x)
    x = keras.layers.Conv2D(16, 3, name="conv3")(x)
    x = Staircase(steps=staircase_steps[1], name="act3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, name="fc1")(x)
    x = HardThreshold(zero_one=True, name="act4")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    bn = model.get_layer("conv1_bn")
    bn.moving_mean.assign(rng.normal(scale=0.1, size=16).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=16).astype(np.float32))
    bn.gamma.assign(rng.choice([-1.0, 1.0], size=16).astype(np.float32) * rng.uniform(0.5, 2, size=16))
    # Scale conv2/conv3 so that their outputs spread over the staircase's [0, 1].
    for name in ("conv2", "conv3"):
        layer = model.get_layer(name)
        layer.kernel.assign(layer.kernel * 0.3)
        layer.bias.assign(np.full(layer.bias.shape, 0.4, np.float32))
    return model


def layer_outputs(model, names, images):
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    return [np.asarray(o) for o in probe.predict(images, verbose=0)]


# 3 and 7 steps (the CIFAR nets' 2-bit staircase, a 3-bit one), 5 (ResNet-18's) and an even size.
@pytest.mark.parametrize("quantize, staircase_steps", [("int8", (3, 7)), ("float", (3, 7)), ("int8", (5, 6))])
def test_every_activation_is_an_exact_code_and_matches_keras(quantize, staircase_steps):
    model = threshold_network(staircase_steps=staircase_steps)
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(64, 12, 12, 3)).astype(np.float32)
    images = rng.normal(size=(32, 12, 12, 3)).astype(np.float32)
    weights = model.get_weights()
    flatbuffer = deploy.to_tflite(model, calibration, quantize=quantize)
    for before, after in zip(weights, model.get_weights()):  # the rescaling happens in the export's copy
        np.testing.assert_array_equal(before, after)
    report = flatbuffer.report
    names = ["act1", "act2", "act3", "act4"]
    assert sorted(report.rewritten) == names
    assert report.folded == {"conv1_bn": "conv1"}
    n2, n3 = staircase_steps
    levels = {"act1": [-1.0, 1.0], "act2": [k / n2 for k in range(n2 + 1)], "act3": [k / n3 for k in range(n3 + 1)],
              "act4": [0.0, 1.0]}

    interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    by_name = {t["name"]: t for t in interpreter.get_tensor_details()}
    (inp,) = interpreter.get_input_details()
    got = {name: ([], []) for name in names}
    for i in range(len(images)):
        interpreter.set_tensor(inp["index"], images[i:i + 1])
        interpreter.invoke()
        for name in names:
            for tensor, values in zip(report.activation_tensors[name], got[name]):
                if tensor is None:  # a fused step: its pre-activation is the int32 accumulator, not a tensor
                    continue
                detail = by_name[tensor]
                value = interpreter.get_tensor(detail["index"])
                if quantize == "int8":
                    assert value.dtype == np.int8
                    scale, zero_point = detail["quantization"]
                    value = (value.astype(np.float64) - zero_point) * scale  # decode
                values.append(value)
    expected = layer_outputs(model, names, images)
    for name, keras_value in zip(names, expected):
        layer = model.get_layer(name)
        pre_activation, decoded = (np.concatenate(values) if values else None for values in got[name])
        # Every output is a level, exactly (no rounding), and the int8 level code:
        on_a_level = np.isclose(decoded[..., None], np.array(levels[name]), rtol=0, atol=1e-6).any(-1)
        assert on_a_level.all(), name
        if quantize == "int8":
            scale, zero_point = by_name[report.activation_tensors[name][1]]["quantization"]
            assert all(exact_code(level, scale, zero_point) is not None for level in levels[name]), name
        # The thresholds are the layer's, unit by unit, on the pre-activation the model computed
        # (a fused step's exactness: tests/keras_ftprop/test_fused_thresholds.py).
        if name in report.fused:
            assert pre_activation is None and report.activation_tensors[name][0] is None
        else:
            np.testing.assert_allclose(decoded, layer(pre_activation.astype(np.float32)), rtol=0, atol=1e-6)
        # Against Keras end to end: float TFLite differs only in float summation order; int8 where rounding
        # of the input and the weights crosses a threshold, and later layers inherit upstream differences.
        same = np.isclose(decoded, keras_value, rtol=0, atol=1e-6).mean()
        assert same >= (0.999 if quantize == "float" else 0.99 if name == "act1" else 0.9), (name, same)


def test_int8_model_computes_in_integers_only():
    model = models.get_model("convnet8", activation="step", input_shape=(32, 32, 3), classes=10)
    assert any(isinstance(layer, BatchNormThreshold) for layer in model.layers)  # the paper's default
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8")
    graph = deploy.inspect_tflite(flatbuffer)
    boundary = {t["index"] for t in graph["inputs"] + graph["outputs"]}
    names = collections.Counter(op["op"] for op in graph["ops"])
    assert names["QUANTIZE"] == 1 and names["DEQUANTIZE"] == 1  # float input and output only
    assert not names["MUL"] and not names["ADD"]  # every batch norm folded into its convolution
    for op in graph["ops"]:
        assert op["op"] in {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "MAX_POOL_2D", "GREATER", "SELECT_V2",
                            "DEPTHWISE_CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SHAPE", "STRIDED_SLICE",
                            "PACK"}, op["op"]
        if op["op"] in ("QUANTIZE", "DEQUANTIZE"):
            assert {t["index"] for t in op["inputs"] + op["outputs"]} & boundary
            continue
        for tensor in op["inputs"] + op["outputs"]:
            assert tensor["dtype"] in ALLOWED_INT8_TENSORS, (op["op"], tensor)
    assert flatbuffer.report.folded == {f"conv{i}_bn": f"conv{i}" for i in range(1, 7)}
    assert flatbuffer.report.size_bytes == len(flatbuffer)
    # conv0 reads the image: a 1x1 depthwise requantization; the six after it are their convolutions'
    assert flatbuffer.report.ops[("DEPTHWISE_CONV_2D", "INT8")] == 1
    assert not any(op == "SELECT_V2" for op, _ in flatbuffer.report.ops)
    assert flatbuffer.report.fused == {f"conv{i}_act": f"conv{i}" for i in range(1, 7)}
    assert list(flatbuffer.report.unfused) == ["conv0_act"]
    unfused = deploy.to_tflite(model, images, quantize="int8", fuse_thresholds=False)
    assert sum(count for (op, _), count in unfused.report.ops.items() if op == "SELECT_V2") == 7

    int8_io = deploy.to_tflite(model, images, quantize="int8", io_dtype="int8")
    graph = deploy.inspect_tflite(int8_io)
    assert [t["dtype"] for t in graph["inputs"] + graph["outputs"]] == ["INT8", "INT8"]
    assert not any(op["op"] in ("QUANTIZE", "DEQUANTIZE") for op in graph["ops"])


def test_the_report_names_the_ops_each_threshold_became():
    """A Dense-only network's thresholds (2-D inputs) stay compares and selects, and the report says so; a
    convolution's unfused threshold (4-D) is a depthwise requantization, as the report says."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = HardThreshold(name="act0")(keras.layers.Dense(8, name="fc0")(inputs))
    x = Staircase(steps=3, name="act1")(keras.layers.Dense(8, name="fc1")(x))
    dense_only = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    flatbuffer = deploy.to_tflite(dense_only, np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32),
                                  quantize="int8")
    report = flatbuffer.report
    assert not any(op == "DEPTHWISE_CONV_2D" for op, _ in report.ops) and report.ops[("SELECT_V2", "INT8")] == 4
    for name, steps in (("act0", 1), ("act1", 3)):
        assert report.rewritten[name].startswith(f"{steps} threshold(s) as GREATER + SELECT_V2, levels"), name
        assert "depthwise" not in report.rewritten[name]

    model = models.get_model("convnet8", activation="step", input_shape=(32, 32, 3), classes=10)
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
    report = deploy.to_tflite(model, images, quantize="int8").report
    assert report.ops[("DEPTHWISE_CONV_2D", "INT8")] == 1  # conv0_act, the one threshold not fused
    assert report.rewritten["conv0_act"].startswith("1 threshold(s) as a 1x1 depthwise requantization, levels")


def test_trained_digits_network_agrees_with_keras(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = digits.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        HardThreshold(),
        keras.layers.Conv2D(32, 3, use_bias=False),
        keras.layers.BatchNormalization(),
        Staircase(steps=3),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=8, verbose=0)
    path = tmp_path / "digits_int8.tflite"
    flatbuffer = deploy.to_tflite(model, x[:300], quantize="int8", path=str(path))
    assert path.read_bytes() == bytes(flatbuffer)

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    test = x[1400:]
    tflite = []
    for i in range(len(test)):
        interpreter.set_tensor(inp["index"], test[i:i + 1])
        interpreter.invoke()
        tflite.append(interpreter.get_tensor(out["index"]).argmax())
    tflite = np.array(tflite)
    expected = model.predict(test, verbose=0).argmax(axis=1)
    keras_accuracy = np.mean(expected == y[1400:])
    assert keras_accuracy > 0.85  # chance is 0.1
    # Measured 0.990 (4 of 397 differ: input pixels k/16 and weights rounded to int8 move
    # pre-activations across a threshold); the activation codes themselves are exact (above).
    assert np.mean(tflite == expected) >= 0.98
    assert abs(np.mean(tflite == y[1400:]) - keras_accuracy) <= 0.02


@keras.saving.register_keras_serializable(package="tests")
class CumulativeSum(keras.layers.Layer):
    """A layer with no int8 TFLite builtin."""

    def call(self, x):
        return tf.math.cumprod(x, axis=-1)


def test_unsupported_layer_is_named():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="fc")(inputs)
    x = CumulativeSum(name="running_product")(x)
    x = HardThreshold(name="act")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    data = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"layer 'running_product' \(CumulativeSum\)"):
        deploy.to_tflite(model, data, quantize="int8")


def fused_network(fuse, seed=0):
    """conv -> BN -> step -> conv -> BN (+ act1) -> staircase(3) -> dense: batch norms and thresholds fused or not.

    The same names and weights either way: fused, ``conv1_bn`` is a BatchNormThreshold whose activation
    is ``act1``; ``conv2_bn`` takes the residual as [z, r] (unfused: ``Add`` named ``conv2_bn_add``).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 3), name="image")
    z1 = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)

    def bn_threshold(z, bn_name, activation, residual=None):
        if fuse:
            fused = BatchNormThreshold(activation=activation, name=bn_name)
            return fused(z if residual is None else [z, residual])
        x = keras.layers.BatchNormalization(name=bn_name)(z)
        if residual is not None:
            x = keras.layers.Add(name=f"{bn_name}_add")([x, residual])
        return activation(x)

    h1 = bn_threshold(z1, "conv1_bn", HardThreshold(name="act1"))
    z2 = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(h1)
    h2 = bn_threshold(z2, "conv2_bn", Staircase(steps=3, name="act2"), residual=h1)
    x = keras.layers.Flatten(name="flatten")(h2)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    rng = np.random.default_rng(seed)
    for name in ("conv1_bn", "conv2_bn"):  # statistics and affine away from their initial values
        bn = model.get_layer(name)
        bn.moving_mean.assign(rng.normal(scale=0.3, size=8).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype(np.float32))
        bn.gamma.assign(rng.choice([-1.0, 1.0], size=8).astype(np.float32) * rng.uniform(0.5, 2, size=8))
        bn.beta.assign(rng.uniform(0.0, 1.0, size=8).astype(np.float32))
    return model


def decoded_outputs(flatbuffer, names, images):
    """{name: float values of threshold ``name``'s output tensor} and the logits, image by image."""
    interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    by_name = {t["name"]: t for t in interpreter.get_tensor_details()}
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    got, logits = {name: [] for name in names}, []
    for i in range(len(images)):
        interpreter.set_tensor(inp["index"], images[i:i + 1])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(out["index"]))
        for name in names:
            detail = by_name[flatbuffer.report.activation_tensors[name][1]]
            value = interpreter.get_tensor(detail["index"]).astype(np.float64)
            scale, zero_point = detail["quantization"]
            got[name].append((value - zero_point) * scale if scale else value)
    return {name: np.concatenate(values) for name, values in got.items()}, np.concatenate(logits)


@pytest.mark.parametrize("quantize", ["int8", "float"])
def test_fused_batch_norm_threshold_exports_as_its_two_layers(quantize):
    fused, twin = fused_network(fuse=True), fused_network(fuse=False)
    twin.set_weights(fused.get_weights())
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(64, 10, 10, 3)).astype(np.float32)
    images = rng.normal(size=(48, 10, 10, 3)).astype(np.float32)
    flatbuffer = deploy.to_tflite(fused, calibration, quantize=quantize)
    report = flatbuffer.report
    assert "BatchNormThreshold" in report.rewritten["conv1_bn"] and "'act1'" in report.rewritten["conv1_bn"]
    assert sorted(report.activation_tensors) == ["act1", "act2"]
    assert report.folded == {"conv1_bn": "conv1", "conv2_bn": "conv2"}
    if quantize == "int8":
        assert not any(op == "MUL" for op, _ in report.ops)  # batch norms folded
        assert report.ops[("ADD", "INT8")] == 1  # the residual sum
        assert all(dtype in ALLOWED_INT8_TENSORS for (op, dtype) in report.ops if op != "DEQUANTIZE")
    names = ["act1", "act2"]
    got, logits = decoded_outputs(flatbuffer, names, images)
    twin_got, twin_logits = decoded_outputs(deploy.to_tflite(twin, calibration, quantize=quantize), names, images)
    levels = {"act1": [-1.0, 1.0], "act2": [0.0, 1 / 3, 2 / 3, 1.0]}
    for name in names:  # exact levels, the same units as the two-layer network's export
        assert np.isclose(got[name][..., None], levels[name], rtol=0, atol=1e-6).any(-1).all(), name
        np.testing.assert_array_equal(got[name], twin_got[name])
    np.testing.assert_array_equal(logits, twin_logits)
    if quantize == "float":  # and Keras's fused layer, on every image
        expected = fused.predict(images, verbose=0)
        np.testing.assert_array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_shared_layer_is_refused():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    x = HardThreshold(name="act1")(shared(inputs))
    x = HardThreshold(name="act2")(shared(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    with pytest.raises(ValueError, match=r"layer 'act2' takes the output of a layer called more than once"):
        deploy.to_tflite(model, np.zeros((2, 4), np.float32))


def test_threshold_as_activation_argument_is_refused():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation=HardThreshold(), name="fc")(inputs))
    with pytest.raises(ValueError, match=r"layer 'fc' \(Dense\) has a HardThreshold as its activation="):
        deploy.to_tflite(model, np.zeros((2, 6), np.float32))


class SubclassedStep(HardThreshold):
    """A subclass that adds nothing: a threshold to the export, as a HardThreshold is."""


class SubclassedStaircase(Staircase):
    """Likewise for a Staircase."""


def test_a_subclass_of_a_threshold_is_exported_and_copied_as_its_base():
    def network(step, staircase):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3), name="image")
        x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
        x = step(name="act1")(x)
        x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
        x = staircase(steps=3, name="act2")(x)
        x = keras.layers.Conv2D(8, 3, padding="same", name="conv3")(x)
        x = step(name="act3")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))

    base, subclassed = network(HardThreshold, Staircase), network(SubclassedStep, SubclassedStaircase)
    subclassed.set_weights(base.get_weights())
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    images = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    want, got = deploy.to_tflite(base, calibration), deploy.to_tflite(subclassed, calibration)
    assert "act3" in want.report.fused  # fusion, the rewrite and the pinned ranges all see the subclass
    assert (got.report.rewritten, got.report.fused, got.report.unfused, got.report.ops) == (
        want.report.rewritten, want.report.fused, want.report.unfused, want.report.ops)
    names = ["act1", "act2", "act3"]
    (want_units, want_logits), (got_units, got_logits) = (decoded_outputs(f, names, images) for f in (want, got))
    for name in names:
        np.testing.assert_array_equal(got_units[name], want_units[name])
    np.testing.assert_array_equal(got_logits, want_logits)
    copies = [deploy.quantization_aware(model, calibration) for model in (base, subclassed)]
    np.testing.assert_array_equal(*(copy.predict(images, verbose=0) for copy in copies))
    inputs = keras.Input((6,))
    as_activation = keras.Model(inputs, keras.layers.Dense(3, activation=SubclassedStep(), name="fc")(inputs))
    with pytest.raises(ValueError, match=r"layer 'fc' \(Dense\) has a SubclassedStep as its activation="):
        deploy.to_tflite(as_activation, np.zeros((2, 6), np.float32))


def test_bad_arguments():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="quantize must be one of"):
        deploy.to_tflite(model, np.zeros((2, 4), np.float32), quantize="int4")
    with pytest.raises(ValueError, match="needs representative_data"):
        deploy.to_tflite(model, None, quantize="int8")


def test_int8_relu_network_with_pytorch_padded_pool_runs_and_agrees():
    # The stem of ResNet-18 with ReLU: nothing pins the pool's range, so the
    # converter calibrates it; a -inf padding would take the scale to ~1e36
    # (every real value code 0, and XNNPACK refusing the next convolution).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(x)
    x = models.PaddedMaxPooling2D(3, 2, padding=1)(x)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).normal(size=(32, 16, 16, 3)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8")
    interpreter = Interpreter(model_content=bytes(flatbuffer))
    interpreter.allocate_tensors()  # XNNPACK prepares the delegated graph here
    graph = deploy.inspect_tflite(flatbuffer)
    scales = [s for op in graph["ops"] for t in op["inputs"] + op["outputs"] for s in t["scale"] or []]
    assert max(scales) < 1.0  # activations of order 1: no infinity calibrated into a range
    runner = interpreter.get_signature_runner("serving_default")
    (input_name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    got = np.concatenate([next(iter(runner(**{input_name: images[i:i + 1]}).values())) for i in range(32)])
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())


def test_converter_tensor_names_that_no_longer_name_layers_fail_loudly(monkeypatch):
    inspect = deploy.inspect_tflite

    def renamed(flatbuffer):  # as if the converter named its tensors t0, t1, ...
        graph = inspect(flatbuffer)
        for op in graph["ops"]:
            for tensor in op["inputs"] + op["outputs"]:
                tensor["name"] = f"t{tensor['index']}"
        return graph

    monkeypatch.setattr(export, "inspect_tflite", renamed)  # where to_tflite reads the flatbuffer
    model = threshold_network()
    with pytest.raises(RuntimeError, match="no op of the TFLite model has a name of layer"):
        deploy.to_tflite(model, np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype(np.float32))
