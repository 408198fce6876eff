"""A user-defined target loss, importable by tests and by the fresh processes they start."""

import keras
import tensorflow as tf

from keras_ftprop import target_losses


@keras.saving.register_keras_serializable(package="keras_ftprop_tests")
class Cubic(target_losses.TargetLoss):
    """L(z, t) = max(1 - z t, 0)^3 / 3; dL/dz = -t max(1 - z t, 0)^2 (taken by TensorFlow)."""

    def __call__(self, z, t):
        return tf.pow(tf.nn.relu(1.0 - z * t), 3) / 3.0
