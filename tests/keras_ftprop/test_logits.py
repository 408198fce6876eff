"""Exact logits (``keras_ftprop.deploy.logits``): on the grids ``logit_weights`` chooses, the output layer's int8
code is the same under fixed-point (double and single rounding) and float32 requantization and in the copy, at
every reachable accumulator; checked against an independent numpy requantization."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold, Staircase, deploy
from keras_ftprop.deploy import logits
from keras_ftprop.deploy.grids import nudged_range, quantized_kernel
from tests.keras_ftprop import requantization

# (input grid: s_in, m, lowest and highest level index k = (code - z) / m): a {-1, +1} step (codes -+127),
# 3- and 5-step staircases on [0, 1], and the coarsest grid allowed.
GRIDS = {"step": (1 / 127, 127, -1, 1), "staircase3": (1 / 255, 85, 0, 3), "staircase5": (1 / 255, 51, 0, 5),
         "m5": (1 / 255, 5, 0, 51)}


def converter_requantization(kernel_q, bias_q, s_in, s_out, per_channel):
    """(per-channel scale, int8 codes, int32 bias, real multiplier) as the converter derives them from float32
    values: s_w = max|w| / 127 (per channel, or over the kernel), code = round(w / s_w), bias =
    round(b / (s_in s_w))."""
    kernel_q, bias_q = np.asarray(kernel_q, np.float32), np.asarray(bias_q, np.float32)
    s_w = np.abs(kernel_q).max(0).astype(np.float64) / 127
    if not per_channel:
        s_w = np.full_like(s_w, s_w.max())
    codes = np.round(kernel_q / s_w).astype(np.int64)
    bias = np.round(bias_q.astype(np.float64) / (s_in * s_w)).astype(np.int64)
    real = np.float32(s_in) * np.float32(s_w).astype(np.float64) / np.float32(s_out)
    return s_w, codes, bias, real


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
def test_every_reachable_logit_is_the_same_code_in_every_arithmetic_and_in_the_copy(grid, per_channel):
    s_in, m, k_low, k_high = GRIDS[grid]
    rng = np.random.default_rng(m)
    fan_in, channels = 64, 6
    kernel = rng.normal(size=(fan_in, channels)) * np.array([0.05, 0.3, 1.0, 0.002, 1e-6, 0.05])  # varied
    bias = rng.normal(size=channels) * 2
    s_out = 12.0 / 255  # logits within about [-6, 6]
    kernel_q, bias_q, codes, s_c, bias_codes, steps = (np.asarray(w) for w in logits.logit_weights(
        kernel.astype(np.float32), bias.astype(np.float32), s_in, m, s_out, per_channel))
    assert np.all(np.abs(codes) <= 127) and np.abs(codes).max() == 127
    np.testing.assert_allclose(s_in * s_c / s_out * m * steps, 1.0, rtol=1e-6)  # M_c = 1 / (m n_c)
    if per_channel:
        assert np.all(np.abs(codes).max(0) == 127)
        assert steps.min() >= 1 and steps.max() == logits.max_steps(m)  # the tiny channel is capped
    else:
        assert len(set(steps.tolist())) == 1 and len(set(s_c.tolist())) == 1
    rho = np.floor((m * steps + m) / 2) % m
    np.testing.assert_array_equal(bias_codes % m, rho)
    assert np.all(np.abs(bias_codes - bias / (s_in * s_c)) <= m / 2 + 1e-6)

    assert logits.bias_error(bias_codes, m) == ""
    s_w, fb_codes, fb_bias, real = converter_requantization(kernel_q, bias_q, s_in, s_out, per_channel)
    np.testing.assert_array_equal(fb_codes, codes)  # the converter keeps the codes; the bias to its rounding
    assert np.all(np.abs(fb_bias - bias_codes) <= np.abs(bias_codes) * 2.0**-21)
    positive, negative = np.clip(codes, 0, None).sum(0), np.clip(codes, None, 0).sum(0)
    checked = 0
    for ch in range(channels):
        u = np.arange(positive[ch] * k_low + negative[ch] * k_high, positive[ch] * k_high + negative[ch] * k_low + 1)
        designed = bias_codes[ch] + m * u  # the copy's accumulator: a rational never near a half
        ratio = designed / (m * steps[ch])
        assert np.abs(ratio - np.floor(ratio) - 0.5).min() * m * steps[ch] >= (m - 1) / 2 - 1e-6
        exact = np.round(ratio)
        keep = np.abs(exact) <= 256  # beyond, the int8 clamp decides
        for arithmetic in requantization.ARITHMETICS:  # the int8 model's, on the converter's bias and scales
            got = requantization.output_codes(fb_bias[ch] + m * u, real[ch], 0, -2**40, 2**40, arithmetic)
            np.testing.assert_array_equal(got[keep], exact[keep], err_msg=f"channel {ch} {arithmetic}")
        checked += keep.sum()
    assert checked > (10**4 if per_channel else 2000)  # per tensor, small channels have few codes
    # The copy's forward (exact_codes) on random input levels: the int8 model's codes.
    levels = rng.integers(k_low, k_high + 1, size=(500, fan_in)).astype(np.float32)
    copy = np.asarray(logits.exact_codes(levels * s_in * m, codes, bias_codes, steps, s_in, m, s_out)) / s_out
    acc = fb_bias + m * (levels.astype(np.int64) @ codes)
    for ch in range(channels):
        np.testing.assert_array_equal(np.round(copy[:, ch]), requantization.output_codes(
            acc[:, ch], real[ch], 0, -2**40, 2**40, "fixed_point"))


def test_the_output_range_widens_so_that_every_channel_has_a_step():
    site = logits.LogitSite("logits", 1 / 127, 127)
    kernel = np.full((4, 2), 0.5, np.float32)  # one weight code is u 0.5 / 127: the calibrated scale is finer
    low, high = logits.output_range(-0.1, 0.1, kernel, site)
    assert (high - low) / 255 >= 0.5 / 127 and low < 0 < high
    assert np.asarray(logits.logit_weights(kernel, None, 1 / 127, 127, (high - low) / 255)[5]).min() == 1
    assert logits.output_range(-10.0, 10.0, kernel, site) == nudged_range(-10.0, 10.0)  # fine as it is


def test_the_site_is_a_linear_dense_layer_reading_a_threshold():
    def model(head, threshold=HardThreshold):
        x = keras.Input((8,))
        return keras.Model(x, head(threshold(name="act")(keras.layers.Dense(8, name="fc")(x))))

    site, why = logits.logit_site(model(keras.layers.Dense(3, name="out")))
    assert why is None and site == logits.LogitSite("out", pytest.approx(1 / 127), 127)
    through = keras.Sequential([keras.layers.Reshape((4, 2)), keras.layers.Flatten(), keras.layers.Dense(3)])
    site, _ = logits.logit_site(model(lambda h: through.layers[2](through.layers[1](through.layers[0](h))),
                                      lambda name: Staircase(5, name=name)))
    assert site.input_step == 51  # floor(255 / 5) codes between levels, through a reshape and a flatten
    for head, threshold, reason in [
            (keras.layers.Dense(3, activation="softmax"), HardThreshold, "has an activation"),
            (lambda h: keras.layers.Dense(3)(keras.layers.Dense(4)(h)), HardThreshold, "does not read a threshold"),
            (lambda h: keras.layers.Activation("relu")(keras.layers.Dense(3)(h)), HardThreshold,
             "not computed by a Dense"),
            (keras.layers.Dense(3), lambda name: Staircase(200, name=name), "codes 1 apart")]:
        site, why = logits.logit_site(model(head, threshold))
        assert site is None and reason in why


def test_a_logit_range_small_against_the_weights_keeps_a_plain_requantization():
    """With n_c < MIN_STEPS (a copy: MIN_COPY_STEPS) the largest weight would move by up to 1/n_c: the export
    and the copy keep the calibrated grid and a plain requantization, and say why."""
    site = logits.LogitSite("out", 1 / 127, 127)
    kernel = np.array([[0.5, 0.01], [-0.2, 0.02]], np.float32)  # channel 0: n = floor(s_out 127 / 0.5)
    assert logits.coarse_grid(kernel, site, 16 * 0.5 / 127) == ""
    assert "n_c = 15 < 16 in 'out'" in logits.coarse_grid(kernel, site, 15.5 * 0.5 / 127)
    assert logits.coarse_grid(kernel, site, 15.5 * 0.5 / 127, per_channel=False).startswith("n_c = 15")
    assert logits.coarse_grid(kernel, site, 15.5 * 0.5 / 127, min_steps=logits.MIN_COPY_STEPS) == ""

    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    h = HardThreshold(name="act")(keras.layers.Dense(16, name="fc")(x))
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    model.get_layer("out").kernel.assign(model.get_layer("out").kernel * 20)  # 16 inputs, weights up to +-10
    data = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    assert "a plain requantization (n_c = " in deploy.to_tflite(model, data).report.logits
    copy = deploy.quantization_aware(model, data)
    assert copy.get_layer("out").logits is None
    assert "the quantization-aware copy computes them as a plain requantization" in (
        deploy.to_tflite(copy, data).report.logits)


def test_the_grids_are_a_fixed_point_so_the_export_recognises_a_copys_logits():
    """``on_grid``: ``logit_weights`` of its own output is that output, bit for bit; a kernel quantized on its
    natural grid (max |w| / 127) is not on the logit grid."""
    rng = np.random.default_rng(3)
    site = logits.LogitSite("out", 1 / 255, 51)
    kernel, bias = rng.normal(size=(40, 5)).astype(np.float32) * 0.1, rng.normal(size=5).astype(np.float32)
    s_out = 9.0 / 255
    kernel_q, bias_q = (np.asarray(w) for w in logits.logit_weights(kernel, bias, 1 / 255, 51, s_out)[:2])
    assert logits.on_grid(kernel_q, bias_q, site, s_out)
    assert not logits.on_grid(np.asarray(quantized_kernel(kernel)), bias, site, s_out)
