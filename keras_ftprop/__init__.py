"""keras-ftprop: hard-threshold and quantized activations for Keras 3, trained by
feasible target propagation (FTPROP-MB, Friesen & Domingos, ICLR 2018)."""

# First: refuses a Keras backend other than TensorFlow before any module loads Keras.
from keras_ftprop import _backend  # noqa: F401

# isort: split
from keras_ftprop import callbacks, deploy, diagnostics, ops, schedules, target_losses
from keras_ftprop.layers import BatchNormThreshold, HardThreshold, SaturatedReLU, Staircase
from keras_ftprop.pooling import PaddedMaxPooling2D
from keras_ftprop.summary import summary

__version__ = "0.1.0"

__all__ = [
    "BatchNormThreshold",
    "HardThreshold",
    "PaddedMaxPooling2D",
    "Staircase",
    "SaturatedReLU",
    "callbacks",
    "deploy",
    "diagnostics",
    "ops",
    "schedules",
    "summary",
    "target_losses",
    "__version__",
]
