"""Exact logits (``keras_ftprop.deploy.logits``): on the grids ``logit_weights`` chooses, the output layer's int8
code is the same under fixed-point (double and single rounding) and float32 requantization and in the copy, at
every reachable accumulator; checked against an independent numpy requantization."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold, Staircase
from keras_ftprop.deploy import logits
from keras_ftprop.deploy.grids import nudged_range
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
    site = logits.LogitSite("logits", s_in, m)
    copy = np.asarray(logits.exact_codes(levels * s_in * m, codes, bias_codes, steps, site, s_out)) / s_out
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
