"""The networks of Friesen & Domingos (ICLR 2018) as Keras functional builders.

Not part of the installed ``keras_ftprop`` package: import it from the root of
a checkout. ``get_model`` builds any of them by name; the builders take a
zero-argument ``activation`` factory so that every hidden activation is a fresh
layer::

    from models import get_model, resnet18
    from keras_ftprop import HardThreshold

    net = resnet18(activation=lambda: HardThreshold(target_loss="soft_hinge"))
    net = get_model("convnet8", activation="staircase", target_loss="sste")
"""

from models.activations import ACTIVATION_NAMES, activation_factory
from models.alexnet import alexnet
from models.convnets import convnet4, convnet8
from models.layers import PaddedMaxPooling2D
from models.registry import MODEL_NAMES, MODELS, ModelSpec, get_model, get_spec
from models.regularization import l2_weight_decay, weight_decay_penalty
from models.resnet import resnet18, resnet34

__all__ = [
    "ACTIVATION_NAMES",
    "MODELS",
    "MODEL_NAMES",
    "ModelSpec",
    "PaddedMaxPooling2D",
    "activation_factory",
    "alexnet",
    "convnet4",
    "convnet8",
    "get_model",
    "get_spec",
    "l2_weight_decay",
    "resnet18",
    "resnet34",
    "weight_decay_penalty",
]
