"""Steps decided on an exact accumulator (``ExactStepConv2D``, ``fused_weights.step_decisions``): the copy decides
each unit as its int8 model does, also where its float32 batch norm lands on 0, at a tie no float arithmetic
settles alike on every CPU."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold, deploy
from keras_ftprop.deploy.fused_weights import COMPARE_MULTIPLIER, accumulator_step_weights, step_decisions
from keras_ftprop.deploy.fusion import accumulator_compares
from keras_ftprop.deploy.grids import quantized_kernel
from keras_ftprop.deploy.quantized_layers import ExactStepConv2D
from tests.keras_ftprop.test_runtimes import _interpreter

CHANNELS = 32


def tie_network(seed):
    """image (1x1x8 in [0, 1]) -> 1x1 conv -> BN -> step -> logits; the batch norm (f = 1) shifts each channel by
    minus its float32 pre-activation at the image ``tie``, so the copy's float32 batch norm gives exactly 0 there,
    while the exact value is the rounding error of that float32 product, of either sign."""
    rng = np.random.default_rng(seed)
    x = keras.Input((1, 1, 8), name="image")
    h = keras.layers.Conv2D(CHANNELS, 1, use_bias=False, name="conv")(x)
    h = HardThreshold(name="act")(keras.layers.BatchNormalization(epsilon=0.0, name="bn")(h))
    model = keras.Model(x, keras.layers.Dense(2, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    conv = model.get_layer("conv")
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype(np.float32))
    tie = (rng.integers(0, 256, size=(1, 1, 1, 8)) / 255.0).astype(np.float32)
    calibration = np.concatenate([rng.uniform(size=(63, 1, 1, 8)), np.ones((1, 1, 1, 8))]).astype(np.float32)
    return model, tie, calibration


def test_a_step_at_a_float32_tie_is_decided_as_the_int8_model_decides():
    flips = 0
    for seed in range(3):
        model, tie, calibration = tie_network(seed)
        qat = deploy.quantization_aware(model, np.concatenate([calibration, tie]))
        conv = qat.get_layer("conv")
        assert isinstance(conv, ExactStepConv2D) and conv.step["input_step"] == 1
        rounded = keras.Model(qat.inputs, qat.get_layer("input_quant").output)(tie)
        float32 = np.asarray(conv.convolution_op(rounded, quantized_kernel(conv.kernel)))
        bn = conv.batch_norm  # f = 1: x = y - mean + beta, with beta = -y at the tie
        bn.moving_mean.assign(np.zeros(CHANNELS, np.float32))
        bn.moving_variance.assign(np.ones(CHANNELS, np.float32))
        bn.beta.assign(-float32.reshape(-1))
        before_norm = np.asarray(bn(float32, training=False))
        assert np.all(before_norm == 0.0)  # the float32 batch norm decides every channel -1 (h(0))

        flatbuffer = deploy.to_tflite(qat, calibration, io_dtype="int8")
        interpreter = _interpreter(flatbuffer)
        (inp,) = interpreter.get_input_details()
        scale, zero_point = inp["quantization"]
        interpreter.set_tensor(inp["index"], np.round(np.asarray(rounded) / scale + zero_point).astype(np.int8))
        interpreter.invoke()
        (act,) = [t for t in interpreter.get_tensor_details()
                  if t["name"] == flatbuffer.report.activation_tensors["act"][1]]
        int8 = np.sign(interpreter.get_tensor(act["index"]).reshape(-1).astype(int))
        copy = np.asarray(keras.Model(qat.inputs, qat.get_layer("act").output)(tie)).reshape(-1)
        np.testing.assert_array_equal(copy, int8, err_msg=f"seed {seed}")
        flips += int(np.sum(int8 == 1))  # where the float32 copy's -1 was wrong
    assert flips > 0  # the ties went both ways: without the exact decision the copy differed


def test_decisions_are_the_exports_thresholds_at_every_boundary():
    """Around each channel's boundary floor(t / m) + 1, with t from the export's float64 folding
    (``accumulator_step_weights``: its bias -floor(t) per channel, in accumulator units), the decisions switch
    exactly there; negative gammas flip the folded codes' sign, a channel of zero weights is h(b)."""
    rng = np.random.default_rng(0)
    model, _, calibration = tie_network(3)
    bn = model.get_layer("bn")
    bn.gamma.assign(rng.choice([-1.0, 1.0], CHANNELS) * rng.uniform(0.5, 2.0, CHANNELS))
    bn.beta.assign(rng.normal(size=CHANNELS))
    bn.moving_mean.assign(rng.normal(size=CHANNELS))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, CHANNELS))
    kernel = model.get_layer("conv").kernel.numpy()
    kernel[..., 0] = 0.0  # a dead channel
    model.get_layer("conv").kernel.assign(kernel)
    sites = accumulator_compares(model, {}, (0.0, 1.0))
    site = sites["act"]
    conv = model.get_layer("conv")
    conv.kernel.assign(np.asarray(quantized_kernel(conv.kernel)))  # the copy's kernel, as the export reads it
    new_kernel, new_bias = accumulator_step_weights(model, site)
    new_weight_scale = COMPARE_MULTIPLIER * (1 / 127) / site.input_scale
    boundary = -np.round(new_bias / (site.input_scale * new_weight_scale)).astype(np.int64) + 1  # floor(t) + 1
    f = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    offsets = np.arange(-3, 4)
    levels_sum = np.sign(f)[None] * (boundary[None] + offsets[:, None])  # unfolded U that folds to b + k
    decided = np.asarray(step_decisions(levels_sum.astype(np.float32), conv.kernel, None, bn, site.input_scale, 1))
    live = np.abs(kernel).reshape(-1, CHANNELS).max(0) > 0
    np.testing.assert_array_equal(decided[:, live], np.repeat((offsets >= 0)[:, None], live.sum(), 1))
    c = bn.beta.numpy() - bn.moving_mean.numpy() * f
    assert np.all(decided[:, 0] == (c[0] > 0))
    assert (f < 0).any() and (f > 0).any()


@pytest.mark.parametrize("with_norm", [True, False])
def test_the_copy_round_trips_through_keras_files(tmp_path, with_norm):
    layer = ExactStepConv2D(4, 3, padding="same", batch_norm=keras.layers.BatchNormalization() if with_norm else None,
                            step={"input_scale": 1 / 127, "input_step": 127}, name="conv")
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, HardThreshold(name="act")(layer(inputs)))
    x = np.sign(np.random.default_rng(0).normal(size=(8, 5, 5, 3))).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert (loaded.get_layer("conv").batch_norm is None) == (not with_norm)
