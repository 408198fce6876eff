"""Quantization-aware copies of threshold networks: the Keras model computes what its int8 TFLite model computes.

    qat = deploy.quantization_aware(model, x_train[:500])   # same weights, the int8 rounding in the loop
    qat.compile(...); qat.fit(...)                          # fine-tune
    deploy.to_tflite(qat, x_train[:500])                    # the same integer codes

Each rounding that the int8 model applies is a TensorFlow fake-quant op in the copy, with the range the
export uses (so the export and the copy agree by construction, up to requantization ties):

    kernel     w_q = s round(w / s),  s = max|w| / 127 per output channel, codes in [-127, 127]; a producer
               whose threshold the export decides on its accumulator sums the integer codes (exact in
               float32 below 2^24) and scales the sum afterwards
               (the converter's; batch norm folded in multiplies s by |f| and the codes by sign f);
               gradient straight through, d w_q / d w = 1
    input      x_q on the 256-code grid of its calibrated [min, max] (nudged so that 0 is a code)
    threshold  forward h(x_q), x_q on the export's pinned input range (``keras_ftprop.deploy``): the int8
               compare; a step or staircase that the export fuses into its producer's requantization, or a
               step it decides on its producer's accumulator (``fusion.accumulator_compares``: the first
               layer's), compares x itself (the int8 accumulator is exact); for a step after a convolution
               (and its batch norm) x's sign is the export's decision, taken from the integer accumulator and
               the export's own float64 threshold (``ExactStepConv2D``), and for a staircase x is set to a
               value of the export's level (``ExactStaircaseConv2D``: on the image the level it places,
               ``keras_ftprop.deploy.input_staircases``; after codes its gates,
               ``fused_weights.staircase_decisions``); backward the threshold's own (FTPROP) at the
               unrounded x
    sum        each operand of an ``Add`` that is not a threshold's output (a residual branch's batch norm)
               on the 256-code grid of its calibrated range, as the int8 ADD requantizes its operands; a sum
               that a step reads (ResNet's) on power-of-two grids instead (``keras_ftprop.deploy.sums``), on
               which the int8 ADD adds exactly and the copy's float32 sum lands within 1e-3 of the same code;
               such an operand that a convolution and its batch norm compute from a threshold's codes is one
               ``FoldedConv2D`` (the batch norm folded in, the kernel and bias on the grids of the exact logits,
               ``keras_ftprop.deploy.operands``), whose code is the int8 model's on every runtime
    pool       a global average pool of a step's +-1 on the grid where every mean is a code
               (``keras_ftprop.deploy.pools``: ResNet's), exact on every runtime
    output     the logits on the 256-code grid of their calibrated range; where a Dense layer computes them
               from a threshold's codes or such a pool's (``keras_ftprop.deploy.logits``), its kernel and bias on
               the grids that make its int8 output code the same in every arithmetic, and that code computed from
               integers (s_out round((m U + b_q) / (m n_c)))

The ranges are fixed when the copy is made (calibrated on ``representative_data``) and saved with it.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.calibration import calibrate, max_abs_of, representative_batches
from keras_ftprop.deploy.functional import check_model, functional, unfused
from keras_ftprop.deploy.fusion import accumulator_compares, decided_in_producer, fused_thresholds
from keras_ftprop.deploy.graph import graph, scalable_producer, sole_input, threshold_source
from keras_ftprop.deploy.grids import nudged_range, quantized_kernel
from keras_ftprop.deploy.logits import DENSE_PER_CHANNEL, MIN_COPY_STEPS, coarse_grid, logit_site, output_range
from keras_ftprop.deploy.operands import operand_sites
from keras_ftprop.deploy.pools import ExactGlobalAveragePooling2D, pooled_grid, pooled_range
from keras_ftprop.deploy.quantized_layers import (
    QUANTIZED,
    ExactStaircaseConv2D,
    ExactStepConv2D,
    FakeQuant,
    FoldedConv2D,
    QuantizedDense,
    QuantizedThreshold,
)
from keras_ftprop.deploy.sums import exact_sums
from keras_ftprop.deploy.thresholds import is_threshold, thresholds_of

# Layers with weights that the int8 model computes as the float model does (batch norm folds into the kernel).
_EXACT_WITH_WEIGHTS = (keras.layers.BatchNormalization,)
# A convolution and its batch norm whose threshold decision the copy takes as the export does.
_EXACT_DECISIONS = (ExactStepConv2D, ExactStaircaseConv2D)


def quantization_aware(model, representative_data, calibration_samples=500, exact_input_staircases=True):
    """A trainable copy of ``model`` (same weights) whose forward pass is its int8 TFLite model's.

    See [`keras_ftprop.deploy.qat`][keras_ftprop.deploy.qat]. ``representative_data`` (as
    ``to_tflite``'s) fixes the ranges of the input, the logits and the thresholds' inputs;
    ``exact_input_staircases`` (as ``to_tflite``'s): a staircase on the image is decided on its producer's
    exact accumulator, as the export's single requantization (or its copies per threshold) decides it on
    every runtime (``ExactStaircaseConv2D``; False: requantized, then compared, as the export will).

    Raises:
      ValueError: a layer with weights other than Conv2D, Dense and BatchNormalization (named), a threshold
        given as ``activation=``, a nested model holding thresholds, a layer called more than once.
    """
    if representative_data is None:
        raise ValueError("quantization_aware needs representative_data (a slice of the training inputs)")
    check_model(model)
    model, _ = unfused(functional(model))
    _check_quantizable(model)
    producers, consumers = graph(model)
    fused, _ = fused_thresholds(model)
    pinned = [layer for layer in model.layers if is_threshold(layer) and sole_input(layer, consumers) is not None]
    batches = list(representative_batches(representative_data, calibration_samples))
    operands = _requantized_operands(model, producers)
    (input_low, input_high), ranges = calibrate(
        model, [model.outputs[0]] + [model.get_layer(name).input[i] for name, i in operands]
        + [layer.input for layer in pinned], batches)
    (output_low, output_high), operand_ranges = ranges[0], ranges[1:1 + len(operands)]
    pinned_max = dict(zip((layer.name for layer in pinned), max_abs_of(ranges[1 + len(operands):])))
    exact_sites = {**fused, **accumulator_compares(model, fused, (input_low, input_high),
                                                   staircases=exact_input_staircases)}
    unrounded = set(exact_sites)
    input_units = {site.producer: site.input_scale * site.input_step for site in exact_sites.values()}
    operand_grids = {key: nudged_range(*bounds) for key, bounds in zip(operands, operand_ranges)}
    exact_grids, sum_max_abs = exact_sums(model, producers, consumers, dict(zip(operands, operand_ranges)))
    operand_grids.update(exact_grids)
    folded = {site.producer: site for site in operand_sites(model, producers, consumers, exact_grids)}
    decided = _decided_in_producers(model, exact_sites, producers)
    absorbed = {site.batch_norm: site.producer for site in (*folded.values(), *decided.values())
                if site.batch_norm is not None}  # batch norms computed by their producer's layer
    pinned_max.update(sum_max_abs)
    operand_quant = {key: FakeQuant(*grid, name=f"{key[0]}_in{key[1]}") for key, grid in operand_grids.items()}
    pools = {layer.name: pooled_grid(layer, producers) for layer in model.layers}
    pools = {name: pooled_range(grid[0]) for name, grid in pools.items() if grid is not None}
    logits, _ = logit_site(model, pools=True)
    output_grid = nudged_range(output_low, output_high)
    if logits is not None:  # exact logits, unless the grids would be too coarse
        kernel = model.get_layer(logits.producer).kernel.numpy()
        widened = output_range(output_low, output_high, kernel, logits)
        if coarse_grid(kernel, logits, (widened[1] - widened[0]) / 255.0, MIN_COPY_STEPS):
            logits = None
        else:
            output_grid = widened

    def clone(layer):
        if logits is not None and layer.name == logits.producer:
            return QuantizedDense.from_config({**layer.get_config(), "logits": {
                "input_scale": logits.input_scale, "input_step": logits.input_step,
                "output_scale": (output_grid[1] - output_grid[0]) / 255.0, "per_channel": DENSE_PER_CHANNEL}})
        if layer.name in folded:
            return FoldedConv2D.from_config({
                **layer.get_config(), "operand": folded[layer.name].config(),
                "batch_norm": keras.saving.serialize_keras_object(model.get_layer(folded[layer.name].batch_norm))})
        if layer.name in pools:
            return ExactGlobalAveragePooling2D(*pools[layer.name], **layer.get_config())
        if layer.name in decided:
            site = decided[layer.name]
            batch_norm = keras.saving.serialize_keras_object(
                None if site.batch_norm is None else model.get_layer(site.batch_norm))
            threshold = model.get_layer(site.threshold)
            if isinstance(threshold, ftprop_layers.Staircase):
                return ExactStaircaseConv2D.from_config({**layer.get_config(), "batch_norm": batch_norm, "staircase": {
                    "input_scale": site.input_scale, "input_step": site.input_step, "input_bound": site.input_bound,
                    "thresholds": thresholds_of(threshold)}})
            return ExactStepConv2D.from_config({
                **layer.get_config(), "batch_norm": batch_norm,
                "step": {"input_scale": site.input_scale, "input_step": site.input_step}})
        if layer.name in absorbed:  # computed by its producer's FoldedConv2D, ExactStepConv2D, ExactStaircaseConv2D
            identity = keras.layers.Identity(name=layer.name)
            return lambda inputs, **kwargs: identity(inputs)
        if type(layer) in QUANTIZED:
            return QUANTIZED[type(layer)].from_config({**layer.get_config(),
                                                       "input_unit": input_units.get(layer.name)})
        if layer in pinned:
            is_fused = layer.name in unrounded
            scaled = (not is_fused and thresholds_of(layer) == [0.0] and pinned_max[layer.name] > 0
                      and scalable_producer(layer, producers, consumers) is not None)
            threshold = layer.__class__.from_config({**layer.get_config(), "name": f"{layer.name}_unit"})
            return QuantizedThreshold(threshold, pinned_max[layer.name], scaled, is_fused, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    inputs = keras.Input(batch_shape=model.inputs[0].shape, name=model.inputs[0].name.split(":")[0])
    input_quant = FakeQuant(*nudged_range(input_low, input_high), name="input_quant")
    rounded = []

    def call(layer, *args, **kwargs):  # every reader of the input reads it rounded
        def round_input(tensor):
            if tensor is not inputs:
                return tensor
            if not rounded:
                rounded.append(input_quant(inputs))
            return rounded[0]

        args = keras.tree.map_structure(round_input, args)
        if isinstance(layer, keras.layers.Add):
            args = ([operand_quant[(layer.name, i)](t) if (layer.name, i) in operand_quant else t
                     for i, t in enumerate(args[0])], *args[1:])
        return layer(*args, **kwargs)

    body = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone, call_function=call)
    outputs = FakeQuant(*output_grid, name="output_quant")(body.outputs[0])
    copy = keras.Model(inputs, outputs, name=f"{model.name}_qat")
    for layer in model.layers:
        if layer.name in absorbed:
            copy.get_layer(absorbed[layer.name]).batch_norm.set_weights(layer.get_weights())
        elif layer.name in folded or layer.name in decided:  # its own weights; its batch norm's above
            target = copy.get_layer(layer.name)
            for variable, value in zip([target.kernel, target.bias], layer.get_weights()):
                variable.assign(value)
        elif layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def _check_quantizable(model):
    """A ValueError naming a layer whose weights the copy would not quantize as the export does."""
    for layer in ftprop_layers.leaf_layers(model):
        if (layer.weights and type(layer) not in QUANTIZED and not isinstance(layer, _EXACT_WITH_WEIGHTS)) \
                or isinstance(layer, keras.Model):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) cannot be made quantization-aware: only Conv2D "
                "and Dense kernels (and batch norms, which the export folds into them) are quantized")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("quantization_aware needs a model with one input and one output")


def _decided_in_producers(model, exact_sites, producers):
    """{Conv2D name: FusedThreshold} of the steps and staircases the export decides on a convolution's exact
    accumulator (``exact_sites``) that one layer can compute (``fusion.decided_in_producer``): the copy
    computes each in one ``ExactStepConv2D`` or ``ExactStaircaseConv2D``, which decides as the export does."""
    return {site.producer: site for site in exact_sites.values() if decided_in_producer(model, site, producers)}


def _requantized_operands(model, producers):
    """[(Add layer name, operand index)] of the operands of sums that the int8 model requantizes before adding.

    A threshold's output (through max pools and padding, as a residual shortcut) is already on its grid."""
    return [(layer.name, i) for layer in model.layers if isinstance(layer, keras.layers.Add)
            for i, tensor in enumerate(layer.input) if threshold_source(tensor, producers) is None]


def plain_model(model):
    """(the model the export converts, {threshold name: (max_abs, scaled, fused)}) of a quantization-aware
    ``model``.

    Quantized layers become their plain layer with the kernel w_q (on the int8 grid, so the converter
    rounds it to the same codes); each QuantizedThreshold becomes its threshold under the wrapper's name;
    FakeQuant layers stay (the converter takes their ranges).
    """
    recorded = {}
    restored = {layer.batch_norm.name: layer for layer in model.layers
                if isinstance(layer, _EXACT_DECISIONS) and layer.batch_norm is not None}

    def clone(layer):
        if layer.name in restored:  # the batch norm an Exact*Conv2D computed: the export folds it itself
            return keras.layers.BatchNormalization.from_config(restored[layer.name].batch_norm.get_config())
        if isinstance(layer, _EXACT_DECISIONS):
            config = {key: value for key, value in layer.get_config().items()
                      if key not in ("batch_norm", "step", "staircase")}
            return keras.layers.Conv2D.from_config(config)
        if isinstance(layer, QuantizedThreshold):
            recorded[layer.name] = (layer.max_abs, layer.scaled, layer.fused)
            return layer.threshold.__class__.from_config({**layer.threshold.get_config(), "name": layer.name})
        if isinstance(layer, FoldedConv2D):  # its batch norm folded in, on the exact grids
            config = {key: value for key, value in layer.get_config().items() if key not in ("batch_norm", "operand")}
            return keras.layers.Conv2D.from_config({**config, "use_bias": True})
        for plain, quantized in QUANTIZED.items():
            if type(layer) is quantized:
                config = layer.get_config()
                config.pop("input_unit", None)
                if config.pop("logits", None) is not None:
                    config["use_bias"] = True
                return plain.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = layer.get_weights()
        if isinstance(layer, _EXACT_DECISIONS):
            weights = [np.asarray(quantized_kernel(layer.kernel))] + ([layer.bias.numpy()] if layer.use_bias else [])
            if layer.batch_norm is not None:
                copy.get_layer(layer.batch_norm.name).set_weights(layer.batch_norm.get_weights())
        elif isinstance(layer, FoldedConv2D):
            weights = [np.asarray(w) for w in layer.folded_weights()[:2]]
        elif getattr(layer, "logits", None) is not None:
            weights = [np.asarray(w) for w in layer.logit_weights()[:2]]
        elif type(layer) in QUANTIZED.values():
            weights[0] = np.asarray(quantized_kernel(layer.kernel))
        copy.get_layer(layer.name).set_weights(weights)
    return copy, recorded
