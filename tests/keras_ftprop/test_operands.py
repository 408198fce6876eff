"""Exact residual operands (``keras_ftprop.deploy.operands``): a convolution and its batch norm that write an exact
sum's operand from a step's codes give the same int8 code in every arithmetic, on every runtime and in the copy
(``FoldedConv2D``); checked from the flatbuffer against an independent numpy requantization."""

import os

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_ftprop import HardThreshold, deploy
from keras_ftprop.deploy.quantized_layers import FoldedConv2D
from tests.keras_ftprop import requantization
from tests.keras_ftprop.test_runtimes import (
    _assert_every_int8_tensor_is_the_same,
    _every_int8_tensor,
    _interpreter,
    _operators,
    _reachable,
    clear_of_float32,
)

SITES = {"conv_b": "bn_b", "conv_c": "bn_c", "proj_conv": "proj_bn"}  # FoldedConv2D: its batch norm


def residual_digits_network(seed=1):
    """image -> stem conv -> BN -> step; add1 = BN(conv_b(step)) + step (identity shortcut) -> step; add2 =
    BN(conv_c(.)) + BN(proj_conv(.)) (stride 2, projection shortcut) -> step; flatten -> logits. conv_c has a
    bias, and every batch norm some negative gammas."""
    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1), name="image")
    stem = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(x)
    stem = HardThreshold(name="stem_act")(keras.layers.BatchNormalization(name="stem_bn")(stem))
    h = keras.layers.BatchNormalization(name="bn_b")(
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv_b")(stem))
    h = HardThreshold(name="act1")(keras.layers.Add(name="add1")([h, stem]))
    c = keras.layers.BatchNormalization(name="bn_c")(
        keras.layers.Conv2D(24, 3, strides=2, padding="same", name="conv_c")(h))
    p = keras.layers.BatchNormalization(name="proj_bn")(
        keras.layers.Conv2D(24, 1, strides=2, use_bias=False, name="proj_conv")(h))
    h = HardThreshold(name="act2")(keras.layers.Add(name="add2")([c, p]))
    model = keras.Model(x, keras.layers.Dense(10, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, digits.target, epochs=3, batch_size=64, verbose=0)
    rng = np.random.default_rng(seed)
    for name in SITES.values():
        bn = model.get_layer(name)
        bn.gamma.assign(bn.gamma.numpy() * rng.choice([-1.0, 1.0], bn.gamma.shape[0]))
    return model, images, digits.target


@pytest.fixture(scope="module")
def exported():
    model, images, labels = residual_digits_network()
    qat = deploy.quantization_aware(model, images[:300])
    return qat, images, labels, deploy.to_tflite(qat, images[:300], io_dtype="int8")


def test_the_copy_folds_each_residual_operand_into_its_convolution(exported):
    qat, *_ = exported
    folded = {layer.name: layer for layer in qat.layers if isinstance(layer, FoldedConv2D)}
    assert set(folded) == set(SITES)  # not the stem: it reads the image
    for conv, bn in SITES.items():
        assert type(qat.get_layer(bn)) is keras.layers.Identity
        assert folded[conv].operand["input_step"] == 127 and folded[conv].batch_norm.name == bn


def test_the_converter_keeps_the_folded_grids(exported):
    """Each folded convolution's int8 kernel codes are the copy's, its per-channel scale s_c with
    M_c = s_in s_c / s_op = 1 / (m n_c), its output the sum's operand grid, its int32 bias the copy's b_q."""
    qat, _, _, flatbuffer = exported
    ops = {op[2]["name"]: op for op in _operators(flatbuffer) if op[0] == "CONV_2D"}
    for conv in SITES:
        layer = qat.get_layer(conv)
        _, _, codes, scale, bias_codes, steps, _ = (np.asarray(w) for w in layer.folded_weights())
        ((_, (inp, weights, bias), out, activation),) = [op for name, op in ops.items() if f"/{conv}_" in name]
        channels = codes.shape[-1]
        np.testing.assert_array_equal(np.moveaxis(weights["data"].reshape(channels, -1), 0, -1),
                                      codes.reshape(-1, channels))
        np.testing.assert_allclose(weights["scale"], scale, rtol=1e-6)
        real = float(inp["scale"][0]) * weights["scale"].astype(np.float64) / float(out["scale"][0])
        np.testing.assert_allclose(real * 127 * steps, 1.0, rtol=1e-6)
        assert np.all(np.abs(bias["data"] - bias_codes) <= np.abs(bias_codes) * 2.0**-21)
        assert np.all(bias_codes % 127 == np.floor((127 * steps + 127) / 2) % 127)
        assert activation == 0 and float(out["scale"][0]) == pytest.approx(layer.operand["output_scale"], rel=1e-6)
        assert steps.min() >= deploy.operands.MIN_COPY_STEPS


def test_every_reachable_operand_code_is_the_same_in_every_arithmetic(exported):
    """Per channel of each folded convolution: every accumulator b_q + 127 U, U between the extremes that
    input codes in {-127, 0 (padding), 127} allow, requantized from the flatbuffer's scales in fixed point
    (double and single rounding) and in float32, is round(acc / (127 n_c)) + z, and none lies within 63
    accumulator units of a half."""
    _, _, _, flatbuffer = exported
    ops = [op for op in _operators(flatbuffer) if op[0] == "CONV_2D" and any(f"/{c}_" in op[2]["name"] for c in SITES)]
    assert len(ops) == len(SITES)
    checked = 0
    for _, (inp, weights, bias), out, _ in ops:
        channels, z = len(bias["data"]), int(out["zero_point"][0])
        codes = weights["data"].reshape(channels, -1).T.astype(np.int64)
        lowest, highest = _reachable(codes, -1, 1)
        for ch in range(channels):
            real = float(inp["scale"][0]) * float(weights["scale"][ch]) / float(out["scale"][0])
            steps = round(1 / (real * 127))
            acc = int(bias["data"][ch]) + 127 * np.arange(lowest[ch], highest[ch] + 1)
            ratio = acc / (127 * steps)
            assert np.abs(ratio - np.floor(ratio) - 0.5).min() * 127 * steps >= 63 - 1e-6
            want = np.clip(np.round(ratio) + z, -128, 127)
            for arithmetic in requantization.ARITHMETICS:
                got = requantization.output_codes(acc, real, z, -128, 127, arithmetic)
                np.testing.assert_array_equal(got, want, err_msg=f"{out['name']} channel {ch} {arithmetic}")
            checked += len(acc)
    assert checked > 10**5


def test_every_runtime_and_the_copy_write_the_same_operand_codes(exported):
    """XNNPACK, the reference kernels and TFLite Micro agree on every int8 tensor; the copy's operands of both
    sums are the int8 ADD's inputs at every unit, and its logits the int8 model's, on every image whose stem
    units are clear of float32's reach (the copy decides the stem on its float32 batch norm, the int8 model on
    the exact accumulator: there a CPU's rounding may differ)."""
    qat, images, _, flatbuffer = exported
    scale, zero_point = _interpreter(flatbuffer).get_input_details()[0]["quantization"]
    rounded = keras.Model(qat.inputs, qat.get_layer("input_quant").output).predict(images[:300], verbose=0)
    codes = np.clip(np.round(rounded / scale) + zero_point, -128, 127).astype(np.int8)  # the copy's own (at
    # digits of 8/16, x / s = 127.5, its float32 fake quant rounds down)
    logits = _assert_every_int8_tensor_is_the_same(flatbuffer, codes)
    clear = clear_of_float32(qat, ["stem_act"], images[:300])
    assert clear.mean() > 0.9, clear.mean()
    names, values, _ = _every_int8_tensor(flatbuffer, codes[:100])
    by_name = {name: i for i, name in names.items()}
    adds = {op[2]["name"]: op[1] for op in _operators(flatbuffer) if op[0] == "ADD"}
    compared = 0
    for add in ("add1", "add2"):
        (inputs,) = [tensors for name, tensors in adds.items() if f"/{add}_" in name]
        operands = keras.Model(qat.inputs, qat.get_layer(add).input).predict(images[:100], verbose=0)
        for operand, tensor in zip(operands, inputs):  # the copy's operands in the ADD's order
            scale, zero_point = float(tensor["scale"][0]), int(tensor["zero_point"][0])
            copy_codes = np.round(operand / scale).astype(int) + zero_point
            assert np.abs(operand / scale + zero_point - copy_codes).max() < 1e-3  # on the grid
            np.testing.assert_array_equal(copy_codes[clear[:100]],
                                          values["reference"][by_name[tensor["name"]]][:, 0][clear[:100]],
                                          err_msg=tensor["name"])
            compared += scale != np.float32(1 / 127)
    assert compared == 3  # conv_b's, conv_c's and proj_conv's codes
    copy_top1 = qat.predict(images[:300], verbose=0).argmax(-1)
    np.testing.assert_array_equal(copy_top1[clear], logits.argmax(-1)[clear])
    assert len(np.unique(copy_top1)) >= 5  # a network that decides something (its flipped gammas cost accuracy)


def test_a_folded_copy_round_trips_through_keras_files(exported, tmp_path):
    qat, images, _, _ = exported
    path = os.path.join(tmp_path, "qat.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("conv_b"), FoldedConv2D)
    np.testing.assert_array_equal(loaded.predict(images[:64], verbose=0), qat.predict(images[:64], verbose=0))


def test_training_normalizes_by_the_batch_and_trains_every_weight():
    """In training the layer is batch_norm(conv(x, w_q), training=True), w_q the folded grid's kernel over f,
    and the gradient reaches the kernel, gamma and beta; the moving statistics move."""
    rng = np.random.default_rng(0)
    layer = FoldedConv2D(8, 3, padding="same", use_bias=False, batch_norm=keras.layers.BatchNormalization(),
                         operand={"input_scale": 1 / 127, "input_step": 127, "output_scale": 0.05})
    x = np.sign(rng.normal(size=(16, 6, 6, 4))).astype(np.float32)
    layer.build(x.shape)
    layer.batch_norm.moving_variance.assign(rng.uniform(0.5, 4.0, 8).astype(np.float32))
    kernel_q, *_, f = layer.folded_weights()
    unfolded = (np.asarray(kernel_q, np.float64) / np.asarray(f)).astype(np.float32)
    conv = np.asarray(keras.ops.conv(x, unfolded, padding="same"))
    mean, variance = conv.mean((0, 1, 2)), conv.var((0, 1, 2))
    want = (conv - mean) / np.sqrt(variance + layer.batch_norm.epsilon)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * rng.normal(size=y.shape).astype(np.float32))
    np.testing.assert_allclose(np.asarray(y), want, atol=2e-4)
    for grad in tape.gradient(loss, [layer.kernel, layer.batch_norm.gamma, layer.batch_norm.beta]):
        assert np.abs(np.asarray(grad)).max() > 0
    assert np.abs(layer.batch_norm.moving_mean.numpy()).max() > 0


def test_only_operands_read_from_a_threshold_are_folded():
    """A branch that reads the image (its codes are not a threshold's) keeps its batch norm and calibrated
    requantization."""
    from tests.keras_ftprop.test_residual_sums import residual_network

    model = residual_network()
    qat = deploy.quantization_aware(model, np.random.default_rng(1).normal(size=(32, 16, 16, 2)).astype(np.float32))
    assert not any(isinstance(layer, FoldedConv2D) for layer in qat.layers)
