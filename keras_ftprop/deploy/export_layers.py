"""The layers of the forward-only model the converter sees: thresholds as TFLite builtins, ranges pinned.

    threshold       y = levels[sum_k 1[x > t_k]] as nested selects (GREATER + SELECT_V2), or for int8 on a
                    4-D input one 1x1 depthwise convolution whose requantization rounds between the
                    thresholds' codes (``requantized_compare``)
    fused output    the clamp of a threshold fused into its producer's requantization, and its int8 range
    requantize      a fused staircase's levels onto the threshold's own grid (an int8 LEAKY_RELU)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ftprop.deploy.grids import output_range_of, pinned_range
from keras_ftprop.deploy.thresholds import THRESHOLD_TYPES, levels_of, thresholds_of


def requantized_onto(x, output_range):
    """``x`` (levels, all >= 0) on the int8 grid ``output_range`` by an int8 LEAKY_RELU, the identity on them."""
    x = tf.nn.leaky_relu(tf.cast(x, tf.float32), alpha=0.5)
    return tf.quantization.fake_quant_with_min_max_args(x, *output_range, num_bits=8)


class ExportThreshold(keras.layers.Layer):
    """Forward-only thresholds: y = levels[sum_k 1[x > t_k]] as nested selects, ranges pinned for int8.

    ``requantize`` (int8, pinned input, 4-D input): the same function of the input's int8 code as one 1x1
    depthwise convolution whose requantization rounds between the codes of the thresholds
    (``requantized_compare``), for a staircase followed by an int8 LEAKY_RELU onto its grid; where that
    does not apply, the selects.
    """

    def __init__(self, thresholds, levels, output_range=None, input_range=None, requantize=False, **kwargs):
        super().__init__(**kwargs)
        self.thresholds = [float(t) for t in thresholds]
        self.levels = [float(v) for v in levels]
        self.output_range = output_range
        self.input_range = input_range
        self.requantized = None
        if requantize and input_range is not None and output_range is not None:
            self.requantized = requantized_compare(self.thresholds, self.levels, input_range)

    def call(self, x):
        x = tf.cast(x, tf.float32)
        if self.input_range is not None:
            x = tf.quantization.fake_quant_with_min_max_args(x, *self.input_range, num_bits=8)
        if self.requantized is not None and x.shape.rank == 4:
            return self._by_requantization(x)
        thresholds = [tf.constant(t, tf.float32) for t in self.thresholds]
        if self.input_range is not None:  # the thresholds are codes of the input's grid: integer compares
            thresholds = [tf.quantization.fake_quant_with_min_max_args(t, *self.input_range, num_bits=8)
                          for t in thresholds]
        y = tf.where(x > thresholds[0], self.levels[1], self.levels[0])
        for threshold, level in zip(thresholds[1:], self.levels[2:]):
            y = tf.where(x > threshold, level, y)
        if self.output_range is not None:
            y = tf.quantization.fake_quant_with_min_max_args(y, *self.output_range, num_bits=8)
        return y

    def _by_requantization(self, x):
        kernel, bias, clamp, levels_range = self.requantized
        channels = x.shape[-1]
        kernel = tf.fill([1, 1, channels, 1], tf.constant(kernel, tf.float32))
        y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")
        y = y + tf.fill([channels], tf.constant(bias, tf.float32))
        if levels_range is None:  # a step: straight onto its grid
            y = tf.clip_by_value(y, -1.0, 1.0) if clamp == "n1_to_1" else tf.nn.relu(y)
            return tf.quantization.fake_quant_with_min_max_args(y, *self.output_range, num_bits=8)
        y = tf.quantization.fake_quant_with_min_max_args(tf.nn.relu(y), *levels_range, num_bits=8)
        return requantized_onto(y, self.output_range)

    def compute_output_shape(self, input_shape):
        return input_shape


def requantized_compare(thresholds, levels, input_range):
    """(kernel, bias, clamp, levels range or None) of a 1x1 depthwise convolution computing the threshold
    from its input's int8 code q, or None where it does not apply.

    Level k + 1 iff q > c_k (c_k the code of t_k). With the kernel's code 127 and the requantization
    v = M (127 (q - z_in) + B): a staircase (levels from 0) writes one code per level, M = 1 / (127 p)
    (p = c_1 - c_0 codes between thresholds, the real kernel (n - 1) / n) and B = 127 (z_in - c_0 - 1/2)
    + 127 p / 2, so that the rounding boundaries of v lie between the codes c_k and c_k + 1, then RELU and
    the int8 maximum clamp it to levels 0..n; a step has M = 4 (8 for {0, 1}) and B = 127 (z_in - c_0 - 1/2),
    beyond its output range one code away from c_0, clamped by RELU_N1_TO_1 (RELU).
    """
    low, high = input_range
    s_in = (high - low) / 255.0
    z_in = round(-128 - low / s_in)
    codes = [z_in + t / s_in for t in thresholds]
    if any(abs(c - round(c)) > 1e-6 for c in codes):
        return None
    codes = [round(c) for c in codes]
    n = len(thresholds)
    if n > 1 and levels[0] == 0.0:  # a staircase on [0, b]
        p = codes[1] - codes[0]
        if any(b - a != p for a, b in zip(codes, codes[1:])):
            return None
        s_out = levels[1] - levels[0]
        multiplier, bias_code = 1.0 / (127 * p), round(127 * (z_in - codes[0] - 0.5) + 127 * p / 2)
        levels_range = (-(255 - n) * s_out, n * s_out)
        clamp = "relu"
    elif n == 1 and levels in ([-1.0, 1.0], [0.0, 1.0]):  # a step
        low_level = levels[0]
        s_out = (1.0 / 127) if low_level == -1.0 else (1.0 / 255)
        multiplier, bias_code = (4.0 if low_level == -1.0 else 8.0), round(127 * (z_in - codes[0] - 0.5))
        levels_range, clamp = None, ("n1_to_1" if low_level == -1.0 else "relu")
    else:
        return None
    s_w = multiplier * s_out / s_in
    return float(127 * s_w), float(bias_code * s_in * s_w), clamp, levels_range


def rewrite(layer, int8, max_abs, requantize=True):
    """The export layer of threshold ``layer``, named as it: for int8 its output range pinned to
    ``output_range_of(layer)`` and, given the calibrated max |input| ``max_abs``, its input to ``pinned_range``
    (None: the converter's calibrated input range); ``requantize``: a depthwise requantization where it applies.
    """
    thresholds, (levels, _) = thresholds_of(layer), levels_of(layer)
    output_range = input_range = None
    if int8:
        output_range = output_range_of(layer)
        if max_abs is not None:
            input_range = pinned_range(thresholds, max_abs)
    return ExportThreshold(thresholds, levels, output_range, input_range, requantize=int8 and requantize,
                           name=layer.name)


# Threshold type -> function(layer, int8, max_abs) -> export layer (one function for all: the thresholds and
# levels come from ``thresholds_of`` and ``levels_of``).
REWRITES = dict.fromkeys(THRESHOLD_TYPES, rewrite)


def export_threshold(threshold, input_range):
    """The int8 export's forward of ``threshold`` with its input pinned to ``input_range``, as selects."""
    return ExportThreshold(thresholds_of(threshold), levels_of(threshold)[0], output_range_of(threshold),
                           input_range, name=f"{threshold.name}_int8")


class ExportFusedOutput(keras.layers.Layer):
    """The output side of a fused threshold: the clamp the converter fuses into the producer, and its int8 range.

    ``clamp``: "n1_to_1" (a {-1, 1} step: RELU_N1_TO_1) or "relu" (a {0, 1} step, whose 1 saturates the
    range; a staircase, one code per level, whose top level is the int8 maximum).
    """

    def __init__(self, clamp, output_range, **kwargs):
        super().__init__(**kwargs)
        self.clamp, self.output_range = clamp, output_range

    def call(self, x):
        x = tf.cast(x, tf.float32)
        x = tf.clip_by_value(x, -1.0, 1.0) if self.clamp == "n1_to_1" else tf.nn.relu(x)
        return tf.quantization.fake_quant_with_min_max_args(x, *self.output_range, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape


class ExportRequantize(keras.layers.Layer):
    """A fused staircase's levels (one code each, all >= 0) onto the threshold's own grid, right after the
    producer: ``requantized_onto``, an int8 LEAKY_RELU (the identity on levels >= 0) whose output has the grid's
    scale. XNNPACK runs it; a bare second fake quant would be merged into the first by the converter, and a
    RELU is not delegated."""

    def __init__(self, output_range, **kwargs):
        super().__init__(**kwargs)
        self.output_range = output_range

    def call(self, x):
        return requantized_onto(x, self.output_range)

    def compute_output_shape(self, input_shape):
        return input_shape
