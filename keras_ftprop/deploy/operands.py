"""Exact residual operands: a convolution and its batch norm whose int8 code is the same on every runtime.

An exact sum (``keras_ftprop.deploy.sums``) adds its operands' codes without rounding, so what a step after it
decides depends only on those codes. An operand computed by a Conv2D and a BatchNormalization from a threshold's
codes (ResNet's second convolution of a block, its projection shortcut) is the convolution's requantization, batch
norm folded in (x = f conv(z, w) + c per channel, f = gamma / sqrt(var + eps), c = beta - mean f + f b):

    q = z_op + round(M_c acc),  acc = b_q + m U,  M_c = s_in s_c / s_op

That is the requantization of ``keras_ftprop.deploy.logits``, with the folded kernel w f and bias c in place of
a Dense layer's, and the operand's grid s_op in place of the logits': on ``logit_weights``' grids (the folded
kernel of channel c on s_c = s_op / (n_c s_in m), its largest weight on code +-127, b_q = rho (mod m)) every
M_c acc keeps (m - 1) / 2 accumulator units from a rounding boundary, and the fixed-point requantization of the
reference kernels and TFLite Micro, XNNPACK's float32 one and the copy's integer one (``FoldedConv2D``) write the
same code.

A site: an operand of an exact sum that a BatchNormalization alone writes, fed only by a linear Conv2D that
reads a threshold's codes at least ``MIN_INPUT_STEP`` apart, whose grids are at least ``MIN_COPY_STEPS`` fine
(n_c; the fine-tune absorbs the move of the largest weight, up to 1 / n_c) and whose bias codes the converter
keeps (``bias_error``).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop.deploy.graph import grid_origin, is_linear, only_input, sole_input
from keras_ftprop.deploy.grids import grid_of
from keras_ftprop.deploy.logits import MIN_COPY_STEPS, MIN_INPUT_STEP, bias_error, logit_weights
from keras_ftprop.deploy.thresholds import is_threshold


@dataclasses.dataclass(frozen=True)
class OperandSite:
    """A Conv2D and its batch norm whose requantization onto an exact sum's operand grid is made exact."""

    producer: str  # the Conv2D
    batch_norm: str
    input_scale: float  # s_in of the threshold's codes it reads
    input_step: int  # m
    output_scale: float  # s_op

    def config(self):
        """The ``operand`` option of ``FoldedConv2D``."""
        return {"input_scale": self.input_scale, "input_step": self.input_step, "output_scale": self.output_scale}


def folded_weights(kernel, bias, batch_norm, input_scale, input_step, output_scale):
    """``logit_weights`` (w_q, b_q s_in s_c, codes, s_c, b_q, n_c) of the convolution ``kernel``, ``bias`` (None:
    none) with the inference ``batch_norm`` (a built BatchNormalization) folded in, and f per channel:
    kernel w f, bias f b + beta - mean f (float64, then float32). TensorFlow ops."""
    variance = tf.cast(batch_norm.moving_variance, tf.float64)
    f = tf.math.rsqrt(variance + batch_norm.epsilon)
    if batch_norm.scale:
        f = f * tf.cast(batch_norm.gamma, tf.float64)
    shift = -tf.cast(batch_norm.moving_mean, tf.float64) * f
    if batch_norm.center:
        shift = shift + tf.cast(batch_norm.beta, tf.float64)
    if bias is not None:
        shift = shift + tf.cast(bias, tf.float64) * f
    folded = tf.cast(tf.cast(kernel, tf.float64) * f, tf.float32)
    # per channel: the converter quantizes every convolution so (a dense layer only from TensorFlow 2.17 on)
    return (*logit_weights(folded, tf.cast(shift, tf.float32), input_scale, input_step, output_scale,
                           per_channel=True), f)


def operand_sites(model, producers, consumers, grids):
    """[OperandSite] of ``model``'s exact sums; ``grids``: {(Add name, operand index): (min, max)} of their
    requantized operands (``sums.exact_sums``)."""
    sites = []
    for (add, index), (low, high) in grids.items():
        tensor = model.get_layer(add).input[index]
        batch_norm = producers.get(id(tensor))
        if not isinstance(batch_norm, keras.layers.BatchNormalization) or consumers[id(tensor)] != 1:
            continue
        tensor = sole_input(batch_norm, consumers)
        conv = producers.get(id(tensor)) if tensor is not None else None
        if type(conv) is not keras.layers.Conv2D or not is_linear(conv):
            continue
        source = grid_origin(only_input(conv), producers)
        if not is_threshold(source):
            continue
        scale, step, _ = grid_of(source)
        site = OperandSite(conv.name, batch_norm.name, scale, step, (high - low) / 255.0)
        if step >= MIN_INPUT_STEP and not _too_coarse(conv, batch_norm, site):
            sites.append(site)
    return sites


def _too_coarse(conv, batch_norm, site):
    """Why the grids of ``site`` would move its weights too far (n_c < MIN_COPY_STEPS) or lose the bias
    codes ("" if neither)."""
    weights = folded_weights(conv.kernel, conv.bias, batch_norm, site.input_scale, site.input_step,
                             site.output_scale)
    if float(np.min(weights[5])) < MIN_COPY_STEPS:
        return f"n_c < {MIN_COPY_STEPS} in {conv.name!r}"
    return bias_error(np.asarray(weights[4]), site.input_step)
