"""Tests of models/registry.py: ``get_model`` and the ``MODELS`` specs."""

import keras
import pytest

from keras_ftprop import BatchNormThreshold, HardThreshold, SaturatedReLU, Staircase
from models import (
    ACTIVATION_NAMES,
    MODEL_NAMES,
    MODELS,
    alexnet,
    bireal_resnet18,
    convnet4,
    convnet8,
    get_model,
    get_spec,
    micro_convnet,
    resnet18,
    resnet34,
)
from tests.models.helpers import TINY_INPUT_SHAPES, layers_of_type

BUILDERS = {"convnet4": convnet4, "convnet8": convnet8, "alexnet": alexnet,
            "resnet18": resnet18, "resnet34": resnet34, "bireal_resnet18": bireal_resnet18,
            "micro_convnet": micro_convnet}


def tiny(name, **kwargs):
    return get_model(name, input_shape=TINY_INPUT_SHAPES[name], classes=10,
                     **kwargs)


def test_model_names():
    assert MODEL_NAMES == ("convnet4", "convnet8", "alexnet", "resnet18",
                           "resnet34", "bireal_resnet18", "micro_convnet")


def test_paper_default_staircase_steps():
    assert {name: spec.staircase_steps for name, spec in MODELS.items()} == {
        "convnet4": 3, "convnet8": 3, "alexnet": 3, "resnet18": 5, "resnet34": 5, "bireal_resnet18": 5,
        "micro_convnet": 3}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spec_builder_and_default_input(name):
    spec = get_spec(name)
    assert spec.builder is BUILDERS[name]
    assert spec.input_shape == {"convnet4": (32, 32, 3), "convnet8": (32, 32, 3), "micro_convnet": (32, 32, 3)}.get(
        name, (224, 224, 3))
    # The builder's own default input is the spec's.
    assert tuple(get_model(name, include_top=False).input_shape[1:]) == spec.input_shape


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spec_min_input_side_is_the_smallest_the_builder_builds(name):
    side = get_spec(name).min_input_side
    assert get_model(name, input_shape=(side, side, 3), classes=10).output_shape == (None, 10)
    if side > 1:
        with pytest.raises(ValueError):
            get_model(name, input_shape=(side - 1, side - 1, 3), classes=10)


def test_paper_recipes_cover_the_paper_networks_and_activations():
    assert [name for name, spec in MODELS.items() if spec.paper_recipe and not spec.recipe_of] == [
        "convnet4", "convnet8", "alexnet", "resnet18"]
    # Not in the paper: trained with ResNet-18's recipe, like for like.
    assert MODELS["bireal_resnet18"].recipe_of == "resnet18"
    assert MODELS["bireal_resnet18"].paper_recipe == MODELS["resnet18"].paper_recipe
    for spec in MODELS.values():
        assert set(spec.paper_recipe or ACTIVATION_NAMES) == set(ACTIVATION_NAMES)


@pytest.mark.parametrize("name", ["convnet4", "convnet8", "alexnet",
                                  "resnet18"])
def test_get_model_defaults_to_the_step_activation_and_builder_layout(name):
    model = tiny(name)
    reference = BUILDERS[name](input_shape=TINY_INPUT_SHAPES[name],
                               classes=10)
    assert model.name == name
    names = [layer.name for layer in reference.layers]
    assert [layer.name for layer in tiny(name, fuse_batch_norm=False).layers] == names
    # Fused: each threshold after a batch norm (and ResNet's residual sum before it)
    # lives in the BatchNormThreshold that carries the batch norm's name.
    merged = {layer.activation.name for layer in model.layers
              if isinstance(layer, BatchNormThreshold)}
    merged |= {site[:-len("_act2")] + "_add" for site in merged if site.endswith("_act2")}
    assert bool(merged) == (name != "convnet4")
    assert sorted(layer.name for layer in model.layers) == sorted(
        set(names) - merged)
    assert model.count_params() == reference.count_params()
    steps = layers_of_type(model, HardThreshold)
    assert steps and len(steps) == len(
        layers_of_type(reference, keras.layers.ReLU))
    assert all(layer.get_config()["target_loss"] == "soft_hinge"
               for layer in steps)


@pytest.mark.parametrize("name, expected_steps", [("convnet8", 3),
                                                  ("resnet18", 5)])
def test_staircase_steps_default_to_the_paper_value(name, expected_steps):
    stairs = layers_of_type(tiny(name, activation="staircase"), Staircase)
    assert {layer.steps for layer in stairs} == {expected_steps}
    stairs = layers_of_type(tiny(name, activation="staircase", steps=7),
                            Staircase)
    assert {layer.steps for layer in stairs} == {7}


def test_issue_examples():
    model = get_model("resnet18", activation="staircase", steps=5,
                      input_shape=(64, 64, 3), classes=200)
    assert model.output_shape == (None, 200)
    assert len(layers_of_type(model, Staircase)) == 17
    model = get_model("alexnet", activation="step", target_loss="sste",
                      input_shape=(60, 60, 3), classes=1000)
    thresholds = layers_of_type(model, HardThreshold)
    assert len(thresholds) == 7
    assert {layer.get_config()["target_loss"] for layer in thresholds} == {
        "sste"}


def test_builder_keyword_arguments_pass_through():
    model = get_model("convnet4", activation="saturated_relu",
                      scale_by_grad=False, weight_decay=1e-3,
                      batch_norm=True, classifier_activation="softmax",
                      include_top=True, name="tiny", input_shape=(16, 16, 3),
                      classes=4)
    assert model.name == "tiny"
    assert model.output_shape == (None, 4)
    assert len(layers_of_type(model, SaturatedReLU)) == 3
    assert "fc1_input_bn" in [layer.name for layer in model.layers]
    assert len(model.losses) == len(model.trainable_weights)


def test_scale_by_grad_reaches_the_layers():
    thresholds = layers_of_type(tiny("convnet4", scale_by_grad=False),
                                HardThreshold)
    assert all(layer.scale_by_grad is False for layer in thresholds)


def test_a_factory_is_accepted_as_activation():
    model = tiny("convnet8", activation=lambda: keras.layers.ReLU(
        negative_slope=0.1))
    assert all(layer.negative_slope == pytest.approx(0.1)
               for layer in layers_of_type(model, keras.layers.ReLU))


@pytest.mark.parametrize("lookup", [get_model, get_spec])
def test_unknown_model_lists_the_valid_names(lookup):
    with pytest.raises(ValueError) as error:
        lookup("vgg16")
    for name in MODEL_NAMES:
        assert repr(name) in str(error.value)


def test_unknown_activation_lists_the_valid_names():
    with pytest.raises(ValueError, match="'saturated_relu'"):
        get_model("convnet4", activation="tanh")


def test_unknown_target_loss_raises_the_core_error():
    with pytest.raises(ValueError, match="Unknown target loss 'soft-hinge'"):
        get_model("convnet4", activation="step", target_loss="soft-hinge")
