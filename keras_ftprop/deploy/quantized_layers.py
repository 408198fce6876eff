"""The layers of a quantization-aware copy: each rounds what the int8 model rounds, with a TensorFlow fake-quant
op. They are saved with the copy (registered as ``keras_ftprop>FakeQuant`` etc.)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.export_layers import export_threshold
from keras_ftprop.deploy.fused_weights import staircase_decisions, step_decisions
from keras_ftprop.deploy.grids import pinned_input_range, quantized_kernel
from keras_ftprop.deploy.input_staircases import count_above, decided_levels, folded_codes, placed_affine, placement
from keras_ftprop.deploy.logits import exact_codes, logit_weights
from keras_ftprop.deploy.operands import folded_weights
from keras_ftprop.deploy.pools import ExactGlobalAveragePooling2D
from keras_ftprop.deploy.thresholds import is_threshold

_PACKAGE = "keras_ftprop"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FakeQuant(keras.layers.Layer):
    """x_q on the int8 grid of [minimum, maximum] (256 codes); gradient 1 inside the range, 0 outside."""

    def __init__(self, minimum, maximum, **kwargs):
        super().__init__(**kwargs)
        self.minimum, self.maximum = float(minimum), float(maximum)

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_args(tf.cast(x, tf.float32), self.minimum, self.maximum,
                                                            num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "minimum": self.minimum, "maximum": self.maximum}


def exact_accumulation(linear, inputs, kernel, input_unit):
    """``linear(inputs, quantized_kernel(kernel))`` whose forward value is computed from integers: with the
    inputs on a grid of step ``input_unit`` (codes minus zero point, over m, times s_in) and the kernel's codes
    c = w_q / s_w, acc = linear(inputs / input_unit, c) is a sum of integers, exact in float32 in any order
    while |acc| < 2^24, and the output is acc (input_unit s_w); the gradient is the float one's."""
    quantized = quantized_kernel(kernel)
    rounded = linear(inputs, quantized)
    if input_unit is None:
        return rounded
    axes = list(range(len(kernel.shape) - 1))
    weight_scale = tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), 1e-30) / 127.0
    codes = tf.round(quantized / weight_scale)
    exact = linear(tf.round(inputs / input_unit), codes) * (input_unit * weight_scale)
    return rounded + tf.stop_gradient(exact - rounded)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedConv2D(keras.layers.Conv2D):
    """``Conv2D`` whose kernel is ``quantized_kernel(kernel)`` (the int8 codes times their scales).

    ``input_unit``: the input's grid step s_in m where the export decides a threshold on this layer's exact
    accumulator; the forward then sums integers (``exact_accumulation``)."""

    def __init__(self, *args, input_unit=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_unit = None if input_unit is None else float(input_unit)

    def convolution_op(self, inputs, kernel):
        return exact_accumulation(super().convolution_op, inputs, kernel, self.input_unit)

    def get_config(self):
        return {**super().get_config(), "input_unit": self.input_unit}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FoldedConv2D(keras.layers.Conv2D):
    """A Conv2D and its ``batch_norm``, whose int8 model folds the batch norm into the kernel and writes the
    operand of an exact sum (``keras_ftprop.deploy.operands``; ``operand``: {"input_scale", "input_step",
    "output_scale"}):

        folded kernel w f and bias, on ``logit_weights``' grids (``folded_weights``)
        inference  s_op round((m U + b_q) / (m n_c)), computed from integers: the int8 code on every runtime
        training   batch_norm(conv(x, w_q) + b, training=True), w_q the folded grid's values over f
        gradient   straight through the roundings
    """

    def __init__(self, *args, batch_norm=None, operand=None, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(batch_norm, dict):
            batch_norm = keras.saving.deserialize_keras_object(batch_norm)
        if not isinstance(batch_norm, keras.layers.BatchNormalization) or operand is None:
            raise ValueError("FoldedConv2D needs a BatchNormalization and its operand grid")
        self.batch_norm = batch_norm
        self.operand = {"input_scale": float(operand["input_scale"]), "input_step": int(operand["input_step"]),
                        "output_scale": float(operand["output_scale"])}

    def build(self, input_shape):
        if not self.batch_norm.built:  # a deserialized one is built
            self.batch_norm.build(self.compute_output_shape(input_shape))
        super().build(input_shape)

    def folded_weights(self):
        """``operands.folded_weights`` of this layer's kernel, bias and batch norm."""
        return folded_weights(self.kernel, self.bias, self.batch_norm, **self.operand)

    def call(self, inputs, training=None):
        kernel_q, _, codes, _, bias_codes, steps, f = self.folded_weights()
        unfolded = tf.cast(tf.math.divide_no_nan(tf.cast(kernel_q, tf.float64), f), self.kernel.dtype)
        x = self.convolution_op(inputs, self.kernel + tf.stop_gradient(unfolded - self.kernel))
        if self.bias is not None:
            x = x + self.bias
        x = self.batch_norm(x, training=training)
        if training:
            return x
        exact = exact_codes(inputs, codes, bias_codes, steps, self.operand["input_scale"],
                            self.operand["input_step"], self.operand["output_scale"], linear=self.convolution_op)
        return x + tf.stop_gradient(tf.cast(exact, x.dtype) - x)

    def get_config(self):
        return {**super().get_config(), "batch_norm": keras.saving.serialize_keras_object(self.batch_norm),
                "operand": self.operand}


class _ConvAndBatchNorm(keras.layers.Conv2D):
    """A Conv2D and its ``batch_norm`` (or None) in one layer, x = batch_norm(conv(x, w_q) + b) with
    w_q = quantized_kernel(w): the base of the layers whose int8 model decides a threshold on the convolution's
    exact accumulator, with the batch norm folded in."""

    def __init__(self, *args, batch_norm=None, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(batch_norm, dict):
            batch_norm = keras.saving.deserialize_keras_object(batch_norm)
        if not (batch_norm is None or isinstance(batch_norm, keras.layers.BatchNormalization)):
            raise ValueError(f"{type(self).__name__} needs a BatchNormalization or None")
        self.batch_norm = batch_norm

    def build(self, input_shape):
        if self.batch_norm is not None and not self.batch_norm.built:  # a deserialized one is built
            self.batch_norm.build(self.compute_output_shape(input_shape))
        super().build(input_shape)

    def pre_activation(self, inputs, training):
        """(w_q, batch_norm(conv(inputs, w_q) + b))."""
        kernel_q = quantized_kernel(self.kernel)
        x = self.convolution_op(inputs, kernel_q)
        if self.bias is not None:
            x = x + self.bias
        if self.batch_norm is not None:
            x = self.batch_norm(x, training=training)
        return kernel_q, x

    def level_sum(self, inputs, kernel_q, unit):
        """U = conv(round(inputs / unit), codes of w_q): the integer accumulator over codes ``unit`` apart
        (integers below 2^24, exact in float32 in any order)."""
        axes = list(range(len(self.kernel.shape) - 1))
        codes = tf.round(kernel_q / (tf.maximum(tf.reduce_max(tf.abs(kernel_q), axis=axes), 1e-30) / 127.0))
        return self.convolution_op(tf.round(inputs / unit), codes)

    def get_config(self):
        batch_norm = None if self.batch_norm is None else keras.saving.serialize_keras_object(self.batch_norm)
        return {**super().get_config(), "batch_norm": batch_norm}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExactStepConv2D(_ConvAndBatchNorm):
    """A Conv2D and its ``batch_norm`` (or None) feeding a step that the int8 model decides on the exact
    accumulator (fused into the requantization, or compared on it); ``step``: {"input_scale", "input_step"} of
    the codes it reads.

        forward   x = batch_norm(conv(x, w_q) + b), w_q = quantized_kernel(w); in inference its sign set to the
                  export's decision (``fused_weights.step_decisions``: from the integer accumulator and the
                  export's own float64 threshold), so the step after it decides as the int8 model on any CPU
        gradient  that of x
    """

    def __init__(self, *args, step=None, **kwargs):
        super().__init__(*args, **kwargs)
        if step is None:
            raise ValueError("ExactStepConv2D needs the step's input grid")
        self.step = {"input_scale": float(step["input_scale"]), "input_step": int(step["input_step"])}

    def call(self, inputs, training=None):
        kernel_q, x = self.pre_activation(inputs, training)
        if training:
            return x
        levels_sum = self.level_sum(inputs, kernel_q, self.step["input_scale"] * self.step["input_step"])
        decided = step_decisions(levels_sum, kernel_q, self.bias, self.batch_norm, **self.step)
        tiny = tf.constant(np.finfo(np.float32).tiny, x.dtype)  # > 0, and normal: no CPU flushes it to 0
        exact = tf.where(decided, tf.where(x > 0, x, tiny), tf.where(x > 0, tf.zeros_like(x), x))
        return x + tf.stop_gradient(exact - x)

    def get_config(self):
        return {**super().get_config(), "step": self.step}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExactStaircaseConv2D(_ConvAndBatchNorm):
    """A Conv2D and its ``batch_norm`` (or None) feeding a staircase that the int8 model decides on the exact
    accumulator; ``staircase``: {"input_scale", "input_step", "input_bound"} of the codes it reads (m = 1: the
    image's grid) and the staircase's "thresholds".

        forward   x = batch_norm(conv(x, w_q) + b); on the image a x + c, whose float staircase has the
                  boundaries the export places (``input_staircases.placed_affine``; a = 1, c = 0 where it keeps
                  the float thresholds), so the copy trains on its int8 model's staircase. In inference x is
                  set, where its staircase is not the export's level L, to a value of level L (the midpoint
                  between its thresholds), so the staircase after it decides as the int8 model on any CPU. L
                  comes from the integer accumulator: ``input_staircases.decided_levels`` on the image,
                  ``fused_weights.staircase_decisions`` after a threshold's codes (m > 1)
        gradient  that of x (a, c constants)
    """

    def __init__(self, *args, staircase=None, **kwargs):
        super().__init__(*args, **kwargs)
        if staircase is None:
            raise ValueError("ExactStaircaseConv2D needs the grid of its input codes and the staircase's thresholds")
        self.staircase = {"input_scale": float(staircase["input_scale"]),
                          "input_step": int(staircase.get("input_step", 1)),
                          "input_bound": int(staircase["input_bound"]),
                          "thresholds": [float(t) for t in staircase["thresholds"]]}

    def call(self, inputs, training=None):
        kernel_q, x = self.pre_activation(inputs, training)
        scale, step, bound, thresholds = (self.staircase[key] for key in
                                          ("input_scale", "input_step", "input_bound", "thresholds"))
        if step == 1:  # the image: the boundaries the export places
            placed = placement(kernel_q, self.bias, self.batch_norm, scale, bound, thresholds)  # once for both
            a, c = placed_affine(kernel_q, self.bias, self.batch_norm, scale, bound, thresholds, placed=placed)
            x = x * tf.stop_gradient(tf.cast(a, x.dtype)) + tf.stop_gradient(tf.cast(c, x.dtype))
            if training:
                return x
            # integers below 2^24: exact in float32 in any order
            acc = self.convolution_op(tf.round(inputs / scale), tf.cast(folded_codes(kernel_q, self.batch_norm),
                                                                        inputs.dtype))
            level = decided_levels(tf.cast(acc, tf.float64), kernel_q, self.bias, self.batch_norm, scale, bound,
                                   thresholds, placed=placed)
        else:  # after a threshold's codes: the export's gates between accumulator values
            if training:
                return x
            level = staircase_decisions(self.level_sum(inputs, kernel_q, scale * step), kernel_q, self.bias,
                                        self.batch_norm, scale, step, thresholds)
        thresholds = np.array(thresholds)
        gap = np.diff(thresholds).min() if len(thresholds) > 1 else 1.0
        edges = np.concatenate([[thresholds[0] - gap], thresholds, [thresholds[-1] + gap]])
        middles = tf.constant((edges[:-1] + edges[1:]) / 2, x.dtype)  # a value of each level 0..n
        current = count_above(x, thresholds)
        exact = tf.where(current == tf.cast(level, x.dtype), x, tf.gather(middles, tf.cast(level, tf.int32)))
        return x + tf.stop_gradient(exact - x)

    def get_config(self):
        return {**super().get_config(), "staircase": self.staircase}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedDense(keras.layers.Dense):
    """``Dense`` whose kernel is ``quantized_kernel(kernel)``: y = act(x w_q + b) (``input_unit`` as for
    ``QuantizedConv2D``).

    ``logits``: {"input_scale", "input_step", "output_scale", "per_channel"} of the model's output layer that the export
    makes exact (``keras_ftprop.deploy.logits``): the kernel and bias on ``logit_weights``' grids, and the
    forward value the int8 output code s_out round((m U + b_q) / (m n_c)), computed from integers; the
    gradient straight through both roundings.
    """

    def __init__(self, *args, input_unit=None, logits=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_unit = None if input_unit is None else float(input_unit)
        self.logits = None if logits is None else {"input_scale": float(logits["input_scale"]),
                                                   "input_step": int(logits["input_step"]),
                                                   "output_scale": float(logits["output_scale"]),
                                                   "per_channel": bool(logits.get("per_channel", True))}

    def call(self, inputs, training=None):
        if self.logits is not None:
            return self._exact_logits(inputs)
        x = exact_accumulation(keras.ops.matmul, inputs, self.kernel, self.input_unit)
        if self.bias is not None:
            x = keras.ops.add(x, self.bias)
        return x if self.activation is None else self.activation(x)

    def logit_weights(self):
        """``logits.logit_weights`` of this layer's kernel and bias."""
        return logit_weights(self.kernel, self.bias, self.logits["input_scale"], self.logits["input_step"],
                             self.logits["output_scale"], self.logits["per_channel"])

    def _exact_logits(self, inputs):
        kernel_q, bias_q, codes, _, bias_codes, steps = self.logit_weights()
        kernel = self.kernel + tf.stop_gradient(kernel_q - self.kernel)
        x = keras.ops.matmul(inputs, kernel)
        if self.bias is not None:
            x = x + (self.bias + tf.stop_gradient(bias_q - self.bias))
        exact = tf.cast(exact_codes(inputs, codes, bias_codes, steps, self.logits["input_scale"],
                                    self.logits["input_step"], self.logits["output_scale"]), x.dtype)
        return x + tf.stop_gradient(exact - x)

    def get_config(self):
        return {**super().get_config(), "input_unit": self.input_unit, "logits": self.logits}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedThreshold(keras.layers.Layer):
    """A HardThreshold or Staircase that compares its input as the int8 model does.

    forward  y = h(x_q)  (the export's pinned compare, by the export's own layer)
    backward dy/dx = the threshold's own gradient at x (x_q only decides the side)

    ``max_abs``: the calibrated max|x| that fixes the threshold's pinned input range;
    ``scaled``: the export scales the step's input through the producer's weights (see ``keras_ftprop.deploy``);
    ``fused``: the export computes the threshold as its producer's requantization, on the exact accumulator:
    the forward is h(x), unrounded.
    """

    def __init__(self, threshold, max_abs, scaled, fused=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(threshold, dict):
            threshold = keras.saving.deserialize_keras_object(threshold)
        if not is_threshold(threshold):
            raise ValueError(f"QuantizedThreshold needs a HardThreshold or Staircase; got {threshold!r}")
        self.threshold = threshold
        self.max_abs, self.scaled, self.fused = float(max_abs), bool(scaled), bool(fused)
        self.input_range = None if self.fused else pinned_input_range(threshold, self.max_abs, self.scaled)
        self._compare = export_threshold(threshold, self.input_range)

    def build(self, input_shape):
        self.threshold.build(input_shape)

    def call(self, inputs):
        exact = self.threshold(inputs)  # the FTPROP backward
        rounded = self._compare(inputs)
        return tf.stop_gradient(rounded) + (exact - tf.stop_gradient(exact))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "threshold": keras.saving.serialize_keras_object(self.threshold),
                "max_abs": self.max_abs, "scaled": self.scaled, "fused": self.fused}


# The plain layers whose kernels the copy quantizes, and their quantized layers.
QUANTIZED = {keras.layers.Conv2D: QuantizedConv2D, keras.layers.Dense: QuantizedDense}


def is_quantization_aware(model):
    """Whether ``model`` holds a layer of a quantization-aware copy."""
    return any(isinstance(layer, (FakeQuant, ExactGlobalAveragePooling2D, ExactStepConv2D, FoldedConv2D,
                                  QuantizedConv2D, QuantizedDense, QuantizedThreshold))
               for layer in ftprop_layers.leaf_layers(model))
