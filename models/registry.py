"""``get_model``: build a paper network by name.

    name        builder                    default input   staircase steps
    "convnet4"  models.convnets.convnet4   32x32x3         3
    "convnet8"  models.convnets.convnet8   32x32x3         3
    "alexnet"   models.alexnet.alexnet     224x224x3       3
    "resnet18"  models.resnet.resnet18     224x224x3       5
    "resnet34"  models.resnet.resnet34     224x224x3       5 (not in the paper)
"""

from models.activations import activation_factory
from models.alexnet import alexnet
from models.convnets import convnet4, convnet8
from models.resnet import resnet18, resnet34

BUILDERS = {
    "convnet4": convnet4,
    "convnet8": convnet8,
    "alexnet": alexnet,
    "resnet18": resnet18,
    "resnet34": resnet34,
}
MODEL_NAMES = tuple(BUILDERS)

# The paper's staircase: 3 steps (4 levels, "2-bit") for the CIFAR nets and
# AlexNet, 5 steps (6 levels) for ResNet-18.
DEFAULT_STAIRCASE_STEPS = {
    "convnet4": 3,
    "convnet8": 3,
    "alexnet": 3,
    "resnet18": 5,
    "resnet34": 5,
}


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
            :mod:`models.regularization`.
        **kwargs: passed to the builder (``input_shape``, ``classes``,
            ``include_top``, ``classifier_activation``, ``name``, ...).

    Raises:
        ValueError: unknown model, activation or target loss name.
    """
    if name not in BUILDERS:
        raise ValueError(
            f"unknown model {name!r}; valid names are "
            f"{', '.join(repr(valid) for valid in MODEL_NAMES)}"
        )
    if callable(activation):
        factory = activation
    else:
        if steps is None:
            steps = DEFAULT_STAIRCASE_STEPS[name]
        factory = activation_factory(activation, target_loss=target_loss,
                                     steps=steps, scale_by_grad=scale_by_grad)
    return BUILDERS[name](activation=factory, weight_decay=weight_decay,
                          **kwargs)
