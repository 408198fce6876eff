"""The functional copy that the export and the quantization-aware copy work on: a checked model, as a functional
graph, with each BatchNormThreshold split into its layers."""

from __future__ import annotations

import keras

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.thresholds import is_threshold


def check_model(model):
    """A ValueError unless ``model`` is a built Keras model whose thresholds are layers of its own graph."""
    if not isinstance(model, keras.Model) or not model.built or not model.inputs:
        raise ValueError("to_tflite needs a built functional or Sequential Keras model")
    for layer in ftprop_layers.leaf_layers(model):
        activation = getattr(layer, "activation", None)
        if is_threshold(activation) and not isinstance(layer, ftprop_layers.BatchNormThreshold):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) has a {type(activation).__name__} as its "
                "activation=; to export it, apply the activation as a separate layer")
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(is_threshold(inner) for inner in ftprop_layers.leaf_layers(layer)):
            raise ValueError(f"nested model {layer.name!r} holds threshold layers; export a flat model "
                             "(build it functionally, without nested models)")


def functional(model):
    """``model`` as a functional model: a Sequential model's layers as a functional graph, any other as it is."""
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    return model


def unfused(model):
    """A copy of functional ``model`` with each BatchNormThreshold as its two (three) layers, and what was split.

    BatchNormThreshold(z) -> BatchNormalization (the fused layer's name and
    weights) -> threshold (the activation's name); on [z, r] an ``Add`` named
    ``<name>_add`` joins r in between: the same forward pass, by the same ops.
    """
    split = {}

    def clone(layer):
        if not isinstance(layer, ftprop_layers.BatchNormThreshold):
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        del config["activation"]
        batch_norm = keras.layers.BatchNormalization.from_config(config)
        threshold = layer.activation.__class__.from_config(layer.activation.get_config())
        add = keras.layers.Add(name=f"{layer.name}_add")
        split[layer.name] = f"BatchNormThreshold as BatchNormalization {layer.name!r} + {threshold.name!r}"

        def call(inputs, **kwargs):
            if isinstance(inputs, (list, tuple)):
                z, residual = inputs
                return threshold(add([batch_norm(z), residual]))
            return threshold(batch_norm(inputs))

        return call

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:  # a BatchNormThreshold's are its batch norm's (its activation has none)
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy, split
