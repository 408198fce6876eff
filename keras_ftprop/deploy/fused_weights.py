"""The producer weights that compute a fused threshold as the producer's own int8 requantization.

The producer's input codes (minus the zero point) are multiples of m, so its accumulator is acc = m j.

    step       1[acc > t] = 1[acc + B > 0],  B = m//2 - m (floor(t / m) + 1),  multiplier M = 256 / (m//2 - m//4)
    compare    (a step on a grid too fine to fuse, m = 1 for the image) the producer writes q = round(2 (acc + B))
               with B = -floor(t), an integer: q >= 2 iff acc > t, q <= 0 otherwise, and the step's compare
               takes q > 0; a staircase on such a grid, one producer copy per threshold t_k, each writing
               clip(round(2 (acc + B_k)), 0, 2) = 2 1[acc > t_k], whose sum is the level
    staircase  level = clip(round(M (acc + B)), 0, n), with per channel an integer B and an M that place every
               threshold between two reachable accumulator values (``NotFusable`` if a channel has none); on a
               grid of consecutive codes (m = 1, the image), the same with the spacing 1 / M moved to where
               float32 and fixed point agree (``keras_ftprop.deploy.input_staircases``)

(``keras_ftprop.deploy`` states the construction in full.)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.grids import grid_of
from keras_ftprop.deploy.input_staircases import folded, placement
from keras_ftprop.deploy.thresholds import thresholds_of

# A fused staircase's requantized value v = M (acc + B) keeps a relative 1e-6 from each rounding boundary:
# room for the float32 scales and arithmetic of the runtime's requantization (XNNPACK multiplies
# float32(acc + B), exact while |acc + B| < 2^24 near the boundaries, by a float32 scale computed from three
# float32 scales: relative errors below 3e-7). (1e-5 left no room for a channel of small weights, whose
# boundaries lie millions of accumulator units out: 1e-5 of that is more than the unit between two values.)
_STAIRCASE_MARGIN = 1e-6
# TFLite's fixed-point requantization (reference kernels, TFLite Micro, CMSIS-NN) rounds x M0 / 2**31 to an
# integer before its rounding shift: M0 / 2**31 >= 1/2, so that first rounding moves the result by at most
# M output codes, one accumulator unit. A fused staircase's boundary keeps that much, and 1% more, from every
# reachable accumulator value, so float32 and fixed-point requantization (double or single rounding) agree.
_FIXED_POINT_ROOM = 1.01
_MAX_MULTIPLIER = 128.0  # XNNPACK's requantization scale must stay below 256
COMPARE_MULTIPLIER = 2.0  # output codes per accumulator unit of a step compared on its accumulator


class NotFusable(ValueError):
    """A threshold that cannot be its producer's requantization; the message says why."""


def batch_norm_factor(layer):
    """(f, c) per channel: the inference batch norm is f z + c."""
    gamma = layer.gamma.numpy() if layer.scale else 1.0
    beta = layer.beta.numpy() if layer.center else 0.0
    f = gamma / np.sqrt(layer.moving_variance.numpy().astype(np.float64) + layer.epsilon)
    return f * np.ones(layer.moving_mean.shape), beta - layer.moving_mean.numpy() * f


def fused_weights(model, site):
    """(kernel, bias) of the producer that computes ``site``'s threshold (a FusedThreshold) as its
    requantization; ``NotFusable`` for a staircase with a channel that cannot be placed exactly."""
    if isinstance(model.get_layer(site.threshold), ftprop_layers.Staircase):
        if site.input_step == 1:
            return input_staircase_weights(model, site)
        return _fused_staircase_weights(model, site)
    return _fused_step_weights(model, site)


def input_staircase_weights(model, site):
    """(kernel, bias) of the producer whose requantization is the staircase of ``site`` on a grid of consecutive
    codes (the image's): per channel ``placement``'s spacing P and integer B, the kernel scaled
    so that M = 1 / P (codes unchanged), the bias B; a channel without a boundary in reach writes its constant
    level. ``NotFusable`` naming the channels it cannot place."""
    threshold, producer = model.get_layer(site.threshold), model.get_layer(site.producer)
    batch_norm = None if site.batch_norm is None else model.get_layer(site.batch_norm)
    spacing, bias_code, constant, feasible, _ = (np.asarray(x) for x in placement(
        producer.kernel, producer.bias if producer.use_bias else None, batch_norm, site.input_scale,
        site.input_bound, thresholds_of(threshold)))
    if not feasible.all():
        raise NotFusable(f"no single requantization of {site.producer!r} places channel(s) "
                         f"{np.flatnonzero(~feasible).tolist()} alike in float32 and fixed point")
    kernel, _ = _folded_producer(model, site)
    out_scale = (threshold.high - threshold.low) / threshold.steps  # one code per level
    weight_scale = np.abs(kernel.reshape(-1, kernel.shape[-1])).max(axis=0) / 127
    new_scale = out_scale / (spacing * site.input_scale)  # s_w' = M s_out / s_in
    live = constant < 0
    ratio = np.where(live, new_scale / np.where(live, weight_scale, 1.0), 0.0)
    new_bias = np.where(live, bias_code * site.input_scale * new_scale, constant * out_scale)
    return (kernel * ratio).astype(np.float32), new_bias.astype(np.float32)


def _folded_producer(model, site):
    """(kernel, bias) in float64 of the producer with its batch norm folded in: x = conv(z, kernel) + bias."""
    producer = model.get_layer(site.producer)
    kernel = producer.kernel.numpy().astype(np.float64)
    bias = producer.bias.numpy().astype(np.float64) if producer.use_bias else np.zeros(kernel.shape[-1])
    if site.batch_norm is not None:
        f, c = batch_norm_factor(model.get_layer(site.batch_norm))
        kernel, bias = kernel * f, bias * f + c
    return kernel, bias


def _accumulator_threshold(kernel_c, bias_c, site, bound):
    """(weight scale s_w, t) of one output channel: the step's x = s_in s_w acc + b > 0 iff acc > t,
    t = -b / (s_in s_w) clipped to [-bound, bound]; None for a channel whose kernel is 0."""
    top = np.abs(kernel_c).max()
    if top == 0:
        return None
    weight_scale = top / 127  # the converter's per-channel scale
    return weight_scale, np.clip(-bias_c / (site.input_scale * weight_scale), -bound, bound)


def step_decisions(levels_sum, kernel, bias, batch_norm, input_scale, input_step):
    """Whether the export's step is +1 at each unit, from the integer level sum U = sum codes (q - z) / m of the
    producer's unfolded kernel codes: with the batch norm folded in (f, c), the export's folded codes are
    sign(f) times these, and a fused step or one compared on the accumulator is +1 iff
    sign(f) U >= floor(t / m) + 1, t = -b / (s_in max|w f| / 127), b = f bias + c; a channel of zero
    weights iff b > 0. t is computed by the float64 operations of ``_folded_producer`` and
    ``_accumulator_threshold`` in their order, so it is the export's bit for bit (TensorFlow ops).

    ``kernel``: the producer's kernel on its int8 grid (``quantized_kernel``); ``bias``: its bias or None;
    ``batch_norm``: the BatchNormalization folded in, or None."""
    f, weight_scale, folded_bias = folded(kernel, bias, batch_norm)
    t = -folded_bias / (input_scale * weight_scale)
    m = float(input_step)
    decided = tf.sign(f) * tf.cast(levels_sum, tf.float64) >= tf.floor(t / m) + 1
    return tf.where(weight_scale == 0, folded_bias > 0, decided)


def staircase_decisions(levels_sum, kernel, bias, batch_norm, input_scale, input_step, thresholds):
    """The level index (float64) of a staircase fused after codes m apart, at each unit, from the integer level
    sum U of the unfolded kernel codes (as ``step_decisions``): level #{k: sign(f) U >= G_k},
    G_k = floor((t_k - b) / (s_in s_w m)) + 1, as ``_fused_staircase_weights`` computes each G_k (its float64
    operations in their order) and places its requantization's boundaries between them; a channel of zero
    weights #{k: b > t_k}."""
    f, weight_scale, folded_bias = folded(kernel, bias, batch_norm)
    unit = input_scale * weight_scale * float(input_step)
    alive = weight_scale > 0
    folded_sum = tf.sign(f) * tf.cast(levels_sum, tf.float64)
    level = tf.zeros_like(folded_sum)
    for t in thresholds:
        gate = tf.floor((t - folded_bias) / tf.where(alive, unit, 1.0)) + 1
        level += tf.cast(tf.where(alive, folded_sum >= gate, folded_bias > t), tf.float64)
    return level


def accumulator_step_weights(model, site, multiplier=COMPARE_MULTIPLIER):
    """(kernel, bias) of the producer of a step compared on its exact accumulator (``site`` a FusedThreshold,
    the step's input pinned to scale 1/127): per channel the bias B = -floor(t) and the kernel scaled so that
    the requantization multiplier is ``multiplier`` (codes unchanged). acc + B is an integer, so the output
    code round(M (acc + B)) is <= 0 iff acc <= t and >= 1 otherwise, for any M in (1/2, 256) and any
    rounding (float32, fixed point): the arithmetics agree. |B| <= max |acc| + 1 < 2^23, so the float32
    bias still rounds to B in the converter."""
    kernel, bias = _folded_producer(model, site)
    out_scale = 1.0 / 127
    bound = float(_max_code_sum(kernel) * site.input_bound + 1)  # > max |acc|
    new_kernel, new_bias = np.zeros_like(kernel), np.zeros_like(bias)
    new_weight_scale = multiplier * out_scale / site.input_scale
    for c in range(kernel.shape[-1]):
        found = _accumulator_threshold(kernel[..., c], bias[c], site, bound)
        if found is None:  # a dead channel: the unit is h(bias)
            new_bias[c] = 2.0 if bias[c] > 0 else -2.0
            continue
        weight_scale, t = found
        new_kernel[..., c] = kernel[..., c] * (new_weight_scale / weight_scale)
        new_bias[c] = -np.floor(t) * site.input_scale * new_weight_scale
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def accumulator_staircase_weights(model, site, multiplier=COMPARE_MULTIPLIER):
    """[(kernel, bias)] per threshold t_k of the staircase of ``site`` (a FusedThreshold) compared on its
    producer's exact accumulator: copy k of the producer writes, onto a grid of scale s_out = step / 2 (one
    level per 2 codes), q_k = clip(round(M_k (acc + B_k)), 0, 2) with B_k = -floor(t_k), an integer, and
    M_k = ``multiplier`` (1 + k / 16) >= 3/2 (codes unchanged), so 2 1[acc > t_k] in any arithmetic, and the
    level is sum_k q_k / 2. (The kernels differ by their scale only: with equal ones the converter would
    share one convolution among the copies and add the biases after its requantization.)"""
    threshold = model.get_layer(site.threshold)
    kernel, bias = _folded_producer(model, site)
    step = (threshold.high - threshold.low) / threshold.steps
    bound = float(_max_code_sum(kernel) * site.input_bound + 1)  # > max |acc|
    weights = []
    for k, level in enumerate(thresholds_of(threshold)):
        new_weight_scale = multiplier * (1 + k / 16) * (step / 2) / site.input_scale
        new_kernel, new_bias = np.zeros_like(kernel), np.zeros_like(bias)
        for c in range(kernel.shape[-1]):
            found = _accumulator_threshold(kernel[..., c], bias[c] - level, site, bound)
            if found is None:  # a dead channel: 1[bias > t_k], any constant beyond the output range
                new_bias[c] = 2 * step if bias[c] > level else -step
                continue
            weight_scale, t = found
            new_kernel[..., c] = kernel[..., c] * (new_weight_scale / weight_scale)
            new_bias[c] = -np.floor(t) * site.input_scale * new_weight_scale
        weights.append((new_kernel.astype(np.float32), new_bias.astype(np.float32)))
    return weights


def _max_code_sum(kernel):
    """max over output channels of sum |kernel code| (127 levels per channel): max |acc| per unit input."""
    flat = kernel.reshape(-1, kernel.shape[-1])
    top = np.maximum(np.abs(flat).max(axis=0), 1e-300)
    return np.abs(np.round(flat / (top / 127))).sum(axis=0).max()


def _fused_step_weights(model, site):
    """(kernel, bias): per channel the bias B (above) and the kernel scaled so that the requantization
    multiplier is M (codes unchanged): every unit lands beyond the output range, clamped onto a level."""
    kernel, bias = _folded_producer(model, site)
    threshold = model.get_layer(site.threshold)
    out_scale = grid_of(threshold)[0]
    m, margin = site.input_step, site.input_step // 4
    multiplier = 256.0 / (m // 2 - margin)  # output codes per accumulator unit
    fan_in = int(np.prod(kernel.shape[:-1]))
    bound = 127 * site.input_bound * fan_in + m  # > max |acc|
    new_kernel, new_bias = np.zeros_like(kernel), np.zeros_like(bias)
    new_weight_scale = multiplier * out_scale / site.input_scale  # s_w' = M s_out / s_in
    for c in range(kernel.shape[-1]):
        w = kernel[..., c]
        top = np.abs(w).max()
        if top == 0:  # a dead channel: the unit is h(bias), any constant beyond the output range
            new_bias[c] = 2.0 if bias[c] > 0 else -2.0
            continue
        weight_scale = top / 127  # the converter's per-channel scale
        t = np.clip(-bias[c] / (site.input_scale * weight_scale), -bound, bound)
        code = m // 2 - m * (np.floor(t / m) + 1)
        new_kernel[..., c] = w * (new_weight_scale / weight_scale)
        new_bias[c] = code * site.input_scale * new_weight_scale
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def _fused_staircase_weights(model, site):
    """(kernel, bias) whose requantization computes the staircase exactly at every reachable accumulator.

    With the input codes multiples of m, acc = m j (integer j, |j| <= sum |w codes| * bound / m). The
    staircase (levels k s_out, thresholds t_k) reaches level k + 1 iff x = s_in s_w acc + b > t_k, i.e.
    iff j >= G_k = floor((t_k - b) / (s_in s_w m)) + 1. The requantization outputs
    level = clip(round(M (acc + B)), 0, n), which is >= k + 1 iff j >= R_k = (k + 1/2) P - B / m with
    P = 1 / (M m). Per channel, an integer B and a P with G_k - 1 < R_k < G_k for every k (margins
    ``_STAIRCASE_MARGIN``, and ``_FIXED_POINT_ROOM`` accumulator units) make the two equal at every j under
    float32 and fixed-point requantization; the kernel's scale is set to give that M (the
    codes are unchanged). ``NotFusable`` if a channel has none.
    """
    threshold = model.get_layer(site.threshold)
    kernel, bias = _folded_producer(model, site)
    n, span = threshold.steps, threshold.high - threshold.low
    thresholds = np.array(thresholds_of(threshold))
    out_scale = span / n
    m, s_in = site.input_step, site.input_scale
    ks = np.arange(n) + 0.5
    new_kernel, new_bias = np.zeros_like(kernel), np.zeros_like(bias)
    for c in range(kernel.shape[-1]):
        w = kernel[..., c]
        top = np.abs(w).max()
        if top == 0:  # a dead channel: the constant level of its bias
            new_bias[c] = np.sum(bias[c] > thresholds) * out_scale
            continue
        s_w = top / 127
        j_bound = np.abs(np.round(w / s_w)).sum() * site.input_bound / m
        with np.errstate(over="ignore"):  # a kernel of denormals: gates far beyond every reachable j
            gates = np.floor(np.clip((thresholds - bias[c]) / (s_in * s_w * m), -2 * j_bound - 2, 2 * j_bound + 2)) + 1
        if np.sum(-j_bound >= gates) == np.sum(j_bound >= gates):  # one level at every reachable j: a constant
            new_bias[c] = np.sum(-j_bound >= gates) * out_scale
            continue
        # R_k must exceed the largest reachable j below G_k and not exceed the smallest at or above it.
        low = np.where(gates - 1 >= -j_bound, np.minimum(gates - 1, j_bound), -np.inf)
        high = np.where(gates <= j_bound, np.maximum(gates, -j_bound), np.inf)
        natural = (span / max(n - 1, 1)) / (s_in * s_w * m)  # P of the float staircase: j per level
        solution = _requantization_for(low, high, ks, m, natural)
        if solution is None:
            raise NotFusable(f"no requantization of {site.producer!r} places channel {c}'s thresholds "
                             "exactly between its accumulator values")
        per_level, bias_code = solution
        new_scale = out_scale / (per_level * m * s_in)  # s_w' = M s_out / s_in
        new_kernel[..., c] = w * (new_scale / s_w)
        new_bias[c] = bias_code * s_in * new_scale
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def _requantization_for(low, high, ks, m, natural):
    """(P, B): B an integer and low_k < (k + 1/2) P - B / m < high_k for all k (with margins), P near
    ``natural`` and 1 / (P m) <= _MAX_MULTIPLIER; None if no B within reach has one."""
    finite = np.isfinite(low) & np.isfinite(high)
    # B is searched near the natural P, or below the largest P whose accumulators stay exact in float32
    target = min(natural, 0.99 * 2.0**24 / (m * ks[-1]))
    if finite.any():  # R_k in the middle of its gap, at the target P
        k = np.argmax(finite)
        centre = round(m * (ks[k] * target - (low[k] + high[k]) / 2))
    else:
        centre = round(m * (ks[0] * target - (high[0] if np.isfinite(high[0]) else low[0])))
    candidates = centre + np.arange(-4 * m - 64, 4 * m + 65)
    shift = candidates[:, None] / m
    room = _FIXED_POINT_ROOM / m  # in j: one accumulator unit, and a little more
    with np.errstate(invalid="ignore"):  # R_k = (k + 1/2) P - B / m in [low_k + margin_k, high_k - margin_k]
        lower = np.max((low + shift + room) / (ks * (1 - _STAIRCASE_MARGIN)), axis=1)
        upper = np.min((high + shift - room) / (ks * (1 + _STAIRCASE_MARGIN)), axis=1)
    lower = np.maximum(np.nan_to_num(lower, nan=-np.inf), 1.0 / (_MAX_MULTIPLIER * m))
    upper = np.minimum(np.nan_to_num(upper, nan=np.inf), 2.0**24 / (m * ks[-1]))  # acc + B exact in float32
    feasible = lower < upper
    if not feasible.any():
        return None
    chosen = np.clip(natural, lower, upper)  # the bounds hold the margins: any P in [lower, upper] is exact
    best = np.argmin(np.where(feasible, np.abs(np.log(np.where(feasible, chosen, natural) / natural)), np.inf))
    return float(chosen[best]), int(candidates[best])
