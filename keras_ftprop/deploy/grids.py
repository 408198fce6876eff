"""int8 grids: which real numbers an int8 tensor (real = (q - z) s) or kernel codes exactly.

* A threshold's output: ``exact_output_range``, every level a code.
* A threshold's input (``threshold_input="pinned"``): ``pinned_range``, every threshold a code; a step's
  input at 2**STEP_INPUT_BITS times the calibrated resolution (see ``keras_ftprop.deploy``).
* A calibrated tensor: ``nudged_range``, 256 codes with 0 a code (TensorFlow's fake quant and the converter's).
* A kernel: ``quantized_kernel``, s = max|w| / 127 per output channel, codes in [-127, 127].
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_ftprop.deploy.thresholds import levels_of, thresholds_of

STEP_INPUT_BITS = 7  # a step's input range is 2**7 times finer than the calibrated one
# TFLite's int8 GREATER rescales both sides to (q - z) * scale * 2**8, rounded: a scale below
# 2**-8 merges codes, so a compare's input never gets a finer scale than this.
MIN_COMPARE_SCALE = 2.0**-8
KERNEL_LEVELS = 127  # narrow range: codes -127..127, zero point 0


def exact_output_range(low, high, steps, codes=255):
    """(min, max, scale, zero_point) of an int8 range in which every point low + k (high - low)/steps is a code.

    scale = (high - low) / (steps m) for the largest m with steps m <= codes whose
    grid also codes 0 (low / scale an integer, the zero point in [-128, 127]);
    the points are centred among the 256 codes, so ``codes=253`` leaves at least
    one code beyond each end.
    """
    for m in range(codes // steps, 0, -1):
        scale = (high - low) / (steps * m)
        lowest = min(low, 0.0) / scale  # codes below the zero point
        if abs(lowest - round(lowest)) > 1e-6 or abs(low / scale - round(low / scale)) > 1e-6:
            continue
        slack = 255 - round((max(high, 0.0) - min(low, 0.0)) / scale)  # unused codes
        if slack < 255 - codes:
            continue
        zero_point = -128 - round(lowest) + (slack + 1) // 2  # centred: {-1, +1} -> -127, 127
        return (-128 - zero_point) * scale, (127 - zero_point) * scale, scale, zero_point
    raise ValueError(f"no int8 range codes every point of {steps} steps on [{low}, {high}]")


def output_range_of(layer):
    """(min, max) of the int8 grid of a threshold layer's exported output: ``exact_output_range`` of its levels."""
    levels, steps = levels_of(layer)
    low, high, _, _ = exact_output_range(levels[0], levels[-1], steps)
    return low, high


def grid_of(layer):
    """(scale, m, max |code - zero point|) of the int8 grid of a threshold layer's exported output.

    m is the gcd of the levels' codes: codes minus the zero point are multiples of m (127 for {-1, +1},
    floor(255/n) for an n-step staircase on [0, 1]).
    """
    levels, steps = levels_of(layer)
    _, _, scale, _ = exact_output_range(levels[0], levels[-1], steps)
    codes = [round(level / scale) for level in levels]
    return scale, int(np.gcd.reduce(codes)), max(abs(code) for code in codes)


def staircase_output_range(layer):
    """(min, max) of the int8 grid a fused staircase's producer writes: one code per level, level 0 the RELU's
    zero, the top level the int8 maximum (code 127 - n + k for level k)."""
    span = layer.high - layer.low
    scale = span / layer.steps
    return -(255 - layer.steps) * scale, layer.steps * scale


def indicator_sum_range(step, count):
    """(min, max) of the int8 grid of scale step / 2 whose top code, 127, is ``count`` steps: a sum of
    ``count`` indicators {0, step} of a staircase compared on its accumulator, two codes per step."""
    return -(255 - 2 * count) * step / 2, count * step


def pinned_range(thresholds, max_abs):
    """The pinned [min, max] of the input of a threshold with ``thresholds``, calibrated max |input| ``max_abs``.

    A step ([0]): [-128, 127] e with e = max(max_abs / (127 2**STEP_INPUT_BITS), MIN_COMPARE_SCALE). Otherwise
    ``exact_output_range`` of the thresholds with ``codes=253``: every threshold a code, one code beyond each end.
    """
    if thresholds == [0.0]:
        e = max(max_abs / (127.0 * 2**STEP_INPUT_BITS), MIN_COMPARE_SCALE)
        return -128.0 * e, 127.0 * e
    if len(thresholds) == 1:
        low, high, steps = min(thresholds[0], 0.0), max(thresholds[0], 0.0), 1
    else:
        low, high, steps = thresholds[0], thresholds[-1], len(thresholds) - 1
    minimum, maximum, _, _ = exact_output_range(low, high, steps, codes=253)
    return minimum, maximum


def pinned_input_range(threshold, max_abs, scaled):
    """[min, max] the export pins the input of ``threshold`` (a HardThreshold or Staircase) to.

    ``scaled``: a step whose input the export multiplies by ``k = 2**STEP_INPUT_BITS / max_abs`` through the
    producer's weights, pinned there to [-128/127, 1]; in the unscaled input's units that is
    [-128/127, 1] / k. Otherwise ``pinned_range`` of the calibrated ``max_abs``.
    """
    thresholds = thresholds_of(threshold)
    if scaled:
        low, high = pinned_range(thresholds, 2.0**STEP_INPUT_BITS)
        return low * max_abs / 2.0**STEP_INPUT_BITS, high * max_abs / 2.0**STEP_INPUT_BITS
    return pinned_range(thresholds, max_abs)


def nudged_range(low, high):
    """[min, max] of 256 codes, scale (max - min)/255, containing [low, high] and 0, with 0 a code exactly.

    TensorFlow's fake quant and the converter nudge a range the same way; a range
    that is already nudged stays as it is in both.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high == low:
        high = low + 1.0
    scale = (high - low) / 255.0
    zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def quantized_kernel(kernel):
    """w_q = s round(w / s), s = max|w| / 127 per output channel (last axis); d w_q / d w = 1."""
    kernel = tf.convert_to_tensor(kernel)
    axes = list(range(len(kernel.shape) - 1))
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), 1e-30))
    # TensorFlow's per-channel fake quant (what keras.quantizers.fake_quant_with_min_max_vars, Keras >= 3.7,
    # calls on this backend): the converter recognises it, and it is in every TensorFlow we support.
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.cast(kernel, tf.float32), tf.cast(-bound, tf.float32), tf.cast(bound, tf.float32), num_bits=8,
        narrow_range=True)
    return tf.cast(quantized, kernel.dtype)


def kernel_codes(kernel):
    """(int codes in [-127, 127], per-channel scales) of ``quantized_kernel(kernel)``."""
    kernel = np.asarray(kernel, np.float32)
    scale = np.maximum(np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0), 1e-30) / KERNEL_LEVELS
    codes = np.round(np.asarray(quantized_kernel(kernel)) / scale).astype(np.int32)
    return codes, scale
