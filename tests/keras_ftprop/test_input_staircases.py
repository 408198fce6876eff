"""A staircase on the image as one requantization (``keras_ftprop.deploy.input_staircases``): every reachable
accumulator requantized in fixed point (double and single rounding) and float32, with the multiplier off by the
runtimes' float32 scales, gives the copy's level."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import Staircase
from keras_ftprop.deploy import input_staircases
from keras_ftprop.deploy.grids import quantized_kernel
from keras_ftprop.deploy.quantized_layers import ExactStaircaseConv2D
from tests.keras_ftprop import requantization


def _placed(kernel, bias, thresholds, input_scale=1 / 255, batch_norm=None):
    return [np.asarray(x) for x in input_staircases.placement(kernel, bias, batch_norm, input_scale, 255,
                                                              thresholds)]


def _kernel(rng, scales, taps=4):
    """[1, taps, 1, C] kernels: random codes with code 127 present, times each channel's weight scale."""
    codes = rng.integers(-127, 128, (taps, len(scales))).astype(np.float64)
    codes[0] = 127
    return (codes * np.asarray(scales)).reshape(1, taps, 1, len(scales))


@pytest.mark.parametrize("steps", [1, 3, 5, 7])
def test_every_arithmetic_decides_every_reachable_accumulator_as_the_copy(steps):
    rng = np.random.default_rng(steps)
    thresholds = [k / max(steps - 1, 1) for k in range(steps)] if steps > 1 else [0.5]
    spacing = 1.0 / max(steps - 1, 1)
    # P_nat = spacing / (s_in s_w): from 3 to 40,000 accumulator units, and the worst mantissas of 1 / P_nat
    # (just below and just above a power of two)
    natural = np.concatenate([np.exp(rng.uniform(np.log(3), np.log(4e4), 24)),
                              [2.0**e * r for e in (4, 9, 13, 15) for r in (0.999, 0.97, 1.001)]])
    scales = spacing * 255 / natural
    kernel = _kernel(rng, scales)
    codes = np.round(kernel / scales).reshape(-1, len(scales))
    reach = np.abs(codes).sum(0) * 255
    bias = rng.uniform(-1, 2, len(scales)) * (reach * scales / 255) * 0.5  # thresholds inside the reach
    spacing_p, bias_code, constant, feasible, _ = _placed(kernel, bias, thresholds)
    assert feasible.all() and (constant < 0).all()
    if steps > 1:  # one threshold: any spacing; N rounds to an integer
        assert np.all(np.abs(spacing_p - natural) <= input_staircases.MAX_CHANGE * natural + 2)
    checked = 0
    for c in range(len(scales)):
        acc = np.arange(-reach[c], reach[c] + 1).astype(np.int64)
        want = np.asarray(input_staircases.levels(acc.astype(np.float64), spacing_p[c], bias_code[c],
                                                  constant[c], steps))
        for error in (1 - 5e-7, 1.0, 1 + 5e-7):  # the runtimes' multipliers from float32 scales
            for name in requantization.ARITHMETICS:
                got = requantization.output_codes(acc + int(bias_code[c]), error / spacing_p[c], 0, 0, steps, name)
                np.testing.assert_array_equal(got, want, err_msg=f"channel {c} (P_nat {natural[c]:.1f}) {name}")
        checked += len(acc)
    assert checked > 10**6


def test_the_levels_are_the_float_staircase_up_to_the_moved_spacing():
    """Each decided gate (2k + 1) N - B lies within (n - 1) |P - P_nat| + 1 of the float threshold t_k (B centres
    them); a spacing
    P_nat whose 1/P_nat has a mantissa near 1/2 moves past the next power of two, others by less than 2 units."""
    thresholds = [0.0, 0.5, 1.0]
    natural = np.array([1000.0, 2047.9, 5000.3, 16383.0, 300.0])
    scales = 0.5 * 255 / natural
    kernel = _kernel(np.random.default_rng(0), scales)
    bias = np.array([0.3, -0.2, 0.1, 0.0, 0.7])
    spacing_p, bias_code, _, feasible, _ = _placed(kernel, bias, thresholds)
    assert feasible.all()
    near_power = np.array([False, True, False, True, False])
    np.testing.assert_array_less(np.abs(spacing_p - natural)[~near_power], 2.0)
    assert np.all(spacing_p[near_power] > 2.0 ** np.ceil(np.log2(natural[near_power])))
    t = (np.array(thresholds)[None] - bias[:, None]) / (scales[:, None] / 255)
    halves = np.round((spacing_p + 0.5) / 2)
    gates = (2 * np.arange(3) + 1)[None] * halves[:, None] - bias_code[:, None]
    assert np.all(np.abs(gates - t) < 2 * np.abs(spacing_p - natural)[:, None] + 1)


def test_a_channel_without_a_boundary_in_reach_is_a_constant_level():
    thresholds = [0.0, 0.5, 1.0]
    kernel = _kernel(np.random.default_rng(1), [1e-3, 1e-3, 1.0])
    kernel[..., 2] = 0.0  # a dead channel: the level of its bias
    bias = np.array([50.0, -50.0, 0.7])  # far above and below every reachable pre-activation
    _, _, constant, feasible, _ = _placed(kernel, bias, thresholds)
    np.testing.assert_array_equal(constant, [3, 0, 2])
    assert feasible.all()


@pytest.mark.parametrize("per_channel", [False, True])
def test_count_above_is_the_number_of_thresholds_strictly_below(per_channel):
    """#{k: x > t_k}: a unit on a threshold is not above it (level 1 begins past t_0, as the staircase's)."""
    rng = np.random.default_rng(5)
    thresholds = np.sort(rng.normal(size=(5, 3) if per_channel else 5), axis=0)
    x = rng.normal(size=(4, 6, 3))
    x[0, :5] = thresholds if per_channel else thresholds[:, None]  # exact ties
    want = (x[..., None] > (thresholds.T[None, None] if per_channel else thresholds)).sum(-1)
    got = np.asarray(input_staircases.count_above(tf.constant(x), tf.constant(thresholds)))
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) == set(range(6))


def test_a_batch_norm_is_folded_with_its_sign():
    """A negative batch-norm scale flips the folded codes; the placement of the folded producer is that of a
    producer whose kernel and bias are folded by hand."""
    rng = np.random.default_rng(2)
    kernel = _kernel(rng, [0.01, 0.02, 0.005])
    bias = rng.normal(size=3)
    batch_norm = keras.layers.BatchNormalization()
    batch_norm.build((None, 3))
    batch_norm.set_weights([np.array([2.0, -1.5, 0.5]), np.array([0.1, 0.2, -0.3]), rng.normal(size=3),
                            np.array([1.0, 4.0, 0.25])])
    gamma, beta, mean, variance = (w.astype(np.float64) for w in batch_norm.get_weights())
    f = gamma / np.sqrt(variance + batch_norm.epsilon)
    c = beta - mean * f
    by_hand = _placed(kernel * f, bias * f + c, [0.0, 0.5, 1.0])
    for got, want in zip(_placed(kernel, bias, [0.0, 0.5, 1.0], batch_norm=batch_norm), by_hand):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(input_staircases.folded_codes(kernel, batch_norm))[..., 1],
                                  -np.round(kernel[..., 1] / (np.abs(kernel[..., 1]).max() / 127)))


def _staircase_copy(with_norm):
    layer = ExactStaircaseConv2D(4, 3, padding="same", name="conv",
                                 batch_norm=keras.layers.BatchNormalization() if with_norm else None,
                                 staircase={"input_scale": 1 / 255, "input_bound": 255, "thresholds": [0.0, 0.5, 1.0]})
    inputs = keras.Input((5, 5, 3))
    return keras.Model(inputs, Staircase(3, name="act")(layer(inputs)))


def _images(count=8):
    return (np.random.default_rng(0).integers(0, 256, size=(count, 5, 5, 3)) / 255).astype(np.float32)


@pytest.mark.parametrize("with_norm", [True, False])
def test_the_copy_round_trips_through_keras_files(tmp_path, with_norm):
    model = _staircase_copy(with_norm)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(_images(), verbose=0), model.predict(_images(), verbose=0))
    assert loaded.get_layer("conv").staircase == model.get_layer("conv").staircase
    assert (loaded.get_layer("conv").batch_norm is None) == (not with_norm)


def test_a_copy_saved_before_the_input_step_was_recorded_reads_the_image():
    config = _staircase_copy(with_norm=False).get_layer("conv").get_config()
    del config["staircase"]["input_step"]
    assert ExactStaircaseConv2D.from_config(config).staircase["input_step"] == 1


def test_the_copy_writes_the_placed_levels_with_the_float_gradient():
    """In inference the staircase after the layer gives ``decided_levels`` of the integer accumulator at every
    unit; the gradient is that of the float pre-activation times ``placed_affine``'s a (the kernel's straight
    through its rounding)."""
    model = _staircase_copy(with_norm=False)
    conv = model.get_layer("conv")
    conv.bias.assign([0.3, -0.1, 0.55, 0.0])
    x = tf.constant(_images())
    codes = np.asarray(input_staircases.folded_codes(quantized_kernel(conv.kernel), None), np.float32)
    acc = conv.convolution_op(tf.round(x * 255), codes)
    want = np.asarray(input_staircases.decided_levels(tf.cast(acc, tf.float64), quantized_kernel(conv.kernel),
                                                      conv.bias, None, 1 / 255, 255, [0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(np.asarray(model(x)) * 3, want)
    a, _ = input_staircases.placed_affine(quantized_kernel(conv.kernel), conv.bias, None, 1 / 255, 255,
                                          [0.0, 0.5, 1.0])
    with tf.GradientTape(persistent=True) as tape:
        placed = tf.reduce_sum(conv(x, training=False) * np.arange(4, dtype=np.float32))
        floating = tf.reduce_sum((conv.convolution_op(x, quantized_kernel(conv.kernel)) + conv.bias)
                                 * np.asarray(a, np.float32) * np.arange(4, dtype=np.float32))
    np.testing.assert_allclose(tape.gradient(placed, conv.kernel), tape.gradient(floating, conv.kernel), rtol=1e-6)


def test_the_copy_trains_on_the_placed_staircase():
    """``placed_affine``: the float staircase of a x + c, x = s_in s_w acc + b, is the placed level at every
    accumulator more than a unit from a placed boundary (and a = 1, c = 0 when a channel is left to copies)."""
    rng = np.random.default_rng(5)
    thresholds = [0.0, 0.25, 0.5, 0.75, 1.0]
    natural = np.array([900.0, 4000.0, 16383.0, 30000.0])
    scales = 0.25 * 255 / natural
    kernel = _kernel(rng, scales)
    bias = np.array([0.4, -0.3, 0.2, 0.6])
    spacing, bias_code, constant, _, _ = _placed(kernel, bias, thresholds)
    a, c = (np.asarray(v) for v in input_staircases.placed_affine(kernel, bias, None, 1 / 255, 255, thresholds))
    assert np.all(np.abs(a - 1) < 0.1) and np.any(a != 1)
    for ch in range(4):
        acc = np.arange(-3 * natural[ch], 8 * natural[ch]).astype(np.float64)
        x = scales[ch] / 255 * acc + bias[ch]
        float_level = ((a[ch] * x + c[ch])[:, None] > np.array(thresholds)).sum(-1)
        want = np.asarray(input_staircases.levels(acc, spacing[ch], bias_code[ch], constant[ch], 5))
        boundaries = (np.arange(5) + 0.5) * spacing[ch] - bias_code[ch]
        clear = np.abs(acc[:, None] - boundaries).min(-1) > 1
        np.testing.assert_array_equal(float_level[clear], want[clear])
    kernel[..., 0] /= 1000  # 9 10^5 units per level, threshold 0.25 in reach: left to copies, thresholds kept
    bias[0] = 0.26
    assert not _placed(kernel, bias, thresholds)[3].all()
    a, c = (np.asarray(v) for v in input_staircases.placed_affine(kernel, bias, None, 1 / 255, 255, thresholds))
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(c, 0.0)
