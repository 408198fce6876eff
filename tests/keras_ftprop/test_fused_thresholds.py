"""Steps fused into their producer's int8 requantization: exact at every accumulator value and at ties.

The networks use dyadic weights (scales 2**-k, batch norm with var + epsilon = 1), so that numpy computes
every pre-activation exactly and a tie (pre-activation exactly 0) is a tie for numpy's integer formula and
for the export alike. Float Keras is compared only away from ties: its batch norm's rsqrt(1) is one ulp off
on some CPUs (AVX-512), which moves a tie to +-3e-8.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import deploy, quantization
from keras_ftprop.deploy.grids import pinned_input_range
from keras_ftprop.deploy.quantized_layers import ExactStaircaseConv2D
from keras_ftprop.deploy.thresholds import levels_of, thresholds_of
from keras_ftprop.layers import HardThreshold, Staircase
from tests.keras_ftprop.test_deploy import decoded_outputs

BN = dict(epsilon=0.25)  # with moving variance 0.75: f = gamma exactly


def dense_network(units_per_case=6, inputs=5, seed=0, zero_one=False):
    """x -> step -> fc -> BN -> step (fused; {0, 1} if ``zero_one``) -> fc2 -> step 0/1 (fused) -> logits, and
    {unit: its case}."""
    rng = np.random.default_rng(seed)
    x = keras.Input((inputs,), name="x")
    h0 = HardThreshold(name="act0")(x)
    z1 = keras.layers.Dense(4 * units_per_case + 2, name="fc")(h0)
    h1 = HardThreshold(zero_one=zero_one, name="act1")(keras.layers.BatchNormalization(name="fc_bn", **BN)(z1))
    h2 = HardThreshold(zero_one=True, name="act2")(keras.layers.Dense(7, name="fc2")(h1))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(h2))

    patterns = np.array(list(itertools.product([-1.0, 1.0], repeat=inputs)))
    units = 4 * units_per_case + 2
    codes = rng.integers(-127, 128, size=(inputs, units))
    codes[rng.integers(0, inputs, units), np.arange(units)] = rng.choice([-127, 127], units)  # max |code| = 127
    codes[:, -1] = 0  # a dead channel (and the one before it, below)
    codes[:, -2] = 0
    scale = 2.0 ** -rng.integers(5, 9, size=units)  # per-channel scale: w = scale * code exactly
    gamma = rng.choice([-1.0, 1.0], units) * 2.0 ** rng.integers(-1, 2, size=units)
    mean = rng.integers(-8, 9, size=units) / 16
    beta = rng.integers(-8, 9, size=units) / 16
    acc = 127 * patterns @ codes  # the int8 accumulator of each pattern (input codes +-127), without bias
    # Bias per unit: a tie exactly at one pattern's accumulator, half an input code off it either way,
    # then always on and always off; the dead channels on and off.
    case = np.repeat(["tie", "above", "below", "beyond"], units_per_case).tolist() + ["dead", "dead"]
    target = acc[rng.integers(0, len(patterns), units), np.arange(units)].astype(np.float64)
    offset = {"tie": 0.0, "above": 0.5, "below": -0.5, "beyond": 0.0, "dead": 0.0}
    target += [offset[c] for c in case]
    beyond = np.arange(3 * units_per_case, 4 * units_per_case)
    target[beyond] = np.where(beyond % 2 == 0, 1e9, -1e9)  # h = -1 and +1 everywhere (beyond any acc)
    # z = f (scale acc / 127 + b - mean) + beta = 0 at acc = target (exact: dyadic values, |target| < 2**24)
    bias = -scale * target / 127 + mean - beta / gamma
    bias[-2:] = [0.25, -0.25]
    model.get_layer("fc").set_weights([(codes * scale).astype(np.float32), bias.astype(np.float32)])
    model.get_layer("fc_bn").set_weights([gamma.astype(np.float32), beta.astype(np.float32),
                                          mean.astype(np.float32), np.full(units, 0.75, np.float32)])
    fc2 = model.get_layer("fc2")
    fc2_codes = rng.integers(-127, 128, size=(units, 7))
    fc2_codes[0] = 127
    fc2.set_weights([(fc2_codes / 64).astype(np.float32), (rng.integers(-40, 41, size=7) / 64).astype(np.float32)])
    bias32 = bias.astype(np.float32).astype(np.float64)
    expected = {"acc": acc, "threshold": (mean - beta / gamma - bias32) * 127 / scale, "gamma": gamma,
                "case": case, "dead": gamma[-2:] * (bias32[-2:] - mean[-2:]) + beta[-2:]}
    return model, patterns.astype(np.float32), expected


# act1 on {-1, +1} and on {0, 1}. The accumulator value nearest past a threshold (cases "below" and "above": the
# threshold half a unit from a pattern's accumulator) is m//2 = 63 units past it, M = 8 output codes each: 504
# codes, beyond the 255 from the {0, 1} step's level 0 to its level 1 (half the multiplier would give 252/255).
@pytest.mark.parametrize("act1_zero_one", [False, True], ids=["act1_pm1", "act1_01"])
def test_fused_step_is_exact_at_every_accumulator_value_and_at_ties(act1_zero_one):
    model, patterns, expected = dense_network(zero_one=act1_zero_one)
    low = 0.0 if act1_zero_one else -1.0
    flatbuffer = deploy.to_tflite(model, patterns, quantize="int8")
    report = flatbuffer.report
    assert report.fused == {"act1": "fc", "act2": "fc2"}
    assert set(report.unfused) == {"act0"} and "model's input" in report.unfused["act0"]
    assert sum(count for (op, _), count in report.ops.items() if op in ("GREATER", "SELECT_V2")) == 2  # act0's
    got, _ = decoded_outputs(flatbuffer, ["act1", "act2"], patterns)

    # numpy, in integers: z = f s_in s_w (acc - t) with t = -bias / (s_in s_w), so h = 1[sign(f) (acc - t) > 0]
    acc, t, gamma = expected["acc"], expected["threshold"], expected["gamma"]
    h1 = np.where(np.sign(gamma) * (acc - t) > 0, 1.0, low)
    h1[:, -2:] = np.where(expected["dead"] > 0, 1.0, low)  # dead channels: h(f (b - mean) + beta)
    ties = acc[:, :-2] == t[:-2]
    assert ties.sum() >= 6 and np.all(h1[:, :-2][ties] == low)  # step(0) = -1 (0), whatever the sign of f
    exact = dict(rtol=0, atol=1e-6)  # decoded codes: (q - z) s with s the float32 1/127 (1/255)
    np.testing.assert_allclose(got["act1"], h1, **exact)
    cases = np.array(expected["case"])
    for case in ("tie", "above", "below", "beyond"):  # every case exercised on both sides
        values = h1[:, cases == case]
        assert (values == 1).any() and (values == low).any(), case
    # act2 = step01(fc2(h1)): dyadic weights, so numpy's float64 sum is exact, ties (z = 0 -> 0) included.
    fc2_kernel, fc2_bias = (w.astype(np.float64) for w in model.get_layer("fc2").get_weights())
    h2 = np.where(h1 @ fc2_kernel + fc2_bias > 0, 1.0, 0.0)
    # act2 takes act1's codes (+-127, m = 127; or -128, 127, m = 255): 0/1 by saturation of the int8 range
    assert np.isclose(got["act2"][..., None], [0.0, 1.0], **exact).any(-1).all()
    np.testing.assert_allclose(got["act2"], h2, **exact)
    # Float Keras away from the ties only: at a tie its batch norm's rsqrt may be an ulp off on some CPUs,
    # so z is +-3e-8 instead of 0 there. Rows without a tie must agree exactly, downstream units included.
    keras_h1, keras_h2 = keras.Model(model.inputs, [model.get_layer("act1").output,
                                                    model.get_layer("act2").output])(patterns)
    at_tie = np.zeros_like(h1, bool)
    at_tie[:, :-2] = ties
    np.testing.assert_allclose(np.asarray(keras_h1)[~at_tie], h1[~at_tie], **exact)
    clean = ~at_tie.any(axis=1)
    assert clean.sum() >= len(clean) // 2
    np.testing.assert_allclose(np.asarray(keras_h2)[clean], h2[clean], **exact)


def conv_network(gamma_sign):
    """x -> step -> conv -> max pool -> BN -> step: the batch norm behind the pool is folded only if f > 0.

    The batch norm's mean is a pooled value of each channel, so every channel has ties (z = 0).
    """
    rng = np.random.default_rng(3)
    x = keras.Input((6, 6, 2), name="x")
    h = HardThreshold(name="act0")(x)
    z = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(h)
    z = keras.layers.MaxPooling2D(2, name="pool")(z)
    h = HardThreshold(name="act1")(keras.layers.BatchNormalization(name="bn", **BN)(z))
    model = keras.Model(x, keras.layers.Dense(2, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    codes = rng.integers(-127, 128, size=(3, 3, 2, 8))
    codes[0, 0, 0] = 127
    model.get_layer("conv").set_weights([(codes / 128).astype(np.float32)])
    images = rng.choice([-1.0, 1.0], size=(40, 6, 6, 2)).astype(np.float32)
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)(images).numpy().reshape(-1, 8)
    mean = np.sort(pooled, axis=0)[len(pooled) // 2]  # a value that occurs: ties (z = 0) in every channel
    gamma = gamma_sign * 2.0 ** rng.integers(-1, 2, size=8)
    model.get_layer("bn").set_weights([gamma, np.zeros(8), mean, np.full(8, 0.75)])
    return model, images


@pytest.mark.parametrize("gamma_sign", [1.0, np.array([1, -1, 1, 1, -1, 1, 1, 1.0])])
def test_step_behind_a_max_pool_is_fused_when_its_batch_norm_scale_is_positive(gamma_sign):
    model, images = conv_network(gamma_sign)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8")
    report = flatbuffer.report
    # z = f (pool - mean) exactly (dyadic kernel, +-1 inputs, var + eps = 1, beta = 0), in numpy: the float
    # batch norm's rsqrt(1) may be an ulp off on some CPUs, which would move a tie off 0.
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)(images).numpy().astype(np.float64)
    gamma, _, mean, _ = (w.astype(np.float64) for w in model.get_layer("bn").get_weights())
    z = gamma * (pooled - mean)
    h = np.where(z > 0, 1.0, -1.0)
    assert (z == 0).sum() > 0  # ties
    got, _ = decoded_outputs(flatbuffer, ["act1"], images)
    differ = ~np.isclose(got["act1"], h, rtol=0, atol=1e-6)
    if np.all(np.asarray(gamma_sign) > 0):
        assert report.fused == {"act1": "conv"} and report.folded == {"bn": "conv"}
        assert not differ.any()  # ties included: step(0) = -1
    else:  # the batch norm is an int8 MUL and ADD after the pool: its rounding decides near 0
        assert report.fused == {} and "non-positive scale" in report.unfused["act1"]
        assert np.abs(z[differ]).max(initial=0.0) < 0.1


def test_fusion_can_be_switched_off_and_every_site_says_why():
    model, patterns, _ = dense_network(units_per_case=2)
    flatbuffer = deploy.to_tflite(model, patterns, quantize="int8", fuse_thresholds=False)
    assert flatbuffer.report.fused == {}
    for name in ("act1", "act2"):  # still decided on their producer's exact accumulator, by GREATER
        assert flatbuffer.report.unfused[name].startswith("fuse_thresholds=False; decided on its exact accumulator")
    assert sum(count for (op, _), count in flatbuffer.report.ops.items() if op == "GREATER") == 3
    assert "not fused act0:" in str(flatbuffer.report)
    fused, unfused = deploy.fused_thresholds(model)
    assert set(fused) == {"act1", "act2"} and fused["act1"].input_step == 127 and fused["act1"].batch_norm == "fc_bn"


def test_quantization_aware_copy_records_its_fused_steps_and_the_export_follows_it():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    h = HardThreshold(name="act0")(keras.layers.Dense(16, name="fc0")(x))
    h = HardThreshold(name="act1")(keras.layers.Dense(16, name="fc1")(h))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(h))
    data = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    qat = deploy.quantization_aware(model, data)
    # act0 reads the input: not fused, but decided on fc0's exact accumulator, which the copy compares unrounded
    assert qat.get_layer("act1").fused and qat.get_layer("act0").fused
    report = deploy.to_tflite(qat, data).report
    assert report.fused == {"act1": "fc1"} and "decided on its exact accumulator" in report.unfused["act0"]
    assert deploy.to_tflite(qat, quantize="float").report.fused == {}  # nothing to fuse in float
    unfused = deploy.to_tflite(qat, data, fuse_thresholds=False).report.unfused  # both still exact decisions
    assert all("decided on its exact accumulator" in unfused[name] for name in ("act0", "act1"))


def staircase_network(steps, units_per_case=5, inputs=5, seed=0):
    """x -> step -> fc -> BN -> staircase (fused), and the exact pre-activation z of every +-1 input pattern.

    Dyadic weights, batch norm and staircase thresholds (k / (steps - 1) for steps 3 and 5): z is exact in
    float32 and float64. Per unit, the bias puts z exactly on a random threshold at a random pattern (a tie),
    2**-7 input units above or below it, or beyond every threshold; two dead channels sit between levels.
    """
    rng = np.random.default_rng(seed)
    x = keras.Input((1, 1, inputs), name="x")  # a 1x1 convolution: the dense layer's arithmetic, per channel
    h0 = HardThreshold(name="act0")(x)
    fc = keras.layers.Conv2D(4 * units_per_case + 2, 1, name="fc")
    h1 = Staircase(steps, name="act1")(keras.layers.BatchNormalization(name="fc_bn", **BN)(fc(h0)))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(h1)))

    patterns = np.array(list(itertools.product([-1.0, 1.0], repeat=inputs)))
    units = 4 * units_per_case + 2
    codes = rng.integers(-127, 128, size=(inputs, units))
    codes[rng.integers(0, inputs, units), np.arange(units)] = rng.choice([-127, 127], units)
    codes[:, -2:] = 0
    scale = 2.0 ** -rng.integers(3, 7, size=units)
    gamma = rng.choice([-1.0, 1.0], units) * 2.0 ** rng.integers(-1, 2, size=units)
    mean = rng.integers(-8, 9, size=units) / 16
    beta = rng.integers(-8, 9, size=units) / 16
    thresholds = np.arange(steps) / (steps - 1)
    sums = patterns @ codes  # sum of code * h: the real fc output is scale * sums + bias
    case = np.repeat(["tie", "above", "below", "beyond"], units_per_case).tolist() + ["dead", "dead"]
    at = sums[rng.integers(0, len(patterns), units), np.arange(units)].astype(np.float64)
    on = thresholds[rng.integers(0, steps, units)]
    offset = np.array([{"tie": 0.0, "above": 2.0**-7, "below": -(2.0**-7)}.get(c, 0.0) for c in case])
    # z = f (scale * sums + bias - mean) + beta = on  at sums = at (+ offset)
    bias = (on - beta) / gamma + mean - scale * (at + offset)
    beyond = np.arange(3 * units_per_case, 4 * units_per_case)
    bias[beyond] = np.where(beyond % 2 == 0, 1e3, -1e3)
    bias[-2:] = (thresholds[:2].mean() - beta[-2:]) / gamma[-2:] + mean[-2:]  # dead: between t_0 and t_1
    fc.set_weights([(codes * scale).reshape(1, 1, inputs, units).astype(np.float32), bias.astype(np.float32)])
    model.get_layer("fc_bn").set_weights([gamma.astype(np.float32), beta.astype(np.float32),
                                          mean.astype(np.float32), np.full(units, 0.75, np.float32)])
    z = gamma * (scale * sums + bias.astype(np.float32) - mean) + beta
    return model, patterns.reshape(-1, 1, 1, inputs).astype(np.float32), z, case, thresholds


@pytest.mark.parametrize("steps", [3, 5])
def test_fused_staircase_is_exact_at_every_accumulator_value_and_at_ties(steps):
    model, patterns, z, case, thresholds = staircase_network(steps)
    flatbuffer = deploy.to_tflite(model, patterns, quantize="int8")
    report = flatbuffer.report
    assert report.fused == {"act1": "fc"} and report.folded == {"fc_bn": "fc"}
    assert "one code per level" in report.rewritten["act1"] and report.ops[("LEAKY_RELU", "INT8")] == 1
    ops = report.ops
    assert not any(op in ("GREATER", "SELECT_V2") for op, _ in ops)  # act0 as a depthwise requantization
    got, _ = decoded_outputs(flatbuffer, ["act1"], patterns)
    got = {"act1": got["act1"].reshape(len(patterns), -1)}

    level = (z[..., None] > thresholds).sum(-1) / steps  # clip(ceil((n - 1) z), 0, n) / n, ties below
    ties = np.isin(z, thresholds)
    assert ties.sum() >= 5
    np.testing.assert_allclose(got["act1"], level, rtol=0, atol=1e-6)
    keras_h = keras.Model(model.inputs, model.get_layer("act1").output)(patterns).numpy().reshape(len(patterns), -1)
    np.testing.assert_allclose(got["act1"][~ties], keras_h[~ties], rtol=0, atol=1e-6)  # float Keras off ties
    cases = np.array(case)
    for name in ("tie", "above", "below"):  # each case reaches more than one level
        assert len(np.unique(level[:, cases == name])) > 1, name
    assert set(np.unique(level[:, cases == "beyond"])) == {0.0, 1.0}
    np.testing.assert_allclose(got["act1"][:, -2:], 1 / steps, rtol=0, atol=1e-6)  # dead channels


def near_tie_staircase_network(steps, units=64, inputs=6, seed=3):
    """x -> step -> fc -> BN -> staircase, batch norms whose scales are not powers of two, and biases that put
    each unit's pre-activation on a threshold at one input pattern, up to the float32 rounding of the bias:
    float32 and float64 decide many such units differently."""
    rng = np.random.default_rng(seed)
    x = keras.Input((1, 1, inputs), name="x")
    fc = keras.layers.Conv2D(units, 1, name="fc")
    bn = keras.layers.BatchNormalization(name="fc_bn")
    h1 = Staircase(steps, name="act1")(bn(fc(HardThreshold(name="act0")(x))))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(h1)))
    patterns = np.array(list(itertools.product([-1.0, 1.0], repeat=inputs)))
    codes = rng.integers(-127, 128, size=(inputs, units))
    codes[0] = 127  # the kernel is on its int8 grid: codes * 2**-5
    gamma, beta, mean, variance = (rng.uniform(*bounds, units).astype(np.float32) for bounds in
                                   ((0.5, 2.0), (-0.2, 0.2), (-0.2, 0.2), (0.5, 2.0)))
    f = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + bn.epsilon)
    at = (patterns @ codes)[rng.integers(0, len(patterns), units), np.arange(units)] * 2.0**-5
    on = np.array(thresholds_of(Staircase(steps)))[rng.integers(0, steps, units)]
    bias = (on - beta) / f + mean - at  # f (at + bias - mean) + beta = on
    fc.set_weights([(codes * 2.0**-5).reshape(1, 1, inputs, units).astype(np.float32), bias.astype(np.float32)])
    bn.set_weights([gamma, beta, mean, variance])
    return model, patterns.reshape(-1, 1, 1, inputs).astype(np.float32)


@pytest.mark.parametrize("steps", [3, 5])
def test_quantization_aware_copy_decides_a_fused_staircase_as_its_int8_model_near_ties(steps):
    """The copy's fc and batch norm are one ``ExactStaircaseConv2D``, whose level comes from the integer
    accumulator and the export's own gates (``fused_weights.staircase_decisions``): the int8 model's level at
    every unit, where the float32 pre-activation puts units at a threshold on the other side."""
    model, patterns = near_tie_staircase_network(steps)
    flatbuffer = deploy.to_tflite(model, patterns, quantize="int8")
    assert flatbuffer.report.fused["act1"] == "fc"
    got, _ = decoded_outputs(flatbuffer, ["act1"], patterns)
    got = got["act1"].reshape(len(patterns), -1)
    qat = deploy.quantization_aware(model, patterns)
    fc = qat.get_layer("fc")
    assert isinstance(fc, ExactStaircaseConv2D) and fc.batch_norm.name == "fc_bn"
    assert fc.staircase["input_step"] == 127 and isinstance(qat.get_layer("fc_bn"), keras.layers.Identity)
    copy = keras.Model(qat.inputs, qat.get_layer("act1").output)(patterns).numpy().reshape(len(patterns), -1)
    np.testing.assert_allclose(copy, got, rtol=0, atol=1e-6)
    floating = keras.Model(model.inputs, model.get_layer("act1").output)(patterns).numpy().reshape(got.shape)
    assert np.sum(np.abs(floating - got) > 1e-6) >= 3  # float32 decides some units otherwise
    assert len(np.unique(got)) == steps + 1


def test_staircase_after_a_staircase_is_fused_and_computes_it_from_the_int8_input():
    """A 5-step staircase behind conv -> max pool -> BN, reading a 3-step staircase's int8 codes: its levels are
    those of the float64 staircase of the int8 model's own input, with the int8 kernel codes."""
    keras.utils.set_random_seed(2)
    x = keras.Input((8, 8, 3), name="x")
    h0 = Staircase(3, name="act0")(keras.layers.Conv2D(8, 3, padding="same", name="conv0")(x))
    conv = keras.layers.Conv2D(16, 3, padding="same", name="conv1")
    pool = keras.layers.MaxPooling2D(2, name="pool1")
    bn = keras.layers.BatchNormalization(name="bn1")
    h1 = Staircase(5, name="act1")(bn(pool(conv(h0))))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(h1)))
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(1, 8, 16), rng.uniform(-0.5, 1, 16), rng.normal(0, 0.1, 16), np.ones(16)])
    images = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8")
    report = flatbuffer.report
    # act0 (the image's): conv0's own requantization, placed to round alike on every runtime
    # (``input_staircases``); each staircase's levels requantized onto its grid
    assert report.fused == {"act0": "conv0", "act1": "conv1"}, report.unfused
    assert report.ops[("CONV_2D", "INT8")] == 2 and ("ADD", "INT8") not in report.ops
    assert report.ops[("LEAKY_RELU", "INT8")] == 2 and ("DEPTHWISE_CONV_2D", "INT8") not in report.ops
    # without: act0's input requantized, then a depthwise requantization between its codes, and a copy that
    # rounds that input as the export does
    fast = deploy.to_tflite(model, images, quantize="int8", exact_input_staircases=False).report
    assert fast.ops[("CONV_2D", "INT8")] == 2 and ("ADD", "INT8") not in fast.ops
    assert fast.ops[("DEPTHWISE_CONV_2D", "INT8")] == 1 and "exact accumulator" not in fast.unfused["act0"]
    qat = deploy.quantization_aware(model, images, exact_input_staircases=False)
    assert qat.get_layer("conv0").input_unit is None and not qat.get_layer("act0").fused
    assert "exact accumulator" not in deploy.to_tflite(qat, images, quantize="int8").report.unfused["act0"]
    assert not any(op in ("GREATER", "SELECT_V2") for op, _ in report.ops)
    got, _ = decoded_outputs(flatbuffer, ["act0", "act1"], images)

    codes, scale = quantization.kernel_codes(conv.kernel.numpy())
    kernel = tf.constant(codes * scale.astype(np.float64))
    z = tf.nn.conv2d(tf.constant(np.round(got["act0"] * 3) / 3), kernel, 1, "SAME") + conv.bias.numpy()
    z = tf.nn.max_pool2d(z, 2, 2, "VALID").numpy()
    gamma, beta, mean, variance = (w.astype(np.float64) for w in bn.get_weights())
    z = gamma * (z - mean) / np.sqrt(variance + bn.epsilon) + beta
    level = (z[..., None] > np.arange(5) / 4).sum(-1) / 5
    assert len(np.unique(level)) == 6  # every level occurs
    np.testing.assert_allclose(got["act1"], level, rtol=0, atol=1e-6)


def test_quantization_aware_copy_compares_its_fused_staircase_unrounded_and_the_export_follows_it():
    keras.utils.set_random_seed(0)
    x = keras.Input((1, 1, 6), name="x")
    h = HardThreshold(name="act0")(keras.layers.Conv2D(16, 1, name="fc0")(x))
    h = Staircase(3, name="act1")(keras.layers.Conv2D(16, 1, name="fc1")(h))
    h2 = Staircase(3, name="act2")(keras.layers.Dense(8, name="fc2")(keras.layers.Flatten(name="flatten")(h)))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(h2))
    data = np.random.default_rng(0).normal(size=(64, 1, 1, 6)).astype(np.float32)
    assert "dense layer 'fc2'" in deploy.fused_thresholds(model)[1]["act2"]  # per-tensor kernels elsewhere
    qat = deploy.quantization_aware(model, data)
    assert qat.get_layer("act1").fused and qat.get_layer("act1").input_range is None
    flatbuffer = deploy.to_tflite(qat, data)
    assert flatbuffer.report.fused == {"act1": "fc1"}
    got, _ = decoded_outputs(flatbuffer, ["act0", "act1"], data)
    probe = keras.Model(qat.inputs, [qat.get_layer(n).output for n in ("act0", "act1", "fc1")])
    keras_h0, keras_h, pre = (t.numpy().reshape(len(data), -1) for t in probe(data))
    got = {name: value.reshape(len(data), -1) for name, value in got.items()}
    # act0 compares the rounded output of fc0 (which reads the input): a unit at a requantization tie can
    # flip there (on some TensorFlow versions) and every act1 unit of that example inherits it. Where act0
    # agrees, act1 is equal up to float32 ties (the copy sums in float32, the int8 model in int32).
    same_input = np.isclose(got["act0"], keras_h0, rtol=0, atol=1e-6).all(axis=1)
    assert same_input.mean() > 0.9
    differ = ~np.isclose(got["act1"], keras_h, rtol=0, atol=1e-6) & same_input[:, None]
    assert np.all(np.abs(pre[differ][:, None] - np.array([0.0, 0.5, 1.0])).min(-1) < 1e-5)
    # Not fused after all: the export compares it with GREATER, says so and warns (a step would be an error).
    with pytest.warns(UserWarning, match="'act1' was made to be fused"):
        report = deploy.to_tflite(qat, data, fuse_thresholds=False).report
    assert "compares it unrounded" in report.unfused["act1"]


@pytest.mark.parametrize("threshold", [HardThreshold(), HardThreshold(zero_one=True), Staircase(3), Staircase(5)],
                         ids=["step", "step01", "staircase3", "staircase5"])
def test_unfused_threshold_as_a_depthwise_requantization_is_exact_at_every_input_code(threshold):
    """A threshold on the model's input: every one of the 256 input codes, thresholds on codes included."""
    x = keras.Input((16, 16, 1), name="x")
    model = keras.Model(x, keras.layers.Flatten(name="flatten")(threshold(x)))
    calibration = np.random.default_rng(0).uniform(-1.5, 1.5, size=(8, 16, 16, 1)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, calibration, quantize="int8")
    report = flatbuffer.report
    assert report.ops[("DEPTHWISE_CONV_2D", "INT8")] == 1 and "GREATER" not in str(report.ops)
    low, high = pinned_input_range(threshold, float(np.abs(calibration).max()), scaled=False)
    scale = (high - low) / 255
    zero_point = round(-128 - low / scale)
    codes = np.arange(-128, 128)
    images = ((codes - zero_point) * scale).astype(np.float32).reshape(1, 16, 16, 1)
    got, _ = decoded_outputs(flatbuffer, [threshold.name], images)
    thresholds = thresholds_of(threshold)
    threshold_codes = [zero_point + round(t / scale) for t in thresholds]
    assert set(threshold_codes) <= set(codes)  # every threshold is an input code: ties are exercised
    levels, _ = levels_of(threshold)
    expected = np.array(levels)[(codes[:, None] > threshold_codes).sum(-1)]
    np.testing.assert_allclose(got[threshold.name].reshape(-1), expected, rtol=0, atol=1e-6)
    keras_y = threshold(images).numpy().reshape(-1)  # the float function of the same inputs
    np.testing.assert_allclose(got[threshold.name].reshape(-1), keras_y, rtol=0, atol=1e-6)


def test_a_padded_max_pool_keeps_the_grid_for_fusion_and_for_a_residual_shortcut():
    """ResNet's stem: step -> PaddedMaxPooling2D, read by a convolution (fused) and by a residual sum, whose
    quantization-aware copy must add the shortcut's exact +-1 (not +-1 on a 256-code grid of [-1, 1])."""
    from models.layers import PaddedMaxPooling2D

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), name="x")
    h = HardThreshold(name="act0")(keras.layers.Conv2D(4, 3, padding="same", name="conv0")(x))
    pooled = PaddedMaxPooling2D(3, 2, 1, name="pool")(h)
    h = HardThreshold(name="act1")(keras.layers.Conv2D(4, 3, padding="same", name="conv1")(pooled))
    z = keras.layers.BatchNormalization(name="bn2")(keras.layers.Conv2D(4, 3, padding="same", name="conv2")(h))
    h = HardThreshold(name="act2")(keras.layers.Add(name="add")([z, pooled]))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D(name="gap")(h)))
    images = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32)
    fused, unfused = deploy.fused_thresholds(model)
    assert set(fused) == {"act1"} and set(unfused) == {"act0", "act2"}
    qat = deploy.quantization_aware(model, images)
    rounded = {layer.name for layer in qat.layers if isinstance(layer, quantization.FakeQuant)}
    assert "add_in0" in rounded and "add_in1" not in rounded  # the batch norm's operand only
    flatbuffer = deploy.to_tflite(qat, images)
    assert flatbuffer.report.fused == {"act1": "conv1"}
    got, _ = decoded_outputs(flatbuffer, ["act1", "act2"], images)
    probe = keras.Model(qat.inputs, [qat.get_layer("act1").output, qat.get_layer("act2").output])
    keras_act1, keras_act2 = probe(images)
    np.testing.assert_allclose(got["act1"], keras_act1.numpy(), rtol=0, atol=1e-6)
    assert np.mean(~np.isclose(got["act2"], keras_act2.numpy(), rtol=0, atol=1e-6)) < 1e-3


def test_only_a_staircase_whose_lowest_level_is_0_is_fused():
    """Staircases on [-0.5, 1], [0, 1] and [0.5, 1] behind 1x1 convolutions of a step's output: the fused one's
    requantization writes levels from 0 (its RELU), so the others compare their input, and every unit is a
    level of its own staircase."""
    rng = np.random.default_rng(0)
    x = keras.Input((1, 1, 6), name="x")
    h0 = HardThreshold(name="act0")(x)
    lows = {"act1": -0.5, "act2": 0.0, "act3": 0.5}
    outputs = []
    for i, (name, low) in enumerate(lows.items()):
        conv = keras.layers.Conv2D(8, 1, name=f"fc{i + 1}")
        outputs.append(keras.layers.Flatten(name=f"flatten{i + 1}")(Staircase(3, low=low, name=name)(conv(h0))))
        conv.set_weights([rng.uniform(-0.15, 0.15, (1, 1, 6, 8)).astype(np.float32),  # z in [low - 1, 2]
                          rng.uniform(low - 0.1, 1.1, 8).astype(np.float32)])
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Concatenate(name="all")(outputs)))
    patterns = np.array(list(itertools.product([-1.0, 1.0], repeat=6)), np.float32).reshape(-1, 1, 1, 6)
    flatbuffer = deploy.to_tflite(model, patterns, quantize="int8")
    got, _ = decoded_outputs(flatbuffer, list(lows), patterns)
    probe = keras.Model(model.inputs, [model.get_layer(f"fc{i + 1}").output for i in range(3)]
                        + [model.get_layer(name).output for name in lows])
    values = [v.numpy().reshape(len(patterns), -1) for v in probe(patterns)]
    for (name, low), z, keras_y in zip(lows.items(), values[:3], values[3:]):
        levels = low + (1 - low) * np.arange(4) / 3
        thresholds = low + (1 - low) * np.arange(3) / 2
        decoded = got[name].reshape(len(patterns), -1)
        # Within 1.5 output codes: TensorFlow 2.16's converter puts a level a code off (0.67059 for 2/3).
        code = 1.5 * (1 - low) / 255
        assert np.isclose(decoded[..., None], levels, rtol=0, atol=code).any(-1).all(), name  # levels only
        assert len(np.unique(keras_y)) == 4, name  # every level occurs
        # Equal to Keras's float unit where the int8 rounding of kernel and input cannot cross a threshold.
        clear = np.abs(z[..., None] - thresholds).min(-1) > 0.02
        assert clear.mean() > 0.8, name
        np.testing.assert_allclose(decoded[clear], keras_y[clear], rtol=0, atol=code, err_msg=name)
    report = flatbuffer.report
    assert report.fused == {"act2": "fc2"}
    for name in ("act1", "act3"):
        assert f"its lowest level is {lows[name]:g}, not 0" in report.unfused[name]


def test_a_step_is_fused_behind_layers_that_keep_the_int8_grid_and_not_behind_an_average_pool():
    """step -> max pool -> conv -> step (fused: the pool's codes are the step's +-127) and step -> average pool
    -> conv -> step (not fused: averages of +-127 such as +-64 are not multiples of 127, and the fused step's bias
    assumes they are). Every unit of both is -1 or +1: the step of its int8 input, away from 0."""
    keras.utils.set_random_seed(4)
    x = keras.Input((6, 6, 2), name="x")
    h0 = HardThreshold(name="act0")(x)
    pools = {"max": keras.layers.MaxPooling2D(2, name="max_pool"),
             "avg": keras.layers.AveragePooling2D(2, name="avg_pool")}
    outputs = [keras.layers.Flatten(name=f"flatten_{kind}")(HardThreshold(name=f"act_{kind}")(
        keras.layers.Conv2D(16, 3, padding="same", name=f"conv_{kind}")(pool(h0)))) for kind, pool in pools.items()]
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Concatenate(name="all")(outputs)))
    images = np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8")
    got, _ = decoded_outputs(flatbuffer, ["act0", "act_max", "act_avg"], images)
    for kind, pool in pools.items():
        decoded = got[f"act_{kind}"]
        not_a_level = decoded[~np.isclose(np.abs(decoded), 1.0, rtol=0, atol=1e-6)]
        assert not_a_level.size == 0, (kind, not_a_level[:5])  # -1 or +1
        # Keras's layers on the int8 model's own act0, where rounding the kernel (and the average) to int8
        # cannot cross 0
        z = model.get_layer(f"conv_{kind}")(pool(np.round(got["act0"]).astype(np.float32))).numpy()
        clear = np.abs(z) > 0.05
        assert clear.mean() > 0.5, kind
        np.testing.assert_allclose(decoded[clear], np.where(z > 0, 1.0, -1.0)[clear], rtol=0, atol=1e-6, err_msg=kind)
    assert flatbuffer.report.fused == {"act_max": "conv_max"}
    assert "'avg_pool' (AveragePooling2D), not a threshold" in flatbuffer.report.unfused["act_avg"]


def staircase_then_step(steps, seed=1):
    """x -> staircase (``steps`` levels on [0, 1]) -> 1x1 conv -> step -> logits."""
    rng = np.random.default_rng(seed)
    x = keras.Input((1, 1, 8), name="x")
    h0 = Staircase(steps, name="act0")(x)
    conv = keras.layers.Conv2D(32, 1, name="fc")
    h1 = HardThreshold(name="act1")(conv(h0))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(h1)))
    conv.set_weights([rng.normal(size=(1, 1, 8, 32)).astype(np.float32), rng.uniform(-1, 1, 32).astype(np.float32)])
    return model


# A step's input grid: 28, 31 and 32 staircase levels on [0, 1] are 9, 8 and 7 codes apart.
@pytest.mark.parametrize("steps, codes_apart, fused", [(28, 9, True), (31, 8, True), (32, 7, False)])
def test_a_step_is_fused_on_an_input_grid_of_8_codes_a_level_or_coarser(steps, codes_apart, fused):
    found, unfused = deploy.fused_thresholds(staircase_then_step(steps))
    if fused:
        assert set(found) == {"act1"} and found["act1"].input_step == codes_apart
    else:
        assert not found and f"too fine (codes {codes_apart} apart)" in unfused["act1"]


def test_a_step_fused_on_the_finest_input_grid_is_exact_at_every_accumulator_value():
    """Behind a 31-level staircase (codes 8 apart: the accumulator's margin m//2 - m//4 is 2 units), the step
    is that of the int8 model's own input levels k / 31 with the kernel's int8 codes: z = s_w (codes . h) + b."""
    model = staircase_then_step(31)
    images = np.random.default_rng(2).uniform(-0.1, 1.1, size=(200, 1, 1, 8)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8")
    assert flatbuffer.report.fused == {"act1": "fc"}
    got, _ = decoded_outputs(flatbuffer, ["act0", "act1"], images)
    conv = model.get_layer("fc")
    codes, scale = quantization.kernel_codes(conv.kernel.numpy())
    levels = np.round(got["act0"].reshape(len(images), 8) * 31) / 31
    z = levels @ (codes.reshape(8, 32) * scale.astype(np.float64)) + conv.bias.numpy().astype(np.float64)
    h1 = np.where(z > 0, 1.0, -1.0)
    assert (h1 == 1).mean() > 0.2 and (h1 == -1).mean() > 0.2
    np.testing.assert_allclose(got["act1"].reshape(len(images), -1), h1, rtol=0, atol=1e-6)


def test_a_fused_staircase_channel_with_a_vanishing_kernel_is_its_bias_level():
    """Weight decay can leave a channel's kernel at denormals (a trained convnet8 had one): the level is then
    the same at every reachable accumulator, and the export writes that constant."""
    keras.utils.set_random_seed(0)
    x = keras.Input((1, 1, 6), name="x")
    h = HardThreshold(name="act0")(keras.layers.Conv2D(8, 1, name="fc0")(x))
    conv = keras.layers.Conv2D(4, 1, name="fc1")
    h = Staircase(3, name="act1")(conv(h))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    kernel, bias = conv.get_weights()
    kernel[..., 0], kernel[..., 1] = 1e-42, -3e-41  # denormal float32
    bias[:2] = 0.7, -0.3  # levels 2/3 (0.7 > 0, 0.5) and 0
    conv.set_weights([kernel, bias])
    data = np.random.default_rng(0).normal(size=(64, 1, 1, 6)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, data, quantize="int8")
    assert flatbuffer.report.fused["act1"] == "fc1"
    got, _ = decoded_outputs(flatbuffer, ["act1"], data)
    np.testing.assert_allclose(got["act1"][..., 0], 2 / 3, atol=1e-6)
    np.testing.assert_allclose(got["act1"][..., 1], 0.0, atol=1e-6)
