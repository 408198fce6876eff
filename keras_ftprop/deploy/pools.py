"""Exact average pools: a global average pool of a step's +-1 whose int8 mean is the same on every runtime.

Over N = H W positions, k of them +1, the mean is (2k - N) / N. On the grid of scale and zero point

    s = 1 / (N j),  z = 0,  j = floor(127 / N)   (N <= 127)

it is the code (2k - N) j, an integer in [-127, 127]: the int8 MEAN computes sum(q) s_in / (N s) =
127 (2k - N) j / 127 exactly, so its requantization (fixed point or float32, with or without a division by N
first) rounds an integer, and the copy's float32 mean of +-1 is exact too (``ExactGlobalAveragePooling2D``
rounds it onto the grid, as the converter records the MEAN's output). The codes are multiples of m = 2j
(N even) or j (N odd), so a Dense layer reading them can have exact logits (``keras_ftprop.deploy.logits``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.graph import grid_origin, only_input
from keras_ftprop.deploy.thresholds import levels_of


def pooled_grid(layer, producers):
    """(s, m) of the exact grid of ``layer``'s output when it is a global average pool (channels last, no
    kept dimensions) of a {-1, +1} step's codes over N <= 127 known positions; else None."""
    if not isinstance(layer, keras.layers.GlobalAveragePooling2D) or layer.keepdims \
            or layer.data_format != "channels_last":
        return None
    tensor = only_input(layer)
    source = grid_origin(tensor, producers)
    if not isinstance(source, ftprop_layers.HardThreshold) or levels_of(source)[0] != [-1.0, 1.0]:
        return None
    height, width = tensor.shape[1:3]
    if height is None or width is None or height * width > 127:
        return None
    positions = height * width
    j = 127 // positions
    return 1.0 / (positions * j), (2 * j if positions % 2 == 0 else j)


def pooled_range(scale):
    """(min, max) of the int8 grid of ``scale`` with zero point 0."""
    return -128 * scale, 127 * scale


@keras.saving.register_keras_serializable(package="keras_ftprop")
class ExactGlobalAveragePooling2D(keras.layers.GlobalAveragePooling2D):
    """``GlobalAveragePooling2D`` whose output is rounded onto the int8 grid [minimum, maximum] (``pooled_grid``'s,
    where the mean of +-1 is a code); gradient that of the mean inside the range."""

    def __init__(self, minimum, maximum, **kwargs):
        super().__init__(**kwargs)
        self.minimum, self.maximum = float(minimum), float(maximum)

    def call(self, inputs):
        return tf.quantization.fake_quant_with_min_max_args(tf.cast(super().call(inputs), tf.float32),
                                                            self.minimum, self.maximum, num_bits=8)

    def get_config(self):
        return {**super().get_config(), "minimum": self.minimum, "maximum": self.maximum}
