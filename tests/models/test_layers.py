"""Tests of models/layers.py: initialisation, activation sites and the
keras.applications-style input/pooling helpers (PyTorch-style max pooling:
tests/keras_ftprop/test_pooling.py)."""

import math

import keras
import numpy as np
import pytest

from models import convnet4, resnet18
from models.layers import (
    ActivationSites,
    conv2d,
    dense,
    model_input,
    pool_features,
    torch_default_initializers,
)


def test_torch_default_initialisation_is_uniform_one_over_sqrt_fan_in():
    layer = conv2d(64, 5, in_channels=32, name="conv")
    layer.build((None, 16, 16, 32))
    bound = 1.0 / math.sqrt(32 * 5 * 5)
    for weights in (layer.kernel, layer.bias):
        values = weights.numpy()
        assert np.abs(values).max() <= bound
    kernel = layer.kernel.numpy()
    # Variance of U(-b, b) is b^2 / 3.
    assert kernel.var() == pytest.approx(bound**2 / 3, rel=0.05)

    fc = dense(100, in_features=400, name="fc")
    fc.build((None, 400))
    assert np.abs(fc.kernel.numpy()).max() <= 1 / 20
    kernel_init, bias_init = torch_default_initializers(400)
    assert bias_init.get_config()["maxval"] == pytest.approx(1 / 20)
    assert kernel_init.get_config()["mode"] == "fan_in"


def test_activation_sites_default_to_relu_with_deterministic_names():
    sites = ActivationSites(None)
    x = keras.Input((4,))
    sites(x, "first_act")
    sites(x, "second_act")
    assert [layer.name for layer in sites.layers] == ["first_act", "second_act"]
    assert all(isinstance(layer, keras.layers.ReLU) for layer in sites.layers)
    assert sites.layers[0] is not sites.layers[1]


def test_activation_sites_reject_a_factory_returning_a_shared_layer():
    shared = keras.layers.ReLU()
    with pytest.raises(ValueError, match="new layer on every call"):
        convnet4(activation=lambda: shared)


@pytest.mark.parametrize("factory, error", [
    ("relu", TypeError),  # names go through get_model / activation_factory
    (lambda: keras.activations.relu, TypeError),  # not a layer
])
def test_activation_sites_reject_non_factories(factory, error):
    with pytest.raises(error):
        resnet18(input_shape=(32, 32, 3), classes=10, activation=factory)


def test_model_input_uses_default_shape_and_checks_input_tensor():
    assert model_input(None, (32, 32, 3)).shape == (None, 32, 32, 3)
    assert model_input((8, 9, 1), (32, 32, 3)).shape == (None, 8, 9, 1)
    tensor = keras.Input((40, 40, 3))
    assert model_input(None, (32, 32, 3), tensor) is tensor
    with pytest.raises(ValueError, match="disagrees"):
        model_input((32, 32, 3), (32, 32, 3), tensor)
    with pytest.raises(ValueError, match="height, width, channels"):
        model_input((32, 32), (32, 32, 3))
    with pytest.raises(TypeError, match="symbolic"):
        model_input(None, (32, 32, 3), np.zeros((1, 32, 32, 3)))


def test_builders_accept_an_input_tensor():
    tensor = keras.Input((16, 16, 3), name="images")
    model = convnet4(input_tensor=tensor)
    assert model.inputs[0] is tensor


def test_pool_features():
    x = keras.Input((5, 5, 7))
    assert pool_features(x, None) is x
    assert pool_features(x, "avg").shape == (None, 7)
    assert pool_features(x, "max").shape == (None, 7)
    with pytest.raises(ValueError, match="pooling"):
        pool_features(x, "sum")
