"""Tests of models/activations.py: activation names -> layer factories."""

import keras
import pytest

import keras_ftprop
from keras_ftprop import HardThreshold, SaturatedReLU, Staircase
from models import ACTIVATION_NAMES, activation_factory


def test_activation_names():
    assert ACTIVATION_NAMES == ("step", "staircase", "relu", "saturated_relu")


@pytest.mark.parametrize("name, layer_type", [
    ("step", HardThreshold),
    ("staircase", Staircase),
    ("relu", keras.layers.ReLU),
    ("saturated_relu", SaturatedReLU),
])
def test_factories_make_a_fresh_layer_of_the_right_type_per_call(
        name, layer_type):
    factory = activation_factory(name)
    first, second = factory(), factory()
    assert type(first) is layer_type and type(second) is layer_type
    assert first is not second


def test_step_and_staircase_get_their_target_loss_and_options():
    step = activation_factory("step", target_loss="sste",
                              scale_by_grad=False)()
    assert step.get_config()["target_loss"] == "sste"
    assert step.get_config()["scale_by_grad"] is False
    assert step.get_config()["zero_one"] is False  # outputs -1 / +1

    stairs = activation_factory("staircase", target_loss="truncated_hinge",
                                steps=5)()
    config = stairs.get_config()
    assert (config["steps"], config["target_loss"], config["low"],
            config["high"]) == (5, "truncated_hinge", 0.0, 1.0)
    assert config["scale_by_grad"] is True


def test_unknown_activation_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        activation_factory("sign")
    for name in ACTIVATION_NAMES:
        assert repr(name) in str(error.value)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_unknown_target_loss_raises_the_core_error_for_any_activation(
        activation):
    with pytest.raises(ValueError) as core_error:
        keras_ftprop.target_losses.get("soft_hinj")
    with pytest.raises(ValueError) as error:
        activation_factory(activation, target_loss="soft_hinj")
    assert str(error.value) == str(core_error.value)


@pytest.mark.parametrize("steps", [0, -2, 2.5, True])
def test_invalid_staircase_steps_raise_early(steps):
    with pytest.raises(ValueError, match="steps"):
        activation_factory("staircase", steps=steps)


def test_every_builtin_target_loss_is_accepted():
    for loss in keras_ftprop.target_losses.names():
        assert isinstance(activation_factory("step", target_loss=loss)(),
                          HardThreshold)
