"""Exact logits: the int8 output layer writes the same codes on every runtime and in the quantization-aware copy.

A linear Dense layer that computes the model's output from a threshold's codes, or from an exact average pool of
a step's (``keras_ftprop.deploy.pools``), codes minus the zero point multiples of m (so the input unit is
u = s_in m), accumulates acc = b_q + m U (U an integer) and writes

    q = z + round(M_c acc),  M_c = s_in s_c / s_out   (clamped to [-128, 127]).

The export puts channel c's kernel on the grid s_c = s_out / (n_c u), n_c a positive integer, so that
M_c = 1 / (m n_c), and its bias on b_q = rho (mod m), rho = floor((m n_c + m) / 2) mod m: every value
M_c acc then lies at least d / (m n_c) from a rounding boundary, d >= (m - 1) / 2 accumulator units.
TFLite's fixed-point requantization errs by at most one accumulator unit (its high multiply rounds first),
XNNPACK's float32 one (and both through the scales' float32 rounding) by a relative 2^-21.7, at most 2^-13 at
|M_c acc| <= 256, the converter's float32 rounding of b_q by |b_q| 2^-21 units, and the copy not at all (it
rounds (m U + b_q) / (m n_c) in float64): with m n_c 2^-13 <= (m - 3) / 4 and |b_q| 2^-21 < (m - 3) / 4
they all round alike.

    n_c = min(floor(s_out / (u max|w_c| / 127)), max_steps(m)) >= 1: s_c >= max|w_c| / 127, codes in
    [-127, 127], the channel's largest weight on code +-127 (so that the converter's per-channel scale,
    max|w_q| / 127, is s_c exactly)

The output range is the calibrated one, widened where needed so that n_c >= 1 in every channel
(``output_range``). Where some n_c falls below MIN_STEPS (a quantization-aware copy: MIN_COPY_STEPS), the
grids would move a logit by up to 127 / n_c^2 codes, and the logits stay a plain requantization
(``coarse_grid``). The converter quantizes a dense kernel per channel from TensorFlow 2.17 on, per tensor
before (``DENSE_PER_CHANNEL``); per tensor, every channel shares one n and one s = s_out / (n u),
n = floor(s_out / (u max|w| / 127)), and the largest weight of the kernel takes code +-127.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop.deploy.graph import graph, grid_origin, only_input
from keras_ftprop.deploy.grids import KERNEL_LEVELS, grid_of, nudged_range
from keras_ftprop.deploy.pools import ExactGlobalAveragePooling2D, pooled_grid
from keras_ftprop.deploy.thresholds import is_threshold

# The TFLite converter of TensorFlow 2.17 and later quantizes a dense kernel per output channel, earlier ones
# per tensor.
DENSE_PER_CHANNEL = tuple(int(part) for part in tf.__version__.split(".")[:2]) >= (2, 17)
# Below this n_c the largest weight may move by up to 1/n_c and a logit by up to 127 / n_c^2 output codes (a
# logit range small against the weights): the export of a float model keeps a plain requantization there, and
# a quantization-aware copy below MIN_COPY_STEPS (its fine-tune absorbs the move: at most 2 codes).
MIN_STEPS = 16
MIN_COPY_STEPS = 8
MIN_INPUT_STEP = 5  # m: fewer codes between input levels leave no room for fixed point's first rounding


@dataclasses.dataclass(frozen=True)
class LogitSite:
    """The Dense layer that computes the model's output from a threshold's codes."""

    producer: str  # the Dense layer
    input_scale: float  # s_in
    input_step: int  # m


def max_steps(input_step):
    """The largest n_c with m n_c 2^-13 <= (m - 3) / 4 (half the room that d = (m - 1) / 2 leaves beyond
    fixed point's one unit; the bias rounding has the other half)."""
    return int((input_step - 3) * 2**11 // input_step)


def logit_site(model, output=None, pools=False):
    """(LogitSite, None) of the layer computing ``output`` (default: the model's output), or (None, why not).

    Its input: a threshold's codes, or a global average pool of a step's on its exact grid
    (``keras_ftprop.deploy.pools``); ``pools``: also such a pool not yet rounded onto it (a copy rounds it)."""
    producers, consumers = graph(model)
    tensor = model.outputs[0] if output is None else output
    layer = producers.get(id(tensor))
    if type(layer) is not keras.layers.Dense:
        return None, "the output is not computed by a Dense layer"
    if layer.activation not in (None, keras.activations.linear):
        return None, f"{layer.name!r} has an activation"
    if consumers[id(tensor)] != 1:  # the model's output, or the one layer that rounds it
        return None, f"{layer.name!r}'s output is also read by another layer"
    source = grid_origin(only_input(layer), producers)
    pooled = pooled_grid(source, producers)
    if pooled is not None:
        if not (pools or isinstance(source, ExactGlobalAveragePooling2D)):
            return None, f"{layer.name!r} reads an average pool whose int8 grid is calibrated"
        scale, step = pooled
    elif is_threshold(source):
        scale, step, _ = grid_of(source)
    else:
        return None, f"{layer.name!r} does not read a threshold's codes"
    if step < MIN_INPUT_STEP:
        return None, f"{layer.name!r} reads codes {step} apart (at least {MIN_INPUT_STEP} are needed)"
    return LogitSite(layer.name, scale, step), None


def output_range(low, high, kernel, site):
    """The int8 [min, max] of the logits: ``nudged_range`` of the calibrated [low, high], scaled up where
    needed so that s_out >= u max|w| / 127 (every n_c >= 1)."""
    low, high = nudged_range(low, high)
    needed = site.input_scale * site.input_step * float(np.max(np.abs(kernel))) / KERNEL_LEVELS
    if (high - low) / 255.0 < needed:
        factor = needed * 255.0 / (high - low) * (1 + 1e-6)
        low, high = nudged_range(low * factor, high * factor)
    return low, high


def coarse_grid(kernel, site, output_scale, min_steps=MIN_STEPS, per_channel=DENSE_PER_CHANNEL):
    """"" if every channel's n_c = floor(s_out / (u max|w_c| / 127)) is at least ``min_steps``, else why not."""
    steps = np.asarray(logit_weights(kernel, None, site.input_scale, site.input_step, output_scale, per_channel)[5])
    if steps.min() >= min_steps:  # n_c as logit_weights clips it, to [1, max_steps(m) >= 819]
        return ""
    return (f"n_c = {int(steps.min())} < {min_steps} in {site.producer!r}: its logit range is small against its "
            "weights, and the exact grids would move a logit by up to 127 / n_c^2 codes")


def on_grid(kernel, bias, site, output_scale):
    """Whether ``kernel`` and ``bias`` already lie on ``logit_weights``' grids (a quantization-aware copy made
    with exact logits writes them so)."""
    kernel_q, bias_q = logit_weights(kernel, bias, site.input_scale, site.input_step, output_scale)[:2]
    bias = np.zeros(np.shape(kernel)[-1], np.float32) if bias is None else np.asarray(bias)
    return bool(np.array_equal(np.asarray(kernel_q), np.asarray(kernel)) and np.array_equal(np.asarray(bias_q), bias))


def logit_weights(kernel, bias, input_scale, input_step, output_scale, per_channel=DENSE_PER_CHANNEL):
    """(w_q, b_q s_in s_c, codes, s_c, b_q, n_c) of the output layer (see the module docstring); TensorFlow ops,
    float32 kernel values and float64 bias codes, one s_c and n_c per channel (the kernel's last axis; all equal
    unless ``per_channel``). ``bias`` None: a zero bias. The same grids make a convolution's requantization
    exact (``keras_ftprop.deploy.operands``)."""
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    unit = input_scale * input_step
    largest = tf.reduce_max(tf.abs(kernel), axis=list(range(len(kernel.shape) - 1)))
    if not per_channel:
        largest = tf.fill(tf.shape(largest), tf.reduce_max(largest))
    natural = tf.maximum(largest, 1e-30) / KERNEL_LEVELS
    steps = tf.clip_by_value(tf.floor(output_scale / (unit * natural) * (1 + 1e-6)), 1.0,
                             float(max_steps(input_step)))
    scale = output_scale / (steps * unit)
    codes = tf.clip_by_value(tf.round(kernel / scale), -KERNEL_LEVELS, KERNEL_LEVELS)
    codes = tf.where((tf.abs(kernel) >= largest) & (kernel != 0), tf.sign(kernel) * KERNEL_LEVELS, codes)
    m = float(input_step)
    bias = tf.zeros_like(largest) if bias is None else tf.convert_to_tensor(bias, tf.float32)
    natural_bias = tf.cast(bias, tf.float64) / (input_scale * tf.cast(scale, tf.float64))
    rho = tf.math.floormod(tf.floor((m * tf.cast(steps, tf.float64) + m) / 2), m)
    bias_codes = rho + m * tf.round((natural_bias - rho) / m)
    bias_values = tf.cast(bias_codes * input_scale * tf.cast(scale, tf.float64), tf.float32)
    return codes * scale, bias_values, codes, scale, bias_codes, steps


def bias_error(bias_codes, input_step):
    """"" if the converter's float32 rounding of every bias code b_q (within |b_q| 2^-21 units) stays inside
    the room left for it, (m - 3) / 4 accumulator units; else why the logits are not exact."""
    largest = float(np.max(np.abs(bias_codes)))
    if largest * 2.0**-21 < (input_step - 3) / 4:
        return ""
    return (f"a bias of {largest:.0f} accumulator units, which the converter's float32 rounding may move by "
            f"more than the {(input_step - 3) / 4:g} units of room")


def exact_codes(inputs, codes, bias_codes, steps, input_scale, input_step, output_scale, linear=None):
    """The copy's logits s_out round((m U + b_q) / (m n_c)), U = linear(round(x / u), codes) (default: a
    matrix product), in float64."""
    levels = tf.round(tf.cast(inputs, tf.float32) / (input_scale * input_step))
    total = tf.tensordot(levels, codes, axes=1) if linear is None else linear(levels, codes)
    total = tf.cast(total, tf.float64)  # integers below 2^24: exact
    m = float(input_step)
    code = tf.round((m * total + bias_codes) / (m * tf.cast(steps, tf.float64)))
    return tf.cast(code * output_scale, tf.float32)
