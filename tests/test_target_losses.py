import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import target_losses
from tests import numpy_reference as ref
from tests.custom_target_loss import Cubic

DIFFERENTIABLE = ("soft_hinge", "truncated_hinge", "linear", "sigmoid", "lecun_tanh")


def test_builtin_names():
    assert set(target_losses.names()) == set(ref.LOSSES)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_closed_form_derivative_matches_numpy_and_autodiff(name):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(64,)).astype(np.float32)
    z[:4] = [0.0, 1.0, -1.0, 0.5]
    t = rng.choice([-1.0, 0.0, 1.0], size=64).astype(np.float32)
    loss = target_losses.get(name)
    closed = loss.derivative(tf.constant(z), tf.constant(t)).numpy()
    autodiff = target_losses.TargetLoss.derivative(loss, tf.constant(z), tf.constant(t)).numpy()
    np.testing.assert_allclose(closed, ref.dloss_dz(name, z, t), rtol=1e-5, atol=1e-6)
    if name != "truncated_hinge":  # autodiff of clip differs from the stated subgradient at the kinks
        np.testing.assert_allclose(autodiff, closed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ref.LOSSES)
def test_get_serialize_round_trip(name):
    loss = target_losses.get(name)
    assert target_losses.serialize(loss) == name
    assert target_losses.get(target_losses.serialize(loss)) == loss
    assert target_losses.get(loss) is loss


def test_configured_builtin_serializes_as_config():
    loss = target_losses.SoftHinge(xscale=2.0)
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
    with pytest.raises(ValueError, match="Unknown target loss 'hinge'.*soft_hinge.*sste"):
        target_losses.get("hinge")


def test_wrong_type_is_rejected():
    with pytest.raises(ValueError, match="must be a name"):
        target_losses.get(3)


def test_direct_estimators_have_no_loss():
    with pytest.raises(TypeError, match="no loss"):
        target_losses.get("sste")(tf.zeros(2), tf.ones(2))


def test_loss_without_call_says_what_to_define():
    with pytest.raises(NotImplementedError, match="__call__"):
        target_losses.TargetLoss()(tf.zeros(2), tf.ones(2))
