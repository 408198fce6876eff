"""Exact residual sums: int8 grids on which TFLite's ADD adds without rounding.

An int8 ADD of operands q_i (scale s_i, zero point z_i) onto a grid (s, z) computes

    q = clamp(z + round(sum_i (s_i / s) (q_i - z_i)), -128, 127).

When every ratio s_i / s is a power of two 2^d_i (d_i >= 0), the argument of round is an integer:

    q = clamp(z + sum_i 2^d_i (q_i - z_i), -128, 127)

whatever rounds it: the reference kernels' fixed-point path (inputs shifted left by 20, multipliers 2^-(1 + d_i)
and 2^(1 + D - 20) with D = max d_i, each an exact mantissa and shift, every shift dividing exactly) and
XNNPACK's float products alike, and an error of a few float32 ulps leaves it an integer within 1e-3 of a code,
never near a half. A quantization-aware copy that adds the rounded operands in float32 and rounds the sum onto
(s, z) computes the same q on any CPU.

A step after the sum reads only its sign, which the clamp keeps, so (``exact_sums``):

    operand   a threshold's output keeps its grid; the scale u of the first one is the unit (none: u = 2^-8);
              every other operand: scale u 2^k, the smallest k with u 2^k >= MIN_COMPARE_SCALE whose 256 codes
              hold the calibrated range and 0 (``power_of_two_grid``; coarser than calibrated by less than 2x)
    sum       s = min_i s_i, z = 0: [-128 s, 127 s], the step's pinned input (its ``max_abs`` is 127 2^7 s,
              see ``grids.pinned_range``), one code per unit of the finest operand

An ``Add`` is such a site when a HardThreshold is the only reader of its output and the threshold operands'
scales are powers of two apart ({-1, +1} shortcuts: all 1/127). A staircase after a sum needs a grid coding its
thresholds across their whole range, which 256 codes of such a scale do not hold: it keeps calibrated grids.
"""

from __future__ import annotations

import math

import keras

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.graph import sole_input, threshold_source
from keras_ftprop.deploy.grids import MIN_COMPARE_SCALE, STEP_INPUT_BITS, grid_of

_UNIT = MIN_COMPARE_SCALE  # the unit of a sum none of whose operands is a threshold's output


def power_of_two_grid(low, high, unit, min_scale=MIN_COMPARE_SCALE):
    """(min, max, scale, zero point) of the int8 grid of scale ``unit`` 2^k holding [low, high] and 0.

    k is the smallest integer with ``unit`` 2^k >= ``min_scale`` and ceil(-low / s) + ceil(high / s) <= 255
    (every value within the codes, 0 a code); the codes are centred on the range.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    k = math.ceil(math.log2(min_scale / unit) - 1e-9)
    while True:
        scale = unit * 2.0**k
        below, above = math.ceil(-low / scale - 1e-9), math.ceil(high / scale - 1e-9)
        if below + above <= 255:
            break
        k += 1
    zero_point = -128 + below + (255 - below - above) // 2
    return (-128 - zero_point) * scale, (127 - zero_point) * scale, scale, zero_point


def step_max_abs(scale):
    """The ``max_abs`` whose pinned step input range (``grids.pinned_range``) is [-128 scale, 127 scale]."""
    if scale < MIN_COMPARE_SCALE * (1 - 1e-9):
        raise ValueError(f"a step's input scale {scale} is finer than MIN_COMPARE_SCALE")
    return 127.0 * 2**STEP_INPUT_BITS * scale


def exact_sums(model, producers, consumers, operand_ranges):
    """({(Add name, operand index): (min, max)}, {step name: max_abs}) of the exact sums of ``model``.

    ``operand_ranges``: {(Add name, operand index): calibrated (min, max)} of every operand that is not a
    threshold's output. The first dict gives those operands' power-of-two grids, the second the pinned
    ``max_abs`` of the step reading each sum (its range is the sum's grid). Sums that are not sites keep
    their calibrated ranges (absent here).
    """
    grids, max_abs = {}, {}
    for layer in model.layers:
        if not isinstance(layer, ftprop_layers.HardThreshold):
            continue
        tensor = sole_input(layer, consumers)
        add = producers.get(id(tensor)) if tensor is not None else None
        if not isinstance(add, keras.layers.Add):
            continue
        site = _site_grids(add, producers, operand_ranges)
        if site is not None:
            operand_grids, scale = site
            grids.update(operand_grids)
            max_abs[layer.name] = step_max_abs(scale)
    return grids, max_abs


def _site_grids(add, producers, operand_ranges):
    """({(name, i): (min, max)} of the requantized operands, the sum's scale), or None when the threshold
    operands' scales are not powers of two apart or the sum's would be finer than MIN_COMPARE_SCALE."""
    fixed = [grid_of(source)[0] for source in (threshold_source(t, producers) for t in add.input)
             if source is not None]
    unit = fixed[0] if fixed else _UNIT
    if any(abs(math.log2(s / unit) - round(math.log2(s / unit))) > 1e-9 for s in fixed):
        return None
    grids, scales = {}, list(fixed)
    for i in range(len(add.input)):
        if (add.name, i) in operand_ranges:
            low, high, scale, _ = power_of_two_grid(*operand_ranges[(add.name, i)], unit)
            grids[(add.name, i)] = (low, high)
            scales.append(scale)
    if min(scales) < MIN_COMPARE_SCALE * (1 - 1e-9):  # GREATER's resolution
        return None
    return grids, min(scales)
