"""keras_ftprop.quantization: quantization-aware copies whose int8 TFLite export computes the same codes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import HardThreshold, Staircase, deploy, quantization
from keras_ftprop.deploy.grids import grid_of
from tests.keras_ftprop.test_deploy import decoded_outputs, fused_network

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover
    Interpreter = tf.lite.Interpreter


def numpy_kernel_codes(kernel):
    """The converter's rule: per output channel s = max|w| / 127, code = round(w / s) (ties away from 0)."""
    flat = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
    scale = np.abs(flat).max(axis=0) / 127
    codes = np.sign(flat) * np.floor(np.abs(flat) / scale + 0.5)
    return codes.reshape(kernel.shape).astype(np.int32), scale


def qat_units(qat, name, data):
    """The copy's output of threshold ``name`` on ``data``."""
    return keras.Model(qat.inputs, qat.get_layer(name).output).predict(data, verbose=0)


def assert_units_agree_off_decisions(qat, names, units, data, relative=1e-5):
    """The int8 model's units equal the copy's except where float32 rounding may decide.

    A unit may differ only where the copy's own output changes within relative * (1 + |x|) of its input x
    (a threshold or a requantization tie: float32 summation and batch-norm folding differ from the int32
    accumulator there, by an ulp that depends on the CPU), or where an earlier unit of the same example
    differed already. Most units must agree outright.
    """
    probe = keras.Model(qat.inputs, [qat.get_layer(name).input for name in names])
    inputs = probe.predict(data, verbose=0)
    inputs = [inputs] if len(names) == 1 else inputs
    upstream = np.zeros(len(data), bool)
    for name, x in zip(names, inputs):
        layer = qat.get_layer(name)
        margin = relative * (1 + np.abs(x))
        expected = np.asarray(layer(x))
        near = np.asarray(layer(x - margin)) != np.asarray(layer(x + margin))
        differ = ~np.isclose(units[name], expected, rtol=0, atol=1e-6)
        excused = near | upstream.reshape((-1,) + (1,) * (x.ndim - 1))
        assert not (differ & ~excused).any(), f"{name}: {(differ & ~excused).sum()} units differ off a decision"
        assert differ.mean() <= 1e-3, name
        upstream |= differ.reshape(len(data), -1).any(axis=1)


def test_quantized_kernel_is_the_converters_rounding_with_a_straight_through_gradient():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 5, 7)).astype(np.float32)
    kernel[..., 2] *= 40.0  # per-channel scales, not one per tensor
    kernel[..., 4] *= 1e-3
    codes, scale = numpy_kernel_codes(kernel)
    assert codes.min() == -127 or codes.max() == 127
    quantized = np.asarray(quantization.quantized_kernel(kernel))
    np.testing.assert_allclose(quantized, codes * scale.astype(np.float32), rtol=1e-6, atol=0)
    got_codes, got_scale = quantization.kernel_codes(kernel)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_allclose(got_scale, scale, rtol=1e-6)
    variable = tf.Variable(kernel)
    upstream = np.random.default_rng(1).normal(size=kernel.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(upstream * quantization.quantized_kernel(variable))
    np.testing.assert_allclose(tape.gradient(loss, variable), upstream, rtol=0, atol=0)


@pytest.mark.parametrize("threshold", [HardThreshold(), Staircase(steps=3), Staircase(steps=5)])
def test_quantized_threshold_compares_the_rounded_input_and_keeps_its_own_gradient(threshold):
    wrapped = quantization.QuantizedThreshold(threshold, max_abs=3.0, scaled=False)
    x = tf.constant(np.random.default_rng(0).uniform(-0.2, 1.2, size=(64, 50)).astype(np.float32))
    low, high = wrapped.input_range
    scale = (high - low) / 255
    # The int8 compare: codes of x (on the input grid) > codes of the thresholds, ties included.
    codes = np.round((np.clip(x.numpy().astype(np.float64), low, high) - low) / scale)
    if isinstance(threshold, HardThreshold):
        thresholds, levels = [0.0], np.array([-1.0, 1.0])
    else:
        n = threshold.steps
        thresholds, levels = [k / (n - 1) for k in range(n)], np.arange(n + 1) / n
    threshold_codes = [(t - low) / scale for t in thresholds]
    assert all(abs(c - round(c)) < 1e-6 for c in threshold_codes)  # thresholds are codes
    assert (codes[..., None] == np.round(threshold_codes)).any()  # ties occur
    want = levels[(codes[..., None] > np.round(threshold_codes)).sum(-1)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = wrapped(x)
        plain = threshold(x)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.mean(got.numpy() != plain.numpy()) > 0  # rounding moved some units (else the test is vacuous)
    np.testing.assert_array_equal(tape.gradient(got, x), tape.gradient(plain, x))


def digits(scale=240 / 255):
    """scikit-learn's digits, 8x8x1 in [0, 15 * 16 / 255]: the 17 grey levels are codes of the input grid."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0 * scale).astype(np.float32).reshape(-1, 8, 8, 1), data.target


def step_network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = HardThreshold(name="act1")(x)
    x = keras.layers.Conv2D(32, 3, use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="conv2_bn")(x)
    x = Staircase(steps=3, name="act2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, name="fc")(x)
    x = HardThreshold(name="act3")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def compile_model(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def negate_channels(model, conv, bn, channels):
    """The same function with gamma < 0 on ``channels``: w -> -w, mean -> -mean, gamma -> -gamma."""
    kernel, (gamma, beta, mean, var) = model.get_layer(conv).kernel, model.get_layer(bn).get_weights()
    sign = np.ones(gamma.shape, np.float32)
    sign[channels] = -1
    kernel.assign(kernel * sign)
    model.get_layer(bn).set_weights([gamma * sign, beta, mean * sign, var])


def conv_and_dense_kernels(flatbuffer):
    """[(int8 codes with the output channel last, per-channel scales)] of the CONV_2D / FULLY_CONNECTED ops."""
    interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    kernels = []
    for op in deploy.inspect_tflite(flatbuffer)["ops"]:
        if op["op"] in ("CONV_2D", "FULLY_CONNECTED"):
            index = op["inputs"][1]["index"]
            codes = interpreter.get_tensor(index)  # (out, h, w, in) or (out, in)
            kernels.append((np.moveaxis(codes, 0, -1).astype(np.int32),
                            details[index]["quantization_parameters"]["scales"]))
    return kernels


@pytest.mark.slow
def test_fine_tuned_copy_is_its_int8_model(tmp_path):
    x, y = digits()
    model = compile_model(step_network(), 3e-3)
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=6, verbose=0)
    negate_channels(model, "conv1", "conv1_bn", [0, 3, 5])  # batch norm folding with gamma < 0
    qat = compile_model(deploy.quantization_aware(model, x[:500]), 3e-4)
    float_accuracy = np.mean(model.predict(x[1400:], verbose=0).argmax(1) == y[1400:])
    qat.fit(x[:1400], y[:1400], batch_size=32, epochs=3, verbose=0)
    qat_accuracy = np.mean(qat.predict(x[1400:], verbose=0).argmax(1) == y[1400:])
    assert qat_accuracy > float_accuracy - 0.02 and qat_accuracy > 0.85

    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))

    flatbuffer = deploy.to_tflite(loaded, x[:500])
    names = ["act1", "act2", "act3"]
    units, logits = decoded_outputs(flatbuffer, names, x)
    expected = qat.predict(x, verbose=0)
    assert np.mean(logits.argmax(1) == expected.argmax(1)) >= 0.999  # all 1,797 digits but at most one
    # act1 and act2 are decided from integer accumulators in the copy (ExactStepConv2D, ExactStaircaseConv2D):
    # every unit is the int8 model's; act3 (after a dense layer) where float32 cannot decide otherwise.
    for name in ("act1", "act2"):
        np.testing.assert_allclose(units[name], qat_units(qat, name, x), rtol=0, atol=1e-6, err_msg=name)
    assert_units_agree_off_decisions(qat, names, units, x)

    # The integer codes: those of the copy's kernels, the sign of a negative batch-norm factor applied.
    # (conv1_bn and conv2_bn are Identities in the copy: the ExactStepConv2D and ExactStaircaseConv2D before
    # them hold the batch norms that the thresholds read.)
    factors = {name: np.sign(qat.get_layer(name).batch_norm.gamma.numpy()) for name in ("conv1", "conv2")}
    kernels = conv_and_dense_kernels(flatbuffer)
    assert len(kernels) == 4
    assert flatbuffer.report.logits.startswith("the same codes")
    for (codes, scales), name in zip(kernels, ["conv1", "conv2", "fc", "logits"]):
        if name == "logits":  # on the exact logits' grids (keras_ftprop.deploy.logits)
            _, _, want, want_scale, _, _ = (np.asarray(w) for w in qat.get_layer(name).logit_weights())
            want = want.astype(np.int32)
        else:
            want, want_scale = numpy_kernel_codes(quantization.quantized_kernel(qat.get_layer(name).kernel).numpy())
        want = want * np.asarray(factors.get(name, 1)).astype(np.int32)
        np.testing.assert_array_equal(codes, want, err_msg=name)
        # Folded layers' scales include |gamma| / sqrt(var + eps). act3 is fused into fc's requantization:
        # every channel of fc has s_w = M s_out / s_in, M = 256 / (m//2 - m//4), m the codes between act2's levels.
        if name == "fc":
            assert flatbuffer.report.fused.get("act3") == "fc" and qat.get_layer("act3").fused
            s_in, m, _ = grid_of(qat.get_layer("act2").threshold)
            s_out = grid_of(qat.get_layer("act3").threshold)[0]
            np.testing.assert_allclose(scales, 256 / (m // 2 - m // 4) * s_out / s_in, rtol=1e-5)
        elif name == "logits":
            np.testing.assert_allclose(scales, want_scale, rtol=1e-6)


def test_saved_and_loaded_copy_predicts_the_same(tmp_path):
    x, _ = digits()
    qat = deploy.quantization_aware(step_network(), x[:64])
    types = {layer.name: type(layer).__name__ for layer in qat.layers}
    # conv1 and its batch norm feed a step decided on the accumulator: one ExactStepConv2D, the norm an identity
    assert types["conv1"] == "ExactStepConv2D" and types["conv1_bn"] == "Identity"
    # conv2 and its batch norm feed a staircase fused after act1's codes: one ExactStaircaseConv2D
    assert types["conv2"] == "ExactStaircaseConv2D" and types["conv2_bn"] == "Identity"
    assert types["fc"] == "QuantizedDense"
    assert types["act1"] == types["act2"] == "QuantizedThreshold"
    assert types["input_quant"] == types["output_quant"] == "FakeQuant"
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert {layer.name: type(layer).__name__ for layer in loaded.layers} == types
    np.testing.assert_array_equal(loaded.predict(x[:100], verbose=0), qat.predict(x[:100], verbose=0))
    assert loaded.get_layer("act1").max_abs == qat.get_layer("act1").max_abs > 0


def test_copy_keeps_the_weights_and_the_original_is_untouched():
    x, _ = digits()
    model = step_network()
    before = [w.copy() for w in model.get_weights()]
    qat = deploy.quantization_aware(model, x[:64])
    for name in ("conv1", "conv1_bn", "fc", "logits"):
        for a, b in zip(model.get_layer(name).get_weights(), qat.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def _one_step_single_and_mirrored(build, x, y):
    single = build()
    single.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        mirrored = build()
    mirrored.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    return single, mirrored


def test_trains_under_mirrored_strategy_as_on_one_device():
    """One SGD step on 2 logical CPUs (conftest) gives the single-device weights."""
    x, y = digits()
    x, y = x[:64].reshape(64, -1), y[:64]

    def build(quantization_aware=True):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((64,))
        h = HardThreshold(name="act")(keras.layers.Dense(16, name="fc")(inputs))
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
        model = deploy.quantization_aware(model, x) if quantization_aware else model
        model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    plain = _one_step_single_and_mirrored(lambda: build(quantization_aware=False), x, y)
    if any(not np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*(m.get_weights() for m in plain))):
        # Seen with Keras 3.5 and 3.6 on TensorFlow 2.16 (max weight difference 0.059), not with Keras 3.15.
        pytest.skip(f"Keras {keras.__version__}'s fit under MirroredStrategy differs from one device for a "
                    "plain model too: nothing to compare the quantization-aware copy against")
    single, mirrored = _one_step_single_and_mirrored(build, x, y)
    build_weights = build().get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(single.get_weights(), build_weights))  # it trained
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_layer_that_cannot_be_made_quantization_aware_is_named():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(inputs)
    x = HardThreshold(name="act")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"layer 'depthwise' \(DepthwiseConv2D\) cannot be made quantization-aware"):
        deploy.quantization_aware(model, np.zeros((4, 8, 8, 2), np.float32))
    with pytest.raises(ValueError, match="needs representative_data"):
        deploy.quantization_aware(model, None)


def test_residual_sum_operands_are_rounded_as_in_the_int8_model():
    model = fused_network(fuse=True)  # conv2_bn is a BatchNormThreshold on [z, act1's output]
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(64, 10, 10, 3)).astype(np.float32)
    images = rng.normal(size=(200, 10, 10, 3)).astype(np.float32)
    qat = deploy.quantization_aware(model, calibration)
    # The batch norm's output is rounded before the sum; act1's output (exact codes) is not.
    assert [layer.name for layer in qat.layers if isinstance(layer, quantization.FakeQuant)] == [
        "input_quant", "conv2_bn_add_in0", "output_quant"]
    flatbuffer = deploy.to_tflite(qat, calibration)
    units, logits = decoded_outputs(flatbuffer, ["act1", "act2"], images)
    keras_logits = qat.predict(images, verbose=0)
    assert_units_agree_off_decisions(qat, ["act1", "act2"], units, images)
    scale = (qat.get_layer("output_quant").maximum - qat.get_layer("output_quant").minimum) / 255
    # The same logit codes up to the last requantization's rounding, which differs between TFLite versions:
    # at most one code apart (with TensorFlow 2.16's, 8% of these logits are).
    assert np.all(np.abs(logits - keras_logits) < 1.5 * scale)
    assert np.mean(logits.argmax(1) == keras_logits.argmax(1)) == 1.0


@pytest.mark.parametrize("layer", [
    quantization.FakeQuant(-1.0, 1.0, name="quant"), quantization.QuantizedConv2D(4, 3, name="conv"),
    quantization.QuantizedDense(3, name="fc"),
    quantization.QuantizedThreshold(Staircase(steps=3, name="act_unit"), 2.0, scaled=False, name="act")],
    ids=["FakeQuant", "QuantizedConv2D", "QuantizedDense", "QuantizedThreshold"])
def test_layers_saved_by_an_earlier_layout_still_load(layer):
    """A .keras file names each layer by its registered name (``keras_ftprop>FakeQuant``) and by the module that
    defined it, which was keras_ftprop.quantization before the copy's layers moved into keras_ftprop.deploy."""
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == f"keras_ftprop>{type(layer).__name__}"
    loaded = keras.saving.deserialize_keras_object({**config, "module": "keras_ftprop.quantization"})
    assert type(loaded) is type(layer) and loaded.get_config() == layer.get_config()


def test_copy_logits_are_codes_of_their_calibrated_range_as_in_the_int8_model():
    """The copy's last rounding: logits y on the 256 codes of [min(0, lowest), max(0, highest)] of the model's
    logits over the representative data, nudged so that 0 is a code (TensorFlow's rule); the int8 model's."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    h = HardThreshold(name="act0")(keras.layers.Dense(16, name="fc0")(x))
    h = HardThreshold(name="act1")(keras.layers.Dense(16, name="fc1")(h))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(h))
    model.get_layer("logits").bias.assign([0.5, 0.2, -0.3])  # a range that is not symmetric about 0
    data = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    qat = deploy.quantization_aware(model, data)

    calibrated = model.predict(data, verbose=0).astype(np.float64)
    low, high = min(calibrated.min(), 0.0), max(calibrated.max(), 0.0)
    assert low < 0 < high and abs(low) != abs(high)
    scale = (high - low) / 255
    zero_point = np.round(-128 - low / scale)  # the nudge: 0 exactly a code
    grid = {"minimum": (-128 - zero_point) * scale, "maximum": (127 - zero_point) * scale}
    output_quant = qat.get_layer("output_quant")
    for name, value in grid.items():
        assert getattr(output_quant, name) == pytest.approx(value, rel=1e-6), name
    # Its outputs are the float logits of the copy rounded onto that grid.
    unrounded = keras.Model(qat.inputs, qat.get_layer("logits").output)(data).numpy().astype(np.float64)
    codes = np.clip(np.round((unrounded - grid["minimum"]) / scale), 0, 255)
    got = qat(data).numpy()
    np.testing.assert_allclose(got, codes * scale + grid["minimum"], rtol=0, atol=1e-5 * scale)
    assert len(np.unique(codes)) > 20  # many codes, not a few saturated ones
    # And the int8 model's logits, up to the last requantization's rounding (at most one code, see above): the
    # same class wherever the copy's first two are more than that apart.
    _, tflite = decoded_outputs(deploy.to_tflite(qat, data), [], data)
    assert np.all(np.abs(tflite - got) < 1.5 * scale)
    second, first = np.sort(got, axis=1)[:, -2:].T
    clear = first - second > 2.5 * scale
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(tflite.argmax(1)[clear], got.argmax(1)[clear])
