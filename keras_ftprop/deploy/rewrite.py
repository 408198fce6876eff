"""The forward-only model the converter sees: the plan applied to a clone of the model.

Each threshold becomes its export layer (``export_layers.rewrite``); a fused threshold's producer becomes the
producer without activation, its clamp and int8 range (and for a staircase a requantization onto the
threshold's grid), with the weights of ``fused_weights``, and the fused batch norm and threshold identities;
a step compared on its accumulator keeps its compare, its producer gets ``accumulator_step_weights`` (its batch
norm folded in, an identity); a staircase compared on its accumulator becomes one copy of its producer per
threshold (``accumulator_staircase_weights``), each clamped onto {0, step}, summed by ADD onto the threshold's
grid (the threshold an identity); each scaled producer's weights are multiplied by its factor; the output
layer made exact gets ``logits.logit_weights`` and its output range.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.export_layers import ExportFusedOutput, ExportRequantize, rewrite
from keras_ftprop.deploy.fused_weights import accumulator_staircase_weights, accumulator_step_weights, fused_weights
from keras_ftprop.deploy.grids import indicator_sum_range, output_range_of, staircase_output_range
from keras_ftprop.deploy.logits import logit_weights
from keras_ftprop.deploy.quantized_layers import FakeQuant
from keras_ftprop.deploy.thresholds import is_threshold, levels_of


def fused_output_name(threshold):
    """The name of the export layer that clamps a fused threshold's output."""
    return f"{threshold}_fused"


def requantized_name(threshold):
    """The name of the export layer that requantizes a fused staircase's levels onto its grid."""
    return f"{threshold}_requantized"


def compared_staircase_names(site, steps):
    """The names of the export layers that compute a staircase compared on its accumulator, from its producer
    on: the producer's copies, their clamps, the sums."""
    return ([f"{site.producer}_t{k}" for k in range(steps)] + [f"{site.threshold}_t{k}" for k in range(steps)]
            + [f"{site.threshold}_sum{k}{part}" for k in range(1, steps) for part in ("", "_grid")]
            + [requantized_name(site.threshold)])


def export_model(model, plan, int8):
    """(the forward-only model the converter sees, {threshold: its ExportThreshold, or its FusedThreshold}),
    the dict in the order of the clone."""
    rewritten = {}
    by_producer = {site.producer: site for site in plan.fused.values()}
    staircases = {site.producer: site for site in plan.compared.values()
                  if isinstance(model.get_layer(site.threshold), ftprop_layers.Staircase)}
    compared = {site.producer for site in plan.compared.values()} - set(staircases)
    bypassed = {name for site in plan.fused.values() for name in (site.threshold, site.batch_norm) if name}
    bypassed |= {site.batch_norm for site in plan.compared.values() if site.batch_norm}
    bypassed |= {site.threshold for site in staircases.values()}

    def clone(layer):
        if layer.name in by_producer:  # the threshold as this layer's requantization
            site = by_producer[layer.name]
            rewritten[site.threshold] = site
            return _fused_producer(layer, model.get_layer(site.threshold))
        if layer.name in staircases:  # one copy per threshold, summed
            site = staircases[layer.name]
            rewritten[site.threshold] = site
            return _compared_staircase(layer, model.get_layer(site.threshold), site)
        if plan.logits is not None and layer.name == plan.logits.producer:  # weights set below, with a bias
            return _logit_producer(layer, plan)
        if layer.name in compared:  # its weights are set below, with a bias
            return type(layer).from_config({**layer.get_config(), "use_bias": True})
        if layer.name in bypassed:
            identity = keras.layers.Identity(name=layer.name)
            return lambda inputs, **kwargs: identity(inputs)
        if not is_threshold(layer):  # the copy's own layer (the copy is not used after the export)
            return layer
        rewritten[layer.name] = rewrite(layer, int8, plan.max_abs.get(layer.name), requantize=plan.requantize)
        return rewritten[layer.name]

    export = keras.models.clone_model(model, clone_function=clone)
    for name, factor in plan.scale_producers.items():
        _scale_output(export.get_layer(name), factor)
    for site in plan.fused.values():
        export.get_layer(site.producer).set_weights(list(fused_weights(model, site)))
    for site in plan.compared.values():
        if site.producer in staircases:
            for k, weights in enumerate(accumulator_staircase_weights(model, site)):
                export.get_layer(f"{site.producer}_t{k}").set_weights(list(weights))
        else:
            export.get_layer(site.producer).set_weights(list(accumulator_step_weights(model, site)))
    if plan.logits is not None:
        producer = model.get_layer(plan.logits.producer)
        weights = logit_weights(producer.kernel, producer.bias, plan.logits.input_scale, plan.logits.input_step,
                                plan.logit_scale)
        export.get_layer(producer.name).set_weights([np.asarray(w) for w in weights[:2]])
    return export, rewritten


def _logit_producer(producer, plan):
    """The output Dense with a bias (``logit_weights``, set by the caller), its output range pinned unless the
    model pins it (a quantization-aware copy's fake quant)."""
    new = type(producer).from_config({**producer.get_config(), "use_bias": True})
    if not plan.pin_logits:
        return new
    grid = FakeQuant(*plan.logit_range, name=f"{producer.name}_grid")
    return lambda *args, **kwargs: grid(new(*args, **kwargs))


def _compared_staircase(producer, threshold, site):
    """A call computing ``threshold``'s levels from ``producer``'s input: copy k of the producer (weights set
    by the caller) clamped onto {0, step} (2 codes: 2 1[acc > t_k]), the copies summed pairwise by ADD, each
    sum on a grid of the same scale (exact), the last on the threshold's grid (level = step sum_k 1[acc > t_k])."""
    names = compared_staircase_names(site, threshold.steps)
    n, step = threshold.steps, (threshold.high - threshold.low) / threshold.steps
    copies = [type(producer).from_config({**producer.get_config(), "use_bias": True, "activation": None,
                                          "name": names[k]}) for k in range(n)]
    clamps = [ExportFusedOutput("relu", indicator_sum_range(step, 1), name=names[n + k]) for k in range(n)]
    sums = [keras.layers.Add(name=names[2 * n + 2 * (k - 1)]) for k in range(1, n)]
    grids = [FakeQuant(*(indicator_sum_range(step, k + 1) if k < n - 1 else output_range_of(threshold)),
                       name=names[2 * n + 2 * (k - 1) + 1]) for k in range(1, n)]
    requantize = ExportRequantize(output_range_of(threshold), name=names[-1])  # a one-step staircase's

    def call(*args, **kwargs):
        indicators = [clamp(copy(*args, **kwargs)) for copy, clamp in zip(copies, clamps)]
        if n == 1:
            return requantize(indicators[0])
        total = indicators[0]
        for add, grid, indicator in zip(sums, grids, indicators[1:]):
            total = grid(add([total, indicator]))
        return total

    return call


def _fused_producer(producer, threshold):
    """A call of ``producer`` (bias, no activation) whose output is ``threshold``'s, clamped onto its levels."""
    new = type(producer).from_config({**producer.get_config(), "use_bias": True, "activation": None})
    levels, _ = levels_of(threshold)
    clamp = "n1_to_1" if levels[0] == -1.0 else "relu"
    if not isinstance(threshold, ftprop_layers.Staircase):
        fused = ExportFusedOutput(clamp, output_range_of(threshold), name=fused_output_name(threshold.name))
        return lambda *args, **kwargs: fused(new(*args, **kwargs))
    fused = ExportFusedOutput(clamp, staircase_output_range(threshold), name=fused_output_name(threshold.name))
    requantize = ExportRequantize(output_range_of(threshold), name=requantized_name(threshold.name))
    return lambda *args, **kwargs: requantize(fused(new(*args, **kwargs)))


def _scale_output(layer, factor):
    """Multiply ``layer``'s output by ``factor`` > 0 through its weights."""
    if isinstance(layer, keras.layers.BatchNormalization):
        scaled = [layer.gamma, layer.beta]
    else:
        scaled = [w for w in (getattr(layer, "kernel", None), getattr(layer, "depthwise_kernel", None),
                              getattr(layer, "bias", None)) if w is not None]
    for weight in scaled:
        weight.assign(weight * factor)
