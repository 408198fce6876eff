"""TFLite's int8 requantization, written from its definition: an int32 accumulator to an output code.

    fixed point   (reference kernels, TFLite Micro, CMSIS-NN)  M = M0 2**(shift - 31), M0 in [2**30, 2**31):
                  QuantizeMultiplier, then SaturatingRoundingDoublingHighMul(acc 2**max(shift, 0), M0) (rounds
                  acc M0 / 2**31 half away from zero) and RoundingDivideByPOT(., max(-shift, 0)) (half away
                  from zero); ``single=True``: one rounding of acc M0 / 2**(31 - shift), half up
    float32       (XNNPACK's fp32 requantization) round-half-even(float32(acc) * float32(M))

then + the output zero point, clamped to the activation's range.
"""

import math

import numpy as np

INT32_MIN = -(2**31)


def quantize_multiplier(real):
    """(M0, shift) with real = M0 2**(shift - 31), M0 in [2**30, 2**31) (0 for 0), M0 rounded half up."""
    if real == 0:
        return 0, 0
    fraction, shift = math.frexp(real)  # real = fraction 2**shift, fraction in [1/2, 1)
    m0 = math.floor(fraction * 2**31 + 0.5)
    if m0 == 2**31:
        m0, shift = m0 // 2, shift + 1
    if shift < -31:
        return 0, 0
    return m0, shift


def _shift_right_toward_zero(x, bits):
    return np.where(x >= 0, x >> bits, -((-x) >> bits))


def fixed_point(acc, real, single=False):
    """acc (int array) times ``real`` as TFLite's MultiplyByQuantizedMultiplier computes it (int64 array)."""
    acc = np.asarray(acc, np.int64)
    m0, shift = quantize_multiplier(real)
    left, right = max(shift, 0), max(-shift, 0)
    if single:
        total = 31 - shift
        return (acc * m0 + (1 << (total - 1))) >> total
    a = acc * (1 << left)
    assert np.all(np.abs(a) < 2**31), "the left-shifted accumulator overflows int32"
    product = a * m0
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = _shift_right_toward_zero(product + nudge, 31)
    high = np.where((a == INT32_MIN) & (m0 == INT32_MIN), 2**31 - 1, high)
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def float32(acc, real):
    """acc times float32 ``real`` in float32, rounded half to even (XNNPACK's fp32 requantization)."""
    product = np.asarray(acc, np.int64).astype(np.float32) * np.float32(real)
    return np.rint(product).astype(np.int64)


ARITHMETICS = {"fixed_point": fixed_point, "single_rounding": lambda a, r: fixed_point(a, r, single=True),
               "float32": float32}


def output_codes(acc, real, zero_point, low, high, arithmetic):
    """The int8 output codes of accumulators ``acc`` requantized by ``real`` in ``arithmetic``."""
    return np.clip(ARITHMETICS[arithmetic](acc, real) + zero_point, low, high)
