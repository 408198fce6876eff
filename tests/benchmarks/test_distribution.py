"""benchmarks/distribution.py on a tiny run: MirroredStrategy over the two logical
CPUs of tests/conftest.py against the default strategy.

convnet4 with its optional batch norm (two BN layers, in front of the dense
layers) at 16x16 keeps the four traced training steps cheap; convnet8's take
several times longer. Its batch norms follow step units, so they normalise
+-1 values.
"""

import importlib.util
import os

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("distribution", os.path.join(ROOT, "benchmarks", "distribution.py"))
distribution = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(distribution)

CHECK_STEPS = 3
# The synchronized-BN runs differ only in the order of floating-point sums
# (each replica sums its half batch, then the halves are added): gradients
# agree to float32 rounding (~1e-6 relative). The step activations absorb such
# weight differences unless a pre-activation lies within rounding of 0, and
# Adam turns the rounding noise of near-zero gradient entries into updates of
# at most a few percent of its learning rate (2.5e-4 here). So over a few
# steps the losses (~2.5, float32 spacing 2.4e-7) agree within a few tens of
# ulps and the weights within a tenth of the learning rate per step, while
# per-replica statistics move the loss by 1e-3 or more from the first step on.
# Longer runs part anyway once a unit flips (convnet8, 20 steps: at step 15),
# as two single-device runs differing only in rounding do. (That the update of
# a split batch equals the single-device one is checked with SGD, without
# batch norm, by tests/models/test_end_to_end.py.)
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 0.1 * 2.5e-4 * CHECK_STEPS


@pytest.fixture(scope="module")
def result():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPUs (configured by tests/conftest.py)")
    return distribution.main([
        "--model=convnet4", "--batch-norm", "--image-size=16", "--batch-size=8",
        "--rounds=2", "--steps=2", f"--check-steps={CHECK_STEPS}", "--seed=0"])


def test_timings_are_positive(result):
    for variant in distribution.BN_VARIANTS:
        for name in ("default", "mirrored"):
            assert result["ms_per_step"][variant][name] > 0
            assert result["images_per_second"][variant][name] > 0
        assert result["ratio"][variant] > 0


def test_synchronized_batch_norm_gives_the_single_device_losses(result):
    losses, sync = result["check"]["losses"], result["check"]["synchronized_bn"]
    assert len(losses["mirrored, synchronized_bn"]) == CHECK_STEPS
    assert 1.0 < losses["default, synchronized_bn"][0] < 5.0  # about ln(10) at the start
    assert sync["max_loss_diff"] <= LOSS_TOLERANCE and sync["first_step_apart"] is None
    assert sync["max_weight_diff"] <= WEIGHT_TOLERANCE
    assert sync["max_moving_stat_diff"] <= 1e-5


def test_per_replica_batch_norm_changes_the_loss_from_the_first_step(result):
    losses, per = result["check"]["losses"], result["check"]["per_replica_bn"]
    # Same weights at step 1: only the half-batch statistics differ.
    assert abs(losses["mirrored, per_replica_bn"][0] - losses["default, per_replica_bn"][0]) > 1e-3
    assert per["first_step_apart"] == 1


def test_on_one_device_synchronized_batch_norm_is_the_same_layer(result):
    # Up to how the variance is computed (E[x^2] - E[x]^2 when synchronized).
    single = result["check"]["single_device"]
    assert single["max_loss_diff"] <= LOSS_TOLERANCE and single["first_step_apart"] is None
