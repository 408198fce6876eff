"""A staircase on the image as its convolution's single int8 requantization, the same on every runtime.

The image's accumulators are one unit apart. The producer writes one code per level,

    level = clip(round(M (acc + B)), 0, n),   M = 1 / P,   B an integer,

which reaches level k + 1 at acc + B >= R_k = (k + 1/2) P under float32 requantization (XNNPACK). TFLite's
fixed point (reference kernels, TFLite Micro) writes M = f 2^-s, f in [1/2, 1), and rounds acc f to an integer
before the shift: for s >= 1 (P > 2) that moves the boundary down by room = 1 / (2 f) = P / 2^s' (2^s' the
smallest power of two >= P), in (1/2, 1]. Both arithmetics decide every integer alike iff no integer lies in
[R_k - room, R_k] (margins: mu = 6e-7 R_k + 1e-3 units, for float32 scales and rounding). With

    P = 2 N - eps  (an even integer, just below):   R_k = (2k + 1) N - (k + 1/2) eps,

every R_k sits (k + 1/2) eps below an integer, and the condition is room + (k + 1/2) eps + mu <= 1 and
(k + 1/2) eps >= mu. ``placement`` takes per channel the P = 2N - eps nearest to the float staircase's
threshold spacing P_nat (accumulator units) that meets it, within 25% and 2 units (a channel whose 1/P_nat has
a mantissa near 1/2, room near 1, moves to an even integer just above the next power of two), and the integer
B that centres the boundaries on the float thresholds within reach. The int8 model then decides level k + 1 iff
acc >= (2k + 1) N - B in every arithmetic, and the quantization-aware copy computes the same levels from its
integer accumulator and trains on them (``placed_affine``, ``quantized_layers.ExactStaircaseConv2D``). A
channel that no candidate places (of the order of 10^5 accumulator units per level, where mu grows to a tenth
of a unit) leaves the export to one copy of the producer per threshold (``feasible`` False).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Of R_k: the runtime's multiplier differs from 1 / P by the float32 roundings of the stored scales (the export's
# kernel and the converter's s_w, 1.2e-7; s_in, 1.2e-7; s_out, 3e-8), of XNNPACK's scale s_in s_w / s_out (1.2e-7)
# and of its product (6e-8): at most 4.5e-7 together.
RELATIVE_MARGIN = 6e-7
ABSOLUTE_MARGIN = 1e-3  # accumulator units
MAX_CHANGE = 0.25  # the largest relative change of a channel's threshold spacing
MAX_BIAS = 2**22  # |B|: the converter's float32 bias rounds back to B, and acc + B is exact in float32
_CANDIDATES = np.linspace(-MAX_CHANGE, MAX_CHANGE, 2001)


def folded(kernel, bias, batch_norm):
    """(f, s_w = max |w f| / 127, b = f bias + c) per channel, float64: the export's folded producer, with the
    batch norm's inference f z + c (f = 1, c = 0 without one)."""
    channels = kernel.shape[-1]
    f, c = tf.ones([channels], tf.float64), tf.zeros([channels], tf.float64)
    if batch_norm is not None:
        gamma = tf.cast(batch_norm.gamma, tf.float64) if batch_norm.scale else 1.0
        beta = tf.cast(batch_norm.beta, tf.float64) if batch_norm.center else 0.0
        f = gamma / tf.sqrt(tf.cast(batch_norm.moving_variance, tf.float64) + batch_norm.epsilon) * f
        c = beta - tf.cast(batch_norm.moving_mean, tf.float64) * f
    folded_bias = (tf.zeros([channels], tf.float64) if bias is None else tf.cast(bias, tf.float64)) * f + c
    top = tf.reduce_max(tf.abs(tf.cast(kernel, tf.float64) * f), axis=list(range(len(kernel.shape) - 1)))
    return f, top / 127.0, folded_bias


def folded_codes(kernel, batch_norm):
    """The int8 codes of the folded kernel w f, float64 (sign f times those of w)."""
    f, weight_scale, _ = folded(kernel, None, batch_norm)
    return tf.round(tf.cast(kernel, tf.float64) * f / tf.maximum(weight_scale, 1e-300))


def placement(kernel, bias, batch_norm, input_scale, input_bound, thresholds):
    """Per output channel, float64 tensors (P, B, constant, feasible, t):

    P, B      the requantization: level = clip(round((acc + B) / P), 0, n), acc the accumulator of the
              folded kernel's codes (``folded_codes``)
    constant  the level of a channel with no boundary within reach (a zero kernel, or thresholds beyond
              every reachable accumulator), else -1
    feasible  whether the construction holds for the channel (none of the candidate spacings does otherwise)
    t         [C, n] the float staircase's thresholds in accumulator units: level k + 1 iff acc > t_k

    ``kernel``: the producer's kernel on its int8 grid; ``bias``: its bias or None; ``batch_norm``: the
    BatchNormalization folded in, or None; ``input_scale``, ``input_bound``: s_in and max |code - zero point| of
    the image's grid; ``thresholds``: the staircase's [t_0, ..., t_{n-1}]."""
    _, weight_scale, folded_bias = folded(kernel, bias, batch_norm)
    n = len(thresholds)
    unit = input_scale * weight_scale  # pre-activation per accumulator unit
    alive = weight_scale > 0
    safe_unit = tf.where(alive, unit, 1.0)
    t = (tf.constant(thresholds, tf.float64)[None, :] - folded_bias[:, None]) / safe_unit[:, None]  # [C, n]
    spacing = (thresholds[-1] - thresholds[0]) / max(n - 1, 1) if n > 1 else 1.0
    natural = tf.maximum(spacing / safe_unit, 2.0)  # [C]; at least 2: N >= 1
    axes = list(range(len(kernel.shape) - 1))
    reach = tf.reduce_sum(tf.abs(folded_codes(kernel, batch_norm)), axis=axes) * float(input_bound)  # >= max |acc|
    levels_low = tf.reduce_sum(tf.cast(t < -reach[:, None], tf.float64), axis=1)
    levels_high = tf.reduce_sum(tf.cast(t < reach[:, None], tf.float64), axis=1)
    folded_level = tf.reduce_sum(tf.cast(folded_bias[:, None] > tf.constant(thresholds, tf.float64), tf.float64), 1)
    constant = tf.where(alive, tf.where(levels_low == levels_high, levels_low, -1.0), folded_level)

    # candidates P = 2N - eps: [C, K]
    halves = tf.maximum(tf.round(natural[:, None] / 2 * (1 + tf.constant(_CANDIDATES, tf.float64))[None]), 1.0)
    eps = 1.25 * (RELATIVE_MARGIN * 2 * halves + 2 * ABSOLUTE_MARGIN)  # (k + 1/2) eps >= mu_k, and a quarter more
    spacing_p = 2 * halves - eps
    power = tf.pow(tf.constant(2.0, tf.float64), tf.math.ceil(tf.math.log(spacing_p) / np.log(2.0)))
    power = tf.where(power < spacing_p, power * 2, tf.where(power / 2 >= spacing_p, power / 2, power))
    room = tf.where(spacing_p > 2, spacing_p / power, 0.0)  # the fixed-point high multiply's shift of R_k
    ks = tf.range(n, dtype=tf.float64) + 0.5  # [n]
    boundary = ks[None, None] * spacing_p[..., None]  # R_k: [C, K, n]
    below = ks[None, None] * eps[..., None]  # how far R_k is below the integer (2k + 1) N
    mu = RELATIVE_MARGIN * boundary + ABSOLUTE_MARGIN
    in_reach = tf.cast(tf.abs(t) <= reach[:, None] + 1, tf.float64)[:, None, :]  # the thresholds that matter
    bias_code = tf.round(tf.reduce_sum((boundary - t[:, None, :]) * in_reach, axis=-1)
                         / tf.maximum(tf.reduce_sum(in_reach, axis=-1), 1.0))  # centred on them: [C, K]
    reachable = (tf.abs(boundary - bias_code[..., None]) <= reach[:, None, None] + 1) | (in_reach > 0)
    holds = (below >= mu) & (room[..., None] + below + mu <= 1.0)
    ok = tf.reduce_all(holds | ~reachable, axis=-1) & (tf.abs(bias_code) <= MAX_BIAS)
    distance = tf.where(ok, tf.abs(spacing_p - natural[:, None]), np.inf)
    best = tf.argmin(distance, axis=1, output_type=tf.int32)
    pick = lambda x: tf.gather(x, best, axis=1, batch_dims=1)  # noqa: E731
    feasible = tf.reduce_any(ok, axis=1) | (constant >= 0)
    return pick(spacing_p), pick(bias_code), constant, feasible, t


def decided_levels(acc, kernel, bias, batch_norm, input_scale, input_bound, thresholds, placed=None):
    """The int8 model's level per unit (float64) from the folded accumulator ``acc`` (channels last; arguments
    as ``placement``'s, ``placed`` its result if already computed): the single requantization's where every
    channel is placed, otherwise the level of the exact accumulator, #{k: acc > t_k}, as the export's one
    producer copy per threshold computes it."""
    spacing, bias_code, constant, feasible, t = (placement(kernel, bias, batch_norm, input_scale, input_bound,
                                                           thresholds) if placed is None else placed)
    return tf.cond(tf.reduce_all(feasible), lambda: levels(acc, spacing, bias_code, constant, len(thresholds)),
                   lambda: tf.where(constant >= 0, constant, count_above(acc, tf.transpose(t))))


def placed_affine(kernel, bias, batch_norm, input_scale, input_bound, thresholds, placed=None):
    """(a, c) per channel, float64, such that the float staircase of a x + c has the boundaries the export
    places (x the pre-activation, with the batch norm's moving statistics): the thresholds' x-values
    unit ((k + 1/2) P - B) + b (unit = s_in s_w) mapped onto t_k, a = spacing / (unit P); a = 1, c = 0 where
    the export keeps the float thresholds (copies per threshold, constant channels). The copy trains on a x + c,
    the staircase its int8 model computes (up to the rounding of each boundary to an accumulator value).
    Arguments as ``decided_levels``'."""
    spacing, bias_code, constant, feasible, _ = (placement(kernel, bias, batch_norm, input_scale, input_bound,
                                                           thresholds) if placed is None else placed)
    _, weight_scale, folded_bias = folded(kernel, bias, batch_norm)
    unit = input_scale * weight_scale
    moved = tf.reduce_all(feasible) & (constant < 0) & (unit > 0)
    unit = tf.where(moved, unit, 1.0)
    first = unit * (0.5 * spacing - bias_code) + folded_bias  # where the export's level 1 begins
    step = (thresholds[-1] - thresholds[0]) / (len(thresholds) - 1) if len(thresholds) > 1 else None
    scale = step / (unit * spacing) if step is not None else tf.ones_like(unit)
    scale = tf.where(moved, scale, 1.0)
    return scale, tf.where(moved, thresholds[0] - scale * first, 0.0)


def count_above(x, thresholds):
    """#{k: x > t_k} per unit, in x's dtype; ``thresholds`` [n] or [n, C] (per channel, channels last): n
    compares of x's shape, not one broadcast of n times its size (several times slower on CPU)."""
    count = tf.zeros_like(x)
    for k in range(thresholds.shape[0]):
        count += tf.cast(x > tf.cast(thresholds[k], x.dtype), x.dtype)
    return count


def levels(acc, spacing, bias_code, constant, steps):
    """The int8 model's level per unit from the folded accumulator ``acc`` (float64, channels last):
    clip(round((acc + B) / P), 0, n), or the channel's constant level."""
    level = tf.clip_by_value(tf.round((acc + bias_code) / spacing), 0.0, float(steps))
    return tf.where(constant >= 0, constant, level)
