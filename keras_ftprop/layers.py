"""Keras layers around [`keras_ftprop.ops`][keras_ftprop.ops]: thin, serializable, usable as ``activation=``."""

import functools

import keras

from keras_ftprop import ops, target_losses
from keras_ftprop.diagnostics import TargetStatistics
from keras_ftprop.recompute import batch_norm_threshold, threshold_of

__all__ = ["HardThreshold", "Staircase", "SaturatedReLU", "BatchNormThreshold", "leaf_layers"]

_PACKAGE = "keras_ftprop"


class _Activation(keras.layers.Layer):
    """Elementwise activation: casts non-floating inputs to the compute dtype, keeps the shape."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def _floating(self, inputs):
        if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(inputs.dtype)):
            inputs = keras.ops.cast(inputs, self.compute_dtype)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


class _Threshold(_Activation):
    """A step or staircase: in training its output passes through its
    [`TargetStatistics`][keras_ftprop.diagnostics.TargetStatistics]."""

    def build(self, input_shape):
        super().build(input_shape)
        self.target_statistics = TargetStatistics(self)

    def call(self, inputs, training=None):
        return self.threshold(inputs, training=training)

    def threshold(self, inputs, training=False, observed=None):
        """The activation of ``inputs``; in training, with the target statistics in its backward pass.

        ``observed``: what the statistics read instead of ``inputs``, a zero-argument function that
        recomputes them (``BatchNormThreshold``'s backward), called only while they record.
        """
        inputs = self._floating(inputs)
        outputs = self._activation(inputs)
        if not training:
            return outputs
        return self.target_statistics.observe(inputs if observed is None else observed, outputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HardThreshold(_Threshold):
    """Step activation h = +1 if x > 0 else -1 (``zero_one``: h = 1[x > 0]), trained by FTPROP-MB.

    Backward: grad_x = w * dL/dz(x, t), t = sign(-g), w = |g| (``scale_by_grad``)
    or 1[g != 0] / batch_size, L the ``target_loss`` (default ``"soft_hinge"``, FTP-SH).
    """

    def __init__(self, target_loss="soft_hinge", scale_by_grad=True, zero_one=False, **kwargs):
        super().__init__(**kwargs)
        self.target_loss = target_losses.get(target_loss)
        self.scale_by_grad = bool(scale_by_grad)
        self.zero_one = bool(zero_one)

    def _activation(self, inputs):
        return ops.hard_threshold(
            inputs, target_loss=self.target_loss, scale_by_grad=self.scale_by_grad, zero_one=self.zero_one
        )

    def target_unit(self, inputs):
        """The unit the target loss sees: u = x."""
        return inputs

    def get_config(self):
        return {
            **super().get_config(),
            "target_loss": target_losses.serialize(self.target_loss),
            "scale_by_grad": self.scale_by_grad,
            "zero_one": self.zero_one,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Staircase(_Threshold):
    """Quantized ReLU with ``steps + 1`` levels on [low, high], trained by FTPROP-MB.

    y = (clip(ceil(x' (n - 1)), 0, n) / n) (b - a) + a,  x' = (x - a) / (b - a);
    backward: the target loss on the centred unit u = 2 x' - 1
    (see [`keras_ftprop.ops.staircase`][keras_ftprop.ops.staircase]).
    ``steps=3`` gives the paper's 2-bit {0, 1/3, 2/3, 1}.
    """

    def __init__(self, steps=3, target_loss="soft_hinge", scale_by_grad=True, low=0.0, high=1.0, **kwargs):
        super().__init__(**kwargs)
        self.steps, self.low, self.high = ops.check_staircase_args(steps, low, high)
        self.target_loss = target_losses.get(target_loss)
        self.scale_by_grad = bool(scale_by_grad)

    def _activation(self, inputs):
        return ops.staircase(
            inputs,
            steps=self.steps,
            target_loss=self.target_loss,
            scale_by_grad=self.scale_by_grad,
            low=self.low,
            high=self.high,
        )

    def target_unit(self, inputs):
        """The unit the target loss sees: u = 2 x' - 1, x' = (x - a) / (b - a)."""
        return 2.0 * (inputs - self.low) / (self.high - self.low) - 1.0

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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormThreshold(keras.layers.BatchNormalization):
    """Batch normalization followed by a HardThreshold or Staircase, keeping only the batch norm's input.

    h = activation(x [+ r]),  x = gamma (z - mean) / sqrt(var + epsilon) + beta

    with z the input and r an optional residual (call it on ``[z, r]``). The
    weights, the statistics and their update (once per training step) are those
    of ``keras.layers.BatchNormalization``, and so are the forward pass and the
    gradients: those of the plain ``BatchNormalization`` -> (``Add``) ->
    ``activation``. In training the backward pass recomputes x from z and the
    batch statistics (see [`keras_ftprop.recompute`][keras_ftprop.recompute]) instead of keeping it, so
    the pair keeps what batch norm alone keeps (z, and r if given), like batch
    norm followed by ReLU. Inference uses the moving statistics, as
    ``BatchNormalization`` does.

    Args:
      activation: a ``HardThreshold`` or ``Staircase`` layer (or its config); its
        name, target loss and options are kept.
      **kwargs: ``keras.layers.BatchNormalization`` arguments (``renorm`` is not supported).
    """

    def __init__(self, activation, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError("BatchNormThreshold does not support renorm=True.")
        super().__init__(**kwargs)
        if isinstance(activation, dict):
            activation = keras.saving.deserialize_keras_object(activation)
        if not isinstance(activation, (HardThreshold, Staircase)):
            raise ValueError(
                f"BatchNormThreshold needs a HardThreshold or Staircase activation; got {activation!r}. "
                "Other activations keep nothing extra: use BatchNormalization followed by the activation."
            )
        self.activation = activation

    @property
    def target_loss(self):
        return self.activation.target_loss

    @property
    def scale_by_grad(self):
        return self.activation.scale_by_grad

    def build(self, input_shape):
        residual = isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple))
        super().build(input_shape[0] if residual else input_shape)
        if residual:
            self.input_spec = None
        self.activation.build(input_shape[0] if residual else input_shape)

    def compute_output_shape(self, input_shape):
        residual = isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple))
        return tuple(input_shape[0] if residual else input_shape)

    def compute_mask(self, inputs, mask=None):
        return None

    def _split(self, inputs):
        if isinstance(inputs, (list, tuple)):
            z, residual = inputs
            return z, residual
        return inputs, None

    def _normalize(self, z, mean, variance, gamma, beta, residual):
        """x = BatchNormalization's output (+ r), in the compute dtype, by the ops the plain layers use."""
        x = keras.ops.batch_normalization(
            z, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        x = keras.ops.cast(x, self.compute_dtype)
        return x if residual is None else keras.ops.add(x, residual)

    def pre_activation(self, inputs, training=False):
        """x (+ r): the activation's input, with the batch statistics (training) or the moving ones."""
        z, residual = self._split(inputs)
        z = keras.ops.cast(z, keras.backend.result_type(z.dtype, "float32"))
        if training and self.trainable:
            mean, variance = keras.ops.moments(z, axes=self._axes(z), synchronized=self.synchronized)
        else:
            mean, variance = (keras.ops.cast(v, z.dtype) for v in (self.moving_mean, self.moving_variance))
        return self._normalize(z, mean, variance, *self._affine(z.dtype), residual)

    def _axes(self, z):
        return [axis for axis in range(len(z.shape)) if axis != self.axis % len(z.shape)]

    def _affine(self, dtype):
        gamma = keras.ops.cast(self.gamma, dtype) if self.scale else None
        beta = keras.ops.cast(self.beta, dtype) if self.center else None
        return gamma, beta

    def call(self, inputs, training=None, mask=None):
        z, residual = self._split(inputs)
        if not (training and self.trainable):
            return self._threshold(self.pre_activation(inputs, training=False))
        dtype = keras.backend.result_type(z.dtype, "float32")
        gamma, beta = self._affine(dtype)
        names = [name for name, t in (("gamma", gamma), ("beta", beta), ("residual", residual)) if t is not None]

        def pre_activation(z, *tensors):
            given = dict(zip(names, tensors))
            z = keras.ops.cast(z, dtype)  # inside: the backward keeps z as given (float16 under mixed precision)
            mean, variance = keras.ops.moments(z, axes=self._axes(z), synchronized=self.synchronized)
            x = self._normalize(z, mean, variance, given.get("gamma"), given.get("beta"), given.get("residual"))
            return x, (mean, variance)

        tensors = [t for t in (gamma, beta, residual) if t is not None]
        # The threshold's target statistics come from the backward's recomputed x.
        threshold = functools.partial(self._threshold, training=True)
        if self.synchronized:  # moments over all replicas: recomputed, all-reduce included, in the backward
            outputs, (mean, variance) = threshold_of(pre_activation, threshold, [z, *tensors])
        else:  # the forward's moments reused by batch norm's backward in closed form
            outputs, (mean, variance) = self._threshold_of_moments(threshold, z, dtype, gamma, beta, residual)
        momentum = self.momentum
        self.moving_mean.assign(keras.ops.cast(self.moving_mean, dtype) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            keras.ops.cast(self.moving_variance, dtype) * momentum + variance * (1.0 - momentum)
        )
        return outputs

    def _threshold_of_moments(self, threshold, z, dtype, gamma, beta, residual):
        """(h, (mean, variance)) with the batch moments computed once (see ``recompute.batch_norm_threshold``)."""
        z_float = keras.ops.cast(z, dtype)
        axes = self._axes(z_float)
        mean, variance = keras.ops.moments(z_float, axes=axes)
        h = batch_norm_threshold(threshold, self._normalize, z, mean, variance, axes=axes, epsilon=self.epsilon,
                                 gamma=gamma, beta=beta, residual=residual, lazy_x=True)
        return h, (mean, variance)

    def _threshold(self, x, x_again=None, training=False):
        """The activation's forward and FTPROP backward (no Keras wrapping); ``x_again``: a function
        recomputing x for the target statistics (see ``_Threshold.threshold``)."""
        return self.activation.threshold(x, training=training, observed=x_again)

    def get_config(self):
        return {**super().get_config(), "activation": keras.saving.serialize_keras_object(self.activation)}


def leaf_layers(model):
    """The layers of ``model``, with nested models replaced by their own layers."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer
