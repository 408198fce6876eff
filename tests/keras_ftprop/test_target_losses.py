import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import target_losses
from tests import numpy_reference as ref
from tests.custom_target_loss import Cubic

DIFFERENTIABLE = tuple(name for name in ref.LOSSES if name not in ref.DIRECT)
# Where some rule has a kink or a window edge: +-1 (hinges, SSTE), 0 (perceptron, ties),
# +-2 (ramp), -1/2, 1/2, 3/2 ({0, 1} ramp), +-sqrt(3) (sste_v2), -log(e^2 - 1) (truncated log loss).
KINKS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 1.5, -1.5, math.sqrt(3.0), -math.sqrt(3.0),
         -math.log(math.expm1(2.0)), math.log(math.expm1(2.0)))


def _loss(name):
    """The built-in loss ``name``; a scheduled one bound to the reference's step and length."""
    loss = target_losses.get(name)
    if loss.scheduled:
        loss.bind(tf.constant(ref.EDE_STEP, tf.int64), total_steps=ref.EDE_TOTAL)
    return loss


def _points():
    """Pre-activations: the kinks, just either side of them, and a spread out to +-4."""
    kinks = np.array(KINKS)
    near = np.concatenate([kinks, kinks - 1e-3, kinks + 1e-3])
    spread = np.random.default_rng(0).uniform(-4.0, 4.0, size=64)
    return np.concatenate([near, spread, [-6.0, 6.0]]).astype(np.float32)


def _away_from_kinks(z):
    return np.min(np.abs(np.abs(z)[:, None] - np.abs(np.array(KINKS))[None, :]), axis=1) > 1e-4


def test_builtin_names():
    assert set(target_losses.names()) == set(ref.LOSSES)
    assert len(target_losses.names()) == len(ref.LOSSES)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_loss_values_match_numpy(name):
    x = _points()
    for t in (-1.0, 0.0, 1.0):
        z, tt = x.astype(np.float64), np.full_like(x, t, dtype=np.float64)
        got = _loss(name)(tf.constant(x), tf.constant(np.full_like(x, t))).numpy()
        np.testing.assert_allclose(got, ref.loss(name, z, tt), rtol=1e-5, atol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_closed_form_derivative_matches_numpy_and_autodiff(name):
    x = _points()
    loss = _loss(name)
    for t in (-1.0, 0.0, 1.0):
        z, tt = tf.constant(x), tf.constant(np.full_like(x, t))
        closed = loss.derivative(z, tt).numpy()
        expected = ref.dloss_dz(name, x.astype(np.float64), np.full(x.shape, t))
        np.testing.assert_allclose(closed, expected, rtol=1e-5, atol=2e-6, err_msg=f"t={t}")
        # Autodiff of L(z, t) agrees wherever L is differentiable (at a kink either is a subgradient).
        smooth = _away_from_kinks(x)
        autodiff = target_losses.TargetLoss.derivative(loss, z, tt).numpy()
        # (float32 autodiff of swish_sign loses digits in the tails: atol 2e-5)
        np.testing.assert_allclose(autodiff[smooth], closed[smooth], rtol=1e-4, atol=2e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("name", ref.LOSSES)
@pytest.mark.parametrize("scale_by_grad", [True, False])
def test_input_gradient_at_kinks_ties_and_no_target(name, scale_by_grad):
    """grad_x on the grid of every kink x upstream gradients of both signs and g = 0."""
    x1 = _points()
    g1 = np.array([-2.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 2.0], np.float32)
    x, g = (a.ravel() for a in np.meshgrid(x1, g1, indexing="ij"))
    x, g = x.reshape(-1, 1), g.reshape(-1, 1)  # batch = all of them (scale_by_grad=False divides by it)
    got = _loss(name).input_gradient(tf.constant(x), tf.constant(g), scale_by_grad=scale_by_grad,
                                     batch_size=x.shape[0]).numpy()
    expected = ref.step_grad(name, x.astype(np.float64), g.astype(np.float64), scale_by_grad)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=5e-6 / (1 if scale_by_grad else x.shape[0]))
    assert np.all(got[g == 0] == 0), "a unit with no target must get no gradient"


def test_zero_one_ramp_matches_numpy():
    x = _points().reshape(-1, 1)
    g = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    ramp = target_losses.get("ramp")
    assert ramp.for_output_range(True) == target_losses.Ramp(zero_one=True)
    for zero_one in (False, True):
        loss = ramp.for_output_range(zero_one)
        got = loss.input_gradient(tf.constant(x), tf.constant(g), scale_by_grad=True, batch_size=1).numpy()
        np.testing.assert_allclose(got, ref.scaled_grad("ramp", x, g, zero_one), rtol=1e-6, atol=1e-7)
    sste = target_losses.get("sste")
    assert sste.for_output_range(True) is sste  # rules without a {0, 1} form of their own keep theirs


def test_zero_one_ramp_on_a_centred_unit_is_an_error():
    from keras_ftprop import ops

    zero_one_ramp = target_losses.Ramp(zero_one=True)
    ops.hard_threshold(tf.zeros(3), zero_one_ramp, zero_one=True)
    for op in (lambda x: ops.hard_threshold(x, zero_one_ramp), lambda x: ops.staircase(x, 3, zero_one_ramp)):
        with pytest.raises(ValueError, match=r"Ramp\(zero_one=True\) is the ramp of a \{0, 1\} step"):
            op(tf.zeros(3))


@pytest.mark.parametrize("name", ["approx_sign", "swish_sign", "ede"])
def test_surrogates_are_g_times_the_slope_of_their_sign(name):
    """grad_x = g F'(x): the derivative of 1 - L(x, +1) = F(x), by autodiff, times g."""
    x = tf.constant(np.linspace(-3, 3, 121, dtype=np.float32))
    loss = _loss(name)
    with tf.GradientTape() as tape:
        tape.watch(x)
        sign = 1.0 - loss(x, tf.ones_like(x))
    slope = tape.gradient(sign, x).numpy()
    g = np.full(x.shape, -0.7, np.float32)
    got = loss.input_gradient(x, tf.constant(g), scale_by_grad=True, batch_size=1).numpy()
    np.testing.assert_allclose(got, g * slope, rtol=1e-4, atol=2e-5)  # float32 autodiff in the tails
    # F is a sign surrogate: odd, from -1 to +1 (EDE's k tanh(T x) reaches k >= 1).
    np.testing.assert_allclose(sign.numpy(), -sign.numpy()[::-1], atol=1e-6)
    assert sign.numpy()[-1] >= 0.99


def test_swish_sign_has_no_overflow_far_out():
    x = tf.constant([-1e4, -50.0, 50.0, 1e4, 0.0])
    got = target_losses.get("swish_sign").input_gradient(x, tf.ones_like(x), scale_by_grad=True, batch_size=1)
    np.testing.assert_allclose(got.numpy(), [0, 0, 0, 0, 5.0], atol=1e-30)  # F'(0) = beta


@pytest.mark.parametrize("name", ref.LOSSES)
def test_get_serialize_round_trip(name):
    loss = target_losses.get(name)
    assert target_losses.serialize(loss) == name
    assert target_losses.get(target_losses.serialize(loss)) == loss
    assert target_losses.get(loss) is loss
    config = keras.saving.serialize_keras_object(loss)
    assert target_losses.get(config) == loss
    hash(loss)


@pytest.mark.parametrize("name, expected", [
    ("perceptron", target_losses.Hinge(margin=0.0)),
    ("truncated_log_hinge", target_losses.LogHinge(threshold=2.0)),
    ("truncated_log_loss", target_losses.LogLoss(threshold=2.0)),
    ("truncated_square_loss", target_losses.SquareLoss(threshold=4.0)),
    ("sste_v2", target_losses.SaturatedSTE(limit=math.sqrt(3.0))),
    ("soft_hinge2", target_losses.SoftHinge(xscale=2.0)),
    ("sigmoid2_2", target_losses.Sigmoid(xscale=2.0, yscale=2.0)),
    ("sigmoid3_2", target_losses.Sigmoid(xscale=3.0, yscale=2.0)),
])
def test_named_variants_are_parameterised_classes(name, expected):
    assert target_losses.get(name) == expected
    assert target_losses.serialize(expected) == name


def test_configured_builtin_serializes_as_config():
    loss = target_losses.SoftHinge(xscale=2.5)
    config = target_losses.serialize(loss)
    assert isinstance(config, dict)
    assert target_losses.get(config) == loss
    assert target_losses.get(config) != target_losses.SoftHinge()


def test_custom_loss_derivative_by_autodiff():
    z = np.linspace(-2, 2, 9).astype(np.float32)
    t = np.ones_like(z)
    got = Cubic().derivative(tf.constant(z), tf.constant(t)).numpy()
    np.testing.assert_allclose(got, -np.maximum(1 - z, 0) ** 2, rtol=1e-6)
    assert target_losses.get(target_losses.serialize(Cubic())) == Cubic()


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="Unknown target loss 'soft-hinge'.*soft_hinge.*sste.*ede"):
        target_losses.get("soft-hinge")


def test_wrong_type_is_rejected():
    with pytest.raises(ValueError, match="must be a name"):
        target_losses.get(3)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="xscale must be a number or a keras.optimizers.schedules"):
        target_losses.SoftHinge(xscale="two")
    with pytest.raises(ValueError, match="t_min > 0"):
        target_losses.EDE(t_min=0.0)
    with pytest.raises(ValueError, match="steps, an integer >= 1"):
        target_losses.EDE(total_steps=0)


@pytest.mark.parametrize("name", ["sste", "sste_v2", "ramp", "ste"])
def test_direct_estimators_have_no_loss(name):
    with pytest.raises(TypeError, match="no loss"):
        target_losses.get(name)(tf.zeros(2), tf.ones(2))


def test_loss_without_call_says_what_to_define():
    with pytest.raises(NotImplementedError, match="__call__"):
        target_losses.TargetLoss()(tf.zeros(2), tf.ones(2))
