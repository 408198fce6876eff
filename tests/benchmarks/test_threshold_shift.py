"""benchmarks/threshold_shift.py: the shifted threshold's forward and gradients, and a short comparison."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import threshold_shift
from keras_ftprop import HardThreshold


def test_shifted_threshold_is_h_of_x_minus_a_and_its_shift_takes_minus_the_summed_input_gradient():
    layer = threshold_shift.ShiftedThreshold(HardThreshold(target_loss="sste"))
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3, 3, 5)), tf.float32)
    layer.build(x.shape)
    shift = np.array([0.3, -0.2, 0.0, 0.9, -1.5], np.float32)
    layer.shift.assign(shift)
    upstream = tf.constant(np.random.default_rng(1).normal(size=x.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        objective = tf.reduce_sum(y * upstream)
    dx, da = tape.gradient(objective, [x, layer.shift])
    u = x.numpy() - shift
    np.testing.assert_array_equal(y.numpy(), np.where(u > 0, 1.0, -1.0))
    # SSTE: the upstream gradient where |u| <= 1, zero elsewhere; the shift gets minus its sum per channel
    want_dx = np.where(np.abs(u) <= 1, upstream.numpy(), 0.0)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-6)
    np.testing.assert_allclose(da.numpy(), -want_dx.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_both_variants_train_and_are_compared_per_seed(capsys):
    threshold_shift.main(["--epochs=1", "--seeds=1", "--train_examples=128", "--batch_size=32"])
    out = capsys.readouterr().out
    assert "seed 1: h(x) " in out and "paired difference" in out
