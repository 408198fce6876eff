"""keras-ftprop: hard-threshold and quantized activations for Keras 3, trained by
feasible target propagation (FTPROP-MB, Friesen & Domingos, ICLR 2018)."""

from keras_ftprop import ops, target_losses
from keras_ftprop.layers import HardThreshold, SaturatedReLU, Staircase

__version__ = "0.1.0"

__all__ = ["HardThreshold", "Staircase", "SaturatedReLU", "ops", "target_losses", "__version__"]
