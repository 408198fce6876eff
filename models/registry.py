"""``MODELS``: what the checkout knows about each network, one entry a network.

Each ``ModelSpec`` holds the builder, the paper's input, the smallest input
side the builder accepts, the paper's staircase steps and the paper's training
recipe per activation. ``get_model``, ``training.recipes`` and ``train.py``
read it; adding a network is adding its entry here.

    name        builder                    paper input  min side  staircase steps
    "convnet4"  models.convnets.convnet4   32x32x3      2         3
    "convnet8"  models.convnets.convnet8   32x32x3      20        3
    "alexnet"   models.alexnet.alexnet     224x224x3    60        3
    "resnet18"  models.resnet.resnet18     224x224x3    1         5
    "resnet34"  models.resnet.resnet34     224x224x3    1         5 (not in the paper)
    "bireal_resnet18"  models.bireal.bireal_resnet18  224x224x3  1  5 (not in the paper; ResNet-18's recipe)
    "micro_convnet"    models.micro.micro_convnet     32x32x3    8  3 (not in the paper; for microcontrollers)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from models.activations import activation_factory
from models.alexnet import MIN_INPUT_SIZE as ALEXNET_MIN_INPUT_SIZE
from models.alexnet import alexnet
from models.bireal import bireal_resnet18
from models.convnets import CONVNET8_MIN_INPUT_SIZE, convnet4, convnet8
from models.micro import micro_convnet
from models.resnet import resnet18, resnet34


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One network: its builder and the paper's settings for it."""

    builder: Callable
    input_shape: tuple  # the paper's input, the builder's default
    min_input_side: int  # the builder refuses (or cannot build) smaller inputs
    staircase_steps: int  # the paper's staircase: steps = levels - 1
    # {activation: {recipe setting: value}}, the reference README's table; None: not in the paper.
    paper_recipe: dict | None = None
    # A network that is not in the paper but trains with the paper's recipe of this one ("" otherwise).
    recipe_of: str = ""
    has_stem: bool = False  # the builder takes ``stem`` (models.resnet.resolve_stem)


def _paper_recipe(weight_decay, **shared):
    """The same optimisation for every activation, weight decay by (step, staircase, relu).

    saturated_relu takes relu's weight decay, as in the reference.
    """
    step, staircase, relu = weight_decay
    decays = {"step": step, "staircase": staircase, "relu": relu, "saturated_relu": relu}
    return {activation: dict(shared, weight_decay=decay) for activation, decay in decays.items()}


_RESNET18_RECIPE = _paper_recipe((5e-7, 1e-5, 1e-4), optimizer="sgd", learning_rate=0.1, momentum=0.9,
                                 batch_size=256, epochs=90, lr_decay_epochs=(30, 60))
_CIFAR = (32, 32, 3)
_IMAGENET = (224, 224, 3)

MODELS = {
    # Two 2x2 pools after conv1 (pad 3, 5x5): a side of 2 leaves them one pixel.
    "convnet4": ModelSpec(
        convnet4, input_shape=_CIFAR, min_input_side=2, staircase_steps=3,
        paper_recipe=_paper_recipe((5e-4, 5e-4, 5e-4), optimizer="adam", learning_rate=2.5e-4,
                                   batch_size=64, epochs=300, lr_decay_epochs=(200, 250))),
    "convnet8": ModelSpec(
        convnet8, input_shape=_CIFAR, min_input_side=CONVNET8_MIN_INPUT_SIZE, staircase_steps=3,
        paper_recipe=_paper_recipe((5e-4, 5e-4, 5e-4), optimizer="adam", learning_rate=1e-3,
                                   batch_size=64, epochs=300, lr_decay_epochs=(200, 250))),
    "alexnet": ModelSpec(
        alexnet, input_shape=_IMAGENET, min_input_side=ALEXNET_MIN_INPUT_SIZE, staircase_steps=3,
        paper_recipe=_paper_recipe((5e-6, 5e-5, 5e-4), optimizer="adam", learning_rate=1e-4,
                                   batch_size=128, epochs=80, lr_decay_epochs=(56, 64))),
    "resnet18": ModelSpec(
        resnet18, input_shape=_IMAGENET, min_input_side=1, staircase_steps=5,
        paper_recipe=_RESNET18_RECIPE, has_stem=True),
    "resnet34": ModelSpec(resnet34, input_shape=_IMAGENET, min_input_side=1, staircase_steps=5, has_stem=True),
    # Not in the paper: ResNet-18's recipe, so that it compares with ResNet-18 like for like.
    "bireal_resnet18": ModelSpec(
        bireal_resnet18, input_shape=_IMAGENET, min_input_side=1, staircase_steps=5,
        paper_recipe=_RESNET18_RECIPE, recipe_of="resnet18", has_stem=True),
    # Not in the paper: 32x32 images on a microcontroller (train with --recipe=none).
    "micro_convnet": ModelSpec(micro_convnet, input_shape=_CIFAR, min_input_side=8, staircase_steps=3),
}
"""`{name: ModelSpec}` of every network, in the order of the table above."""
MODEL_NAMES = tuple(MODELS)
"""The names `get_model` accepts."""


def get_spec(name):
    """The ``ModelSpec`` of ``name``; ValueError listing the valid names if there is none."""
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; valid names are "
            f"{', '.join(repr(valid) for valid in MODEL_NAMES)}"
        )
    return MODELS[name]


def get_model(name, /, activation="step", target_loss="soft_hinge",
              steps=None, scale_by_grad=True, weight_decay=0.0, **kwargs):
    """Build model ``name`` with hidden activation ``activation``.

    Args:
        name: one of ``MODEL_NAMES`` (positional only, so that ``name=`` can
            pass a Keras model name to the builder).
        activation: one of ``models.ACTIVATION_NAMES``, or a zero-argument
            layer factory (then ``target_loss``, ``steps`` and
            ``scale_by_grad`` are not used).
        target_loss: the FTPROP target loss of "step" and "staircase" (any
            name of ``keras_ftprop.target_losses.names()``).
        steps: staircase steps; None means the paper's value for this model.
        scale_by_grad: weight each unit's target loss by |upstream gradient|.
        weight_decay: coupled (PyTorch-style) L2 weight decay, see
            [models.regularization][].
        **kwargs: passed to the builder (``input_shape``, ``classes``,
            ``include_top``, ``classifier_activation``, ``name``,
            ``batch_norm_weight_decay``, ...).

    Raises:
        ValueError: unknown model, activation or target loss name.
    """
    spec = get_spec(name)
    if callable(activation):
        factory = activation
    else:
        factory = activation_factory(
            activation, target_loss=target_loss,
            steps=spec.staircase_steps if steps is None else steps,
            scale_by_grad=scale_by_grad)
    return spec.builder(activation=factory, weight_decay=weight_decay, **kwargs)
