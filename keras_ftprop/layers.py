"""Keras layers around :mod:`keras_ftprop.ops`: thin, serializable, usable as ``activation=``."""

import keras

from keras_ftprop import ops, target_losses

__all__ = ["HardThreshold", "Staircase", "SaturatedReLU", "leaf_layers"]

_PACKAGE = "keras_ftprop"


class _Activation(keras.layers.Layer):
    """Elementwise activation: casts non-floating inputs to the compute dtype, keeps the shape."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.target_probe = None  # a keras_ftprop.diagnostics.TargetProbe while diagnostics are on

    def _floating(self, inputs):
        if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(inputs.dtype)):
            inputs = keras.ops.cast(inputs, self.compute_dtype)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HardThreshold(_Activation):
    """Step activation h = +1 if x > 0 else -1 (``zero_one``: h = 1[x > 0]), trained by FTPROP-MB.

    Backward: grad_x = w * dL/dz(x, t), t = sign(-g), w = |g| (``scale_by_grad``)
    or 1[g != 0] / batch_size, L the ``target_loss`` (default ``"soft_hinge"``, FTP-SH).
    """

    def __init__(self, target_loss="soft_hinge", scale_by_grad=True, zero_one=False, **kwargs):
        super().__init__(**kwargs)
        self.target_loss = target_losses.get(target_loss)
        self.scale_by_grad = bool(scale_by_grad)
        self.zero_one = bool(zero_one)

    def call(self, inputs):
        inputs = self._floating(inputs)
        outputs = ops.hard_threshold(
            inputs, target_loss=self.target_loss, scale_by_grad=self.scale_by_grad, zero_one=self.zero_one
        )
        if self.target_probe is None:
            return outputs
        return self.target_probe(inputs, outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "target_loss": target_losses.serialize(self.target_loss),
            "scale_by_grad": self.scale_by_grad,
            "zero_one": self.zero_one,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Staircase(_Activation):
    """Quantized ReLU with ``steps + 1`` levels on [low, high], trained by FTPROP-MB.

    y = (clip(ceil(x' (n - 1)), 0, n) / n) (b - a) + a,  x' = (x - a) / (b - a);
    backward: the target loss on the centred unit u = 2 x' - 1 (see :func:`keras_ftprop.ops.staircase`).
    ``steps=3`` gives the paper's 2-bit {0, 1/3, 2/3, 1}.
    """

    def __init__(self, steps=3, target_loss="soft_hinge", scale_by_grad=True, low=0.0, high=1.0, **kwargs):
        super().__init__(**kwargs)
        self.steps, self.low, self.high = ops.check_staircase_args(steps, low, high)
        self.target_loss = target_losses.get(target_loss)
        self.scale_by_grad = bool(scale_by_grad)

    def call(self, inputs):
        inputs = self._floating(inputs)
        outputs = ops.staircase(
            inputs,
            steps=self.steps,
            target_loss=self.target_loss,
            scale_by_grad=self.scale_by_grad,
            low=self.low,
            high=self.high,
        )
        if self.target_probe is None:
            return outputs
        return self.target_probe(2.0 * (inputs - self.low) / (self.high - self.low) - 1.0, outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "steps": self.steps,
            "target_loss": target_losses.serialize(self.target_loss),
            "scale_by_grad": self.scale_by_grad,
            "low": self.low,
            "high": self.high,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SaturatedReLU(_Activation):
    """The paper's baseline ("threshrelu"): y = min(max(x, 0), 1), ordinary gradient.

    Equivalent to ``keras.layers.ReLU(max_value=1.0)``.
    """

    def call(self, inputs):
        return ops.saturated_relu(self._floating(inputs))


def leaf_layers(model):
    """The layers of ``model``, with nested models replaced by their own layers."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer
