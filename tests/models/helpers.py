"""Small shared helpers for the model tests (tiny inputs keep them fast)."""

import keras
import numpy as np

# The smallest convenient input of each model and the number of classes used
# in the end-to-end tests.
TINY_INPUT_SHAPES = {
    "convnet4": (16, 16, 3),
    "convnet8": (20, 20, 3),  # convnet8's minimum
    "alexnet": (60, 60, 3),  # AlexNet's minimum
    "resnet18": (32, 32, 3),
    "resnet34": (32, 32, 3),
    "bireal_resnet18": (32, 32, 3),
    "micro_convnet": (16, 16, 3),
}
TINY_CLASSES = 10


def tiny_batch(input_shape, batch_size=4, classes=TINY_CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, *input_shape)).astype("float32")
    labels = rng.integers(0, classes, size=(batch_size,))
    return images, labels


def compile_for_one_step(model, jit_compile=False, learning_rate=0.01):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def layers_of_type(model, layer_type):
    """The layers of ``layer_type`` in model order, counting the threshold inside
    each ``BatchNormThreshold`` at the fused layer's place."""
    found = []
    for layer in model.layers:
        for candidate in (layer, getattr(layer, "activation", None)):
            if isinstance(candidate, layer_type) and isinstance(candidate, keras.layers.Layer):
                found.append(candidate)
    return found


def inbound_graph(model):
    """``{layer name: [names of the layers feeding it]}`` for a functional model.

    Read from the functional config (the public serialisation format), in the
    order of each layer's call arguments.
    """
    return {
        layer_config["name"]: _keras_history_names(layer_config["inbound_nodes"])
        for layer_config in model.get_config()["layers"]
    }


def _keras_history_names(node):
    if isinstance(node, dict):
        if "keras_history" in node:
            return [node["keras_history"][0]]
        return [name for value in node.values()
                for name in _keras_history_names(value)]
    if isinstance(node, (list, tuple)):
        return [name for value in node for name in _keras_history_names(value)]
    return []


def chain_before(graph, layer_name, length):
    """The ``length`` layer names feeding ``layer_name`` along first inputs,
    nearest last, e.g. ``["conv1", "conv1_bn", "conv1_pool"]`` for
    ``"conv1_act"``; ``graph`` comes from `inbound_graph`."""
    names = []
    current = layer_name
    for _ in range(length):
        current = graph[current][0]
        names.append(current)
    return names[::-1]
