"""``PaddedMaxPooling2D``: PyTorch's ``MaxPool2d(pool_size, strides, padding)`` as a Keras layer.

PyTorch pads ``padding`` on *every* side with -inf. Keras offers neither option
directly: ``MaxPooling2D(padding="same")`` puts the whole padding after the
data (its windows are shifted by one), and ``ZeroPadding2D`` + valid pooling
lets a padded 0 beat real values whenever they are negative, which is always
the case for a step unit that outputs -1. So this layer pads by repeating the
edge rows and columns, which gives the same maxima as -inf without putting an
infinity into the graph (an int8 export would calibrate it into its range).

The paper's AlexNet and ResNets use it; it lives in the package so that their
saved ``.keras`` files load with ``keras_ftprop`` alone. Files written when it
was registered as ``ftprop_models>PaddedMaxPooling2D`` load too.
"""

import keras
from keras import ops

__all__ = ["PaddedMaxPooling2D"]


@keras.saving.register_keras_serializable(package="keras_ftprop")
class PaddedMaxPooling2D(keras.layers.Layer):
    """Max pooling with PyTorch's padding: ``MaxPool2d(pool_size, strides, padding)``.

    Output size ``floor((n + 2 * padding - pool_size) / strides) + 1``
    (``ceil_mode=False``); padded positions never change a window's max,
    whatever the sign of the inputs. PyTorch pads with -inf; this layer pads
    each side with ``padding`` copies of the edge row or column instead, which
    gives the same outputs: a window that reaches a padded position (r, c)
    also holds the real position it copies (clamp(r), clamp(c)), since
    ``padding < pool_size``. The gradient reaches the same inputs (the copies
    come first in each window only where they copy its first row or column).
    Channels-last input only.
    """

    keeps_int8_grid = True  # every output is one of its inputs: int8 export keeps their codes

    preserves_precision = True  # a max of its inputs: keras_ftprop.summary keeps their bit width

    def __init__(self, pool_size=3, strides=2, padding=1, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= padding < pool_size:
            raise ValueError(
                f"padding must be in [0, pool_size), got padding={padding} "
                f"with pool_size={pool_size}"
            )
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)

    def call(self, inputs):
        pad = self.padding
        if pad:
            top, bottom = inputs[:, :1], inputs[:, -1:]
            inputs = ops.concatenate([top] * pad + [inputs] + [bottom] * pad, axis=1)
            left, right = inputs[:, :, :1], inputs[:, :, -1:]
            inputs = ops.concatenate([left] * pad + [inputs] + [right] * pad, axis=2)
        return ops.max_pool(
            inputs, self.pool_size, self.strides, padding="valid"
        )

    def compute_output_shape(self, input_shape):
        def pooled(size):
            if size is None:
                return None
            return (size + 2 * self.padding - self.pool_size) // self.strides + 1

        batch, height, width, channels = input_shape
        return (batch, pooled(height), pooled(width), channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            pool_size=self.pool_size, strides=self.strides, padding=self.padding
        )
        return config


# The name it was saved under while it lived in the repository's models package.
keras.saving.get_custom_objects()["ftprop_models>PaddedMaxPooling2D"] = PaddedMaxPooling2D
