"""keras_ftprop.deploy.sums: residual sums that TFLite's int8 ADD computes exactly, as the copy does."""

import functools
import math

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from keras_ftprop import HardThreshold, deploy
from keras_ftprop.deploy.sums import power_of_two_grid


def quantize_multiplier(real):
    """TFLite's QuantizeMultiplier of a real multiplier in (0, 1): (q, shift) with real = q 2^(shift - 31),
    q in [2^30, 2^31), the mantissa rounded half away from zero."""
    mantissa, shift = math.frexp(real)
    q = int(math.floor(mantissa * 2**31 + 0.5))
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return q, shift


def rounding_doubling_high_mul(a, b):
    """SaturatingRoundingDoublingHighMul: round(a b / 2^31), ties away from zero (int32 a; |a b| < 2^62)."""
    ab = a.astype(np.int64) * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    return np.where(total >= 0, total >> 31, -((-total) >> 31))  # C++ division truncates toward zero


def rounding_divide_by_pot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    mask = (1 << exponent) - 1
    remainder, threshold = x & mask, (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_smaller_than_one(x, real):
    """MultiplyByQuantizedMultiplierSmallerThanOneExp(x, QuantizeMultiplier(real))."""
    q, shift = quantize_multiplier(real)
    return rounding_divide_by_pot(rounding_doubling_high_mul(x, q), -shift)


def tflite_add(q1, q2, input1, input2, output):
    """TFLite's reference int8 ADD of codes q1, q2 with (scale, zero point) ``input1``, ``input2``, ``output``:
    inputs shifted left by 20, each times its multiplier s_i / (2 max s), summed, times the output multiplier
    2 max s / (2^20 s_out), plus the output zero point, clamped to [-128, 127]."""
    left_shift = 20
    twice_max = 2 * max(input1[0], input2[0])
    scaled = [multiply_smaller_than_one((q.astype(np.int64) - z) * (1 << left_shift), s / twice_max)
              for q, (s, z) in ((q1, input1), (q2, input2))]
    raw = multiply_smaller_than_one(scaled[0] + scaled[1], twice_max / ((1 << left_shift) * output[0]))
    return np.clip(raw + output[1], -128, 127)


def test_tflite_add_formula_rounds_where_the_scales_are_not_powers_of_two_apart():
    """The formula is TFLite's, not exact arithmetic: with arbitrary scales it rounds (ties away from 0)."""
    codes = np.arange(-128, 128)
    q1, q2 = np.meshgrid(codes, codes)
    input1, input2, output = (0.0371, 3), (1 / 127, 0), (0.0433, -5)
    got = tflite_add(q1, q2, input1, input2, output)
    real = ((q1 - 3) * 0.0371 + q2 / 127) / 0.0433
    np.testing.assert_array_equal(got, np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5) - 5, -128, 127))
    assert not np.all(np.isclose(real, np.round(real)))  # the sum was rounded


@pytest.mark.parametrize("low, high, unit", [(-3.1, 5.7, 1 / 127), (0.0, 0.0, 1 / 127), (-0.2, 0.1, 1 / 127),
                                             (-40.0, 1.0, 1 / 255), (-1.0, 1.0, 2.0**-8), (2.0, 2.5, 1 / 127)])
def test_power_of_two_grid_is_the_coarsest_needed_and_holds_the_range(low, high, unit):
    minimum, maximum, scale, zero_point = power_of_two_grid(low, high, unit)
    k = math.log2(scale / unit)
    assert k == round(k) and scale >= deploy.MIN_COMPARE_SCALE
    assert math.isclose(minimum, (-128 - zero_point) * scale) and math.isclose(maximum, (127 - zero_point) * scale)
    assert -128 <= zero_point <= 127 and minimum <= min(low, 0.0) and maximum >= max(high, 0.0)
    finer = scale / 2  # too fine to hold the range, or finer than GREATER resolves
    below, above = math.ceil(-min(low, 0.0) / finer - 1e-9), math.ceil(max(high, 0.0) / finer - 1e-9)
    assert below + above > 255 or finer < deploy.MIN_COMPARE_SCALE


def residual_network(seed=0):
    """Two sums, each read by a step alone: ``add1`` = BN + step's +-1 (an identity shortcut), ``add2`` = BN + BN
    (a projection shortcut). The 1x1 convolutions mix two input channels, so the operands vary independently."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 2), name="image")

    def branch(name):
        z = keras.layers.Conv2D(4, 1, use_bias=False, name=f"conv_{name}")(inputs)
        return keras.layers.BatchNormalization(name=f"bn_{name}")(z)

    shortcut = HardThreshold(name="act_shortcut")(branch("shortcut"))
    sum1 = HardThreshold(name="act1")(keras.layers.Add(name="add1")([branch("a"), shortcut]))
    sum2 = HardThreshold(name="act2")(keras.layers.Add(name="add2")([branch("b"), branch("c")]))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Concatenate(name="concat")([sum1, sum2]))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    rng = np.random.default_rng(seed)
    for name, spread in (("a", 3.0), ("b", 0.4), ("c", 9.0), ("shortcut", 1.0)):  # operand ranges far apart
        bn = model.get_layer(f"bn_{name}")
        bn.gamma.assign(spread * rng.uniform(0.5, 1.5, 4).astype(np.float32))
        bn.beta.assign(spread * rng.normal(scale=0.3, size=4).astype(np.float32))
    return model


def add_tensors(flatbuffer, interpreter):
    """{ADD output tensor name: (input details, input details, output details)}."""
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    return {op["outputs"][0]["name"]: tuple(details[t["index"]] for t in op["inputs"] + op["outputs"])
            for op in deploy.inspect_tflite(flatbuffer)["ops"] if op["op"] == "ADD"}


@pytest.fixture(scope="module")
def exported():
    model = residual_network()
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(32, 16, 16, 2)).astype(np.float32)
    images = rng.normal(size=(48, 16, 16, 2)).astype(np.float32)
    qat = deploy.quantization_aware(model, calibration)
    # The post-training export keeps the converter's calibrated grids, whose ratios are arbitrary.
    return qat, deploy.to_tflite(qat, calibration), deploy.to_tflite(model, calibration), images


def run_adds(flatbuffer, resolver, images):
    """{ADD output tensor name: ([q1, q2, q] codes on ``images``, [(scale, zero point)] of the three)} under
    ``resolver``, each ADD's tensors kept."""
    options = {} if resolver == "xnnpack" else {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF}
    interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True, **options)
    interpreter.allocate_tensors()
    adds = add_tensors(flatbuffer, interpreter)
    assert sorted(name.split("/")[1][:-2] for name in adds) == ["add1", "add2"]
    if resolver == "xnnpack":  # each ADD is a node of the XNNPACK delegate (its own, so its output is kept)
        delegated = {interpreter.get_tensor_details()[i]["name"] for op in interpreter._get_ops_details()
                     if op["op_name"] == "DELEGATE" for i in op["outputs"]}
        assert set(adds) <= delegated
    (image,) = interpreter.get_input_details()
    got = {name: [] for name in adds}
    for i in range(len(images)):
        interpreter.set_tensor(image["index"], images[i:i + 1])
        interpreter.invoke()
        for name, tensors in adds.items():
            got[name].append([interpreter.get_tensor(t["index"]).astype(np.int64) for t in tensors])
    return {name: ([np.concatenate(codes).ravel() for codes in zip(*got[name])],
                   [t["quantization"] for t in tensors]) for name, tensors in adds.items()}


@pytest.mark.parametrize("resolver", ["xnnpack", "builtin_ref"])
def test_numpy_add_formula_is_the_runtimes_on_calibrated_grids(exported, resolver):
    """On the post-training export's arbitrary grids, where almost every sum is rounded, the formula still gives
    every code the runtime gives: it is TFLite's ADD, not exact arithmetic."""
    _, _, post_training, images = exported
    for name, ((q1, q2, q), grids) in run_adds(post_training, resolver, images).items():
        np.testing.assert_array_equal(q, tflite_add(q1, q2, *grids), err_msg=name)
        (s1, z1), (s2, z2), (s, _) = grids
        real = (s1 * (q1 - z1) + s2 * (q2 - z2)) / s
        assert np.mean(np.abs(real - np.round(real)) > 1e-3) > 0.9, name


def exact_add(q1, q2, grids):
    """clamp(z + 2^d1 (q1 - z1) + 2^d2 (q2 - z2)) in integers, 2^d_i = s_i / s (powers of two)."""
    (s1, z1), (s2, z2), (s, z) = grids
    return np.clip(z + round(s1 / s) * (q1 - z1) + round(s2 / s) * (q2 - z2), -128, 127)


def copy_tensors(qat, add, images):
    """The copy's operands of ``add`` and its sum, on ``images``."""
    layer = qat.get_layer(add)
    *operands, total = keras.Model(qat.inputs, list(layer.input) + [layer.output]).predict(images, verbose=0)
    return operands, total


@pytest.mark.parametrize("resolver", ["xnnpack", "builtin_ref"])
def test_every_residual_add_is_exact_and_is_the_copys_sum(exported, resolver):
    qat, flatbuffer, _, images = exported
    for name, ((q1, q2, q), grids) in run_adds(flatbuffer, resolver, images).items():
        (s1, z1), (s2, z2), (s, z) = grids
        d1, d2 = np.log2(s1 / s), np.log2(s2 / s)
        assert abs(d1 - round(d1)) < 1e-6 and abs(d2 - round(d2)) < 1e-6 and min(d1, d2) > -1e-6 and z == 0, name
        exact = functools.partial(exact_add, grids=grids)
        # The runtime's codes are the reference formula's, and that formula adds without rounding, at the
        # operand codes reached and at every other pair.
        np.testing.assert_array_equal(q, tflite_add(q1, q2, *grids), err_msg=name)
        np.testing.assert_array_equal(q, exact(q1, q2), err_msg=name)
        all1, all2 = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))
        np.testing.assert_array_equal(tflite_add(all1, all2, *grids), exact(all1, all2), err_msg=name)
        # A dense sample: both clamps, many operand pairs (add1's shortcut operand has two codes, +-127, so its
        # sums, 2^d (q1 - z1) +- 127 with d >= 1, are odd: never 0; add2's are 0 too).
        assert (q == -128).any() and (q == 127).any() and ("add1" in name or (q == 0).any()), name
        assert len(set(zip(q1, q2))) >= (300 if "add1" in name else 3000), name

        # The copy: its float32 sum is the same integer function of its operands' codes, within 1e-3 of a code
        # (its step's input rounding clamps it onto the sum's grid).
        operands, total = copy_tensors(qat, name.split("/")[1][:-2], images)
        codes = [x.ravel() / scale + zero for x, (scale, zero) in zip(operands + [total], grids)]
        for c in codes:
            assert np.abs(c - np.round(c)).max() < 1e-3, name
        c1, c2, c = (np.round(c).astype(np.int64) for c in codes)
        c = np.clip(c, -128, 127)
        np.testing.assert_array_equal(c, exact(c1, c2), err_msg=name)
        # Where its operands are the runtime's, so is its sum. They differ only where a requantization before the
        # sum (the convolution's, or the shortcut step's input) meets a half code: float32 batch norm against the
        # int32 accumulator, rounded by each runtime its own way (a 1x1 convolution of two image channels has
        # few accumulator values, so the reference kernels meet 0.4% of such halves); the sum carries such a
        # difference, adds none.
        same = (c1 == q1) & (c2 == q2)
        assert same.mean() > 0.99, (name, same.mean())
        np.testing.assert_array_equal(c[same], q[same], err_msg=name)

