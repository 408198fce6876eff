"""Reading the Keras graph of a functional model that calls each layer once: who produces and who reads a
tensor, and the paths the export looks through (layers that keep an int8 grid, or scale their input)."""

from __future__ import annotations

import collections

import keras

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.thresholds import is_threshold

# Layers with f(k x) = k f(x) for k > 0: a step after them may take a scaled input.
POSITIVELY_HOMOGENEOUS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.ZeroPadding2D,
                          keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                          keras.layers.SpatialDropout2D, keras.layers.GlobalAveragePooling2D,
                          keras.layers.GlobalMaxPooling2D)
# Layers that keep a threshold's output on its grid of codes (0, a padding value, is a code of every grid).
_KEEP_GRID = (keras.layers.ZeroPadding2D, keras.layers.MaxPooling2D, keras.layers.Flatten, keras.layers.Reshape,
              keras.layers.Dropout, keras.layers.SpatialDropout2D)
_LINEAR_PRODUCERS = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)


def graph(model):
    """({id(tensor): layer that outputs it}, {id(tensor): layer inputs and model outputs that take it}).

    ``model`` must call each layer once: a layer's ``input`` and ``output`` are
    then its only call's (a ValueError otherwise).
    """
    producers, consumers = {}, collections.Counter(id(t) for t in model.outputs)
    for layer in model.layers:
        for tensor in keras.tree.flatten(layer.output):
            producers[id(tensor)] = layer
        if not isinstance(layer, keras.layers.InputLayer):
            for tensor in keras.tree.flatten(layer.input):
                consumers[id(tensor)] += 1
    for layer in model.layers:  # a layer's later calls have outputs no layer's ``output`` names
        if not isinstance(layer, keras.layers.InputLayer) and any(
                id(tensor) not in producers for tensor in keras.tree.flatten(layer.input)):
            raise ValueError(f"layer {layer.name!r} takes the output of a layer called more than once (a shared "
                             "layer); to_tflite needs a model that calls each layer once")
    return producers, consumers


def only_input(layer):
    """``layer``'s input tensor if it takes one, else None."""
    inputs = keras.tree.flatten(layer.input)
    return inputs[0] if len(inputs) == 1 else None


def sole_input(layer, consumers):
    """``layer``'s input tensor if it takes one that no other layer reads, else None."""
    tensor = only_input(layer)
    return tensor if tensor is not None and consumers[id(tensor)] == 1 else None


def is_linear(layer):
    """Whether ``layer`` is a Conv2D, Dense or DepthwiseConv2D without an activation."""
    return (isinstance(layer, _LINEAR_PRODUCERS)
            and getattr(layer, "activation", None) in (None, keras.activations.linear))


def keeps_grid(layer):
    """Whether ``layer``'s int8 output codes are codes of its input (max pooling, padding with 0, reshapes);
    a layer of another library says so with a ``keeps_int8_grid = True`` attribute."""
    return isinstance(layer, _KEEP_GRID) or getattr(layer, "keeps_int8_grid", False) is True


def grid_origin(tensor, producers):
    """The layer that computes ``tensor``, looking through layers that keep the grid (None: no producer)."""
    while True:
        source = producers.get(id(tensor))
        if source is None or isinstance(source, keras.layers.InputLayer) or is_threshold(source):
            return source
        tensor = only_input(source)
        if not keeps_grid(source) or tensor is None:
            return source


def threshold_source(tensor, producers):
    """The threshold layer whose output ``tensor`` carries through layers that keep its grid, or None."""
    source = grid_origin(tensor, producers)
    return source if is_threshold(source) else None


def scalable_producer(layer, producers, consumers):
    """The layer whose weights scale ``layer``'s input by k > 0, or None.

    Walks back from ``layer`` through ``POSITIVELY_HOMOGENEOUS`` layers to a
    BatchNormalization (scale gamma and beta) or a linear Conv2D/Dense/
    DepthwiseConv2D (scale kernel and bias); every tensor on the way must have
    no other consumer.
    """
    while True:
        tensor = sole_input(layer, consumers)
        if tensor is None:
            return None
        producer = producers[id(tensor)]
        if isinstance(producer, keras.layers.BatchNormalization):
            return producer if producer.scale and producer.center else None
        if isinstance(producer, _LINEAR_PRODUCERS):
            return producer if is_linear(producer) else None
        if not isinstance(producer, POSITIVELY_HOMOGENEOUS):
            return None
        layer = producer


def folded_batch_norms(model, producers, consumers):
    """{batch norm: producer} for each BatchNormalization fed only by a linear Conv2D/Dense/DepthwiseConv2D."""
    folded = {}
    for layer in model.layers:
        tensor = sole_input(layer, consumers) if isinstance(layer, keras.layers.BatchNormalization) else None
        if tensor is not None and is_linear(producers[id(tensor)]):
            folded[layer.name] = producers[id(tensor)].name
    return folded


def layer_names(model):
    """Names of the layers an op can come from (not the inputs: their names are generated)."""
    return [layer.name for layer in ftprop_layers.leaf_layers(model)
            if not isinstance(layer, keras.layers.InputLayer)]


def find_layer(model, name):
    """The layer named ``name`` in ``model``, nested models included."""
    return next(layer for layer in ftprop_layers.leaf_layers(model) if layer.name == name)
