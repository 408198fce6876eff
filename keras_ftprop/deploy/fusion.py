"""Which thresholds the int8 export fuses into their producer's requantization, and why the others are not.

A step or a staircase on [0, b] is fused when its input comes from a linear Conv2D or Dense (with its batch
norm; max pooling, flatten and dropout may lie between, as they commute with a monotone threshold) that reads
another threshold's output, and (a staircase) when ``fused_weights`` places every channel exactly.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.fused_weights import NotFusable, batch_norm_factor, fused_weights
from keras_ftprop.deploy.graph import graph, grid_origin, only_input
from keras_ftprop.deploy.grids import grid_of, nudged_range
from keras_ftprop.deploy.thresholds import is_threshold

# Layers that commute with a monotone threshold, h(f(x)) = f(h(x)): they may lie between a fused threshold and
# its producer (a max pool before a batch norm only if the batch norm's scale is positive).
_COMMUTE_WITH_STEP = (keras.layers.MaxPooling2D, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                      keras.layers.SpatialDropout2D)
_PER_CHANNEL = (keras.layers.MaxPooling2D, keras.layers.Dropout, keras.layers.SpatialDropout2D)
# A step decided on its accumulator needs |acc| (and its bias) exact in float32, as the converter's float32
# bias and the quantization-aware copy's sum hold them: fan-in x 127 x max |input code| below 2^23.
_MAX_EXACT_ACCUMULATOR = 2**23
_MIN_FUSED_INPUT_STEP = 8  # m: the accumulator's margin m//2 must survive the bias rounding (m//4) with room


@dataclasses.dataclass(frozen=True)
class FusedThreshold:
    """A step or staircase computed by the requantization of ``producer`` (see ``keras_ftprop.deploy``)."""

    threshold: str  # the HardThreshold or Staircase layer
    producer: str  # the Conv2D or Dense layer
    batch_norm: str | None  # folded into the producer by the export
    between: tuple  # names of the other layers from the producer to the threshold, in order
    input_scale: float  # s_in of the producer's input grid
    input_step: int  # m: the producer's input codes minus the zero point are multiples of m
    input_bound: int  # max |input code - zero point|


def fused_thresholds(model):
    """({threshold name: FusedThreshold}, {threshold name: why it is not fused}) of the int8 export of ``model``.

    ``model``: a functional model as ``to_tflite`` converts it (each layer called once, BatchNormThreshold
    split into its layers). A staircase is fused only if every channel's thresholds can be placed exactly
    (``fused_weights``), which depends on the weights.
    """
    producers, consumers = graph(model)
    fused, unfused = {}, {}
    for layer in model.layers:
        if not is_threshold(layer):
            continue
        try:
            site = _fusion_of(layer, producers, consumers)
            if isinstance(layer, ftprop_layers.Staircase):
                fused_weights(model, site)
        except NotFusable as reason:
            unfused[layer.name] = str(reason)
        else:
            fused[layer.name] = site
    return fused, unfused


def decided_in_producer(model, site, producers):
    """Whether one layer can compute ``site``'s threshold from its producer's integer accumulator, as the
    quantization-aware copy's ``ExactStepConv2D`` and ``ExactStaircaseConv2D`` do: the producer is a Conv2D
    and its batch norm, if any, reads it directly."""
    producer = model.get_layer(site.producer)
    if type(producer) is not keras.layers.Conv2D:
        return False
    return site.batch_norm is None or producers.get(id(only_input(model.get_layer(site.batch_norm)))) is producer


def _fusion_of(layer, producers, consumers):
    """The FusedThreshold of ``layer`` if it can be its producer's requantization (``NotFusable`` otherwise)."""
    staircase = isinstance(layer, ftprop_layers.Staircase)
    if staircase and layer.low != 0.0:
        raise NotFusable(f"its lowest level is {layer.low:g}, not 0 (the requantization's clamp is a RELU)")
    producer, batch_norm, before_norm, after_norm = _path_to_producer(layer, producers, consumers, staircase)
    if batch_norm is not None and before_norm:
        _check_commutes_with(batch_norm, before_norm)
    scale, step, bound = _input_grid(producer, producers)
    if not staircase and step < _MIN_FUSED_INPUT_STEP:
        raise NotFusable(f"the input grid of {producer.name!r} is too fine (codes {step} apart)")
    between = tuple(b.name for b in before_norm) + tuple(b.name for b in after_norm)
    return FusedThreshold(layer.name, producer.name, None if batch_norm is None else batch_norm.name, between,
                          scale, step, bound)


def _path_to_producer(layer, producers, consumers, staircase):
    """(producer, its batch norm or None, the layers between the two, the layers after the batch norm): the path
    back from ``layer`` to its Conv2D or Dense, each tensor read by no other layer."""
    after_norm, before_norm, batch_norm, current = [], [], None, layer
    while True:
        tensor = only_input(current)
        if tensor is None:
            raise NotFusable(f"{current.name!r} takes several inputs (a sum)")
        if consumers[id(tensor)] != 1:
            raise NotFusable("its input is also read by another layer")
        producer = producers[id(tensor)]
        if isinstance(producer, keras.layers.InputLayer):
            raise NotFusable("it reads the model's input")
        if type(producer) in (keras.layers.Conv2D, keras.layers.Dense):
            _check_producer(producer, staircase)
            return producer, batch_norm, before_norm, after_norm
        if isinstance(producer, keras.layers.BatchNormalization) and batch_norm is None:
            if producer.axis not in (-1, len(producer.input.shape) - 1):
                raise NotFusable(f"batch norm {producer.name!r} is not per output channel")
            batch_norm = producer
        elif isinstance(producer, _COMMUTE_WITH_STEP):
            (before_norm if batch_norm is not None else after_norm).insert(0, producer)
        else:
            raise NotFusable(f"{producer.name!r} ({type(producer).__name__}) lies between it and its convolution")
        current = producer


def _check_producer(producer, staircase):
    """``NotFusable`` unless ``producer``'s requantization can compute the threshold: linear, and per channel."""
    if getattr(producer, "activation", None) not in (None, keras.activations.linear):
        raise NotFusable(f"{producer.name!r} has an activation")
    if staircase and type(producer) is keras.layers.Dense:  # its multiplier must be per channel
        raise NotFusable(f"a staircase after the dense layer {producer.name!r}, whose kernel some converters "
                         "quantize per tensor")


def _check_commutes_with(batch_norm, before_norm):
    """``NotFusable`` unless the layers between the producer and its batch norm commute with the batch norm."""
    if not all(isinstance(b, _PER_CHANNEL) for b in before_norm):
        raise NotFusable(f"batch norm {batch_norm.name!r} is not per output channel")
    if np.any(batch_norm_factor(batch_norm)[0] <= 0):
        raise NotFusable(f"batch norm {batch_norm.name!r} follows a max pool and has a non-positive scale")


def _input_grid(producer, producers):
    """``grid_of`` the threshold whose output ``producer`` reads (``NotFusable`` if it reads anything else)."""
    tensor = only_input(producer)
    source = grid_origin(tensor, producers) if tensor is not None else None
    if source is None or isinstance(source, keras.layers.InputLayer):
        raise NotFusable(f"{producer.name!r} reads the model's input, not a threshold's output")
    if not is_threshold(source):
        raise NotFusable(f"{producer.name!r} reads {source.name!r} ({type(source).__name__}), not a threshold")
    return grid_of(source)


def accumulator_compares(model, fused, input_range, input_roundings=(), staircases=True):
    """{threshold name: FusedThreshold} of the steps and staircases (on [0, b]) not in ``fused`` that the
    export decides on their producer's exact accumulator (``fused_weights.accumulator_step_weights`` and
    ``accumulator_staircase_weights``): a linear Conv2D or
    Dense (batch norm, max pooling, flatten, dropout between as for fusion) that reads the model's input
    (``input_range``: the [min, max] of its int8 grid; ``input_roundings``: names of layers that put it on
    that grid, a quantization-aware copy's) or a threshold's output on a grid too fine to fuse, with every
    accumulator below 2^23 in magnitude; staircases only with ``staircases``.
    """
    producers, consumers = graph(model)
    sites = {}
    for layer in model.layers:
        staircase = isinstance(layer, ftprop_layers.Staircase)
        if not is_threshold(layer) or layer.name in fused or (staircase and (layer.low != 0.0 or not staircases)):
            continue
        try:
            producer, batch_norm, before_norm, after_norm = _path_to_producer(layer, producers, consumers,
                                                                              staircase)
            if batch_norm is not None and before_norm:
                _check_commutes_with(batch_norm, before_norm)
        except NotFusable:
            continue
        grid = _exact_input_grid(producer, producers, input_range, input_roundings)
        fan_in = int(np.prod(producer.kernel.shape[:-1]))
        if grid is None or fan_in * 127 * grid[2] >= _MAX_EXACT_ACCUMULATOR:
            continue
        between = tuple(b.name for b in before_norm) + tuple(b.name for b in after_norm)
        sites[layer.name] = FusedThreshold(layer.name, producer.name, None if batch_norm is None else
                                           batch_norm.name, between, *grid)
    return sites


def _exact_input_grid(producer, producers, input_range, input_roundings):
    """(s_in, m, max |code - z|) of the int8 grid ``producer`` reads, if the export knows it exactly: the
    model's input (on ``nudged_range(*input_range)``), or a threshold's output; None otherwise."""
    tensor = only_input(producer)
    source = grid_origin(tensor, producers) if tensor is not None else None
    if source is not None and is_threshold(source):
        return grid_of(source)
    if input_range is None or not (isinstance(source, keras.layers.InputLayer) or (
            source is not None and source.name in input_roundings)):
        return None
    low, high = nudged_range(*input_range)
    return (high - low) / 255.0, 1, 255
