"""Tests of models/layers.py: PyTorch-style max pooling, initialisation,
activation sites and the keras.applications-style input/pooling helpers."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import PaddedMaxPooling2D, convnet4, resnet18
from models.layers import (
    ActivationSites,
    conv2d,
    dense,
    model_input,
    pool_features,
    torch_default_initializers,
)


def torch_max_pool(x, pool_size, strides, padding):
    """NumPy MaxPool2d with PyTorch semantics (implicit -inf padding,
    floor mode), channels-last."""
    batch, height, width, channels = x.shape
    out_h = (height + 2 * padding - pool_size) // strides + 1
    out_w = (width + 2 * padding - pool_size) // strides + 1
    out = np.empty((batch, out_h, out_w, channels), x.dtype)
    for i in range(out_h):
        rows = slice(max(i * strides - padding, 0),
                     min(i * strides - padding + pool_size, height))
        for j in range(out_w):
            cols = slice(max(j * strides - padding, 0),
                         min(j * strides - padding + pool_size, width))
            out[:, i, j, :] = x[:, rows, cols, :].max(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    "size, expected", [(54, 27), (112, 56), (27, 14), (32, 16), (1, 1)]
)
def test_padded_max_pool_output_size_is_pytorch_floor_formula(size, expected):
    pool = PaddedMaxPooling2D(3, 2, padding=1)
    x = np.zeros((1, size, size, 2), "float32")
    assert pool(x).shape == (1, expected, expected, 2)
    assert pool.compute_output_shape((None, size, size, 2)) == (
        None, expected, expected, 2)


def test_padded_max_pool_matches_pytorch_semantics_on_negative_inputs():
    rng = np.random.default_rng(1)
    x = -np.abs(rng.standard_normal((2, 54, 54, 3))).astype("float32") - 0.5
    got = keras.ops.convert_to_numpy(PaddedMaxPooling2D(3, 2, 1)(x))
    np.testing.assert_array_equal(got, torch_max_pool(x, 3, 2, 1))
    # Zero padding would have put 0 on the borders; -inf padding never wins.
    assert got.max() < 0


def test_padded_max_pool_on_step_outputs_never_returns_the_padding():
    # A map of -1 step outputs must pool to -1 everywhere (zero padding
    # would turn the border to 0).
    x = -np.ones((1, 54, 54, 4), "float32")
    got = keras.ops.convert_to_numpy(PaddedMaxPooling2D(3, 2, 1)(x))
    np.testing.assert_array_equal(got, -np.ones((1, 27, 27, 4)))


def test_keras_same_padding_is_not_pytorch_padding():
    # Why the layer exists: MaxPooling2D(padding="same") has the right output
    # size but windows shifted by one pixel.
    x = np.arange(8, dtype="float32")[::-1].reshape(1, 1, 8, 1)
    x = np.repeat(x, 3, axis=1)
    ours = keras.ops.convert_to_numpy(PaddedMaxPooling2D(3, 2, 1)(x))
    same = keras.ops.convert_to_numpy(
        keras.layers.MaxPooling2D(3, 2, padding="same")(x))
    assert ours.shape == same.shape
    np.testing.assert_array_equal(ours, torch_max_pool(x, 3, 2, 1))
    assert not np.array_equal(ours, same)


def test_padded_max_pool_gradient_reaches_only_real_positions():
    x = tf.constant(np.random.default_rng(2).standard_normal(
        (2, 9, 9, 3)).astype("float32") - 3.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = PaddedMaxPooling2D(3, 2, 1)(x)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(grad))
    # Each output sends gradient 1 to exactly one real input.
    assert grad.sum() == pytest.approx(float(np.prod(y.shape)))


def test_padded_max_pool_keeps_unknown_spatial_dims_and_serialises():
    pool = PaddedMaxPooling2D(3, 2, padding=1, name="pool")
    assert pool.compute_output_shape((None, None, 7, 3)) == (None, None, 4, 3)
    clone = PaddedMaxPooling2D.from_config(pool.get_config())
    assert (clone.pool_size, clone.strides, clone.padding, clone.name) == (
        3, 2, 1, "pool")


def test_padded_max_pool_rejects_padding_that_could_fill_a_window():
    with pytest.raises(ValueError, match="padding"):
        PaddedMaxPooling2D(3, 2, padding=3)


def test_torch_default_initialisation_is_uniform_one_over_sqrt_fan_in():
    layer = conv2d(64, 5, in_channels=32, name="conv")
    layer.build((None, 16, 16, 32))
    bound = 1.0 / math.sqrt(32 * 5 * 5)
    for weights in (layer.kernel, layer.bias):
        values = weights.numpy()
        assert np.abs(values).max() <= bound
    kernel = layer.kernel.numpy()
    # Variance of U(-b, b) is b^2 / 3.
    assert kernel.var() == pytest.approx(bound**2 / 3, rel=0.05)

    fc = dense(100, in_features=400, name="fc")
    fc.build((None, 400))
    assert np.abs(fc.kernel.numpy()).max() <= 1 / 20
    kernel_init, bias_init = torch_default_initializers(400)
    assert bias_init.get_config()["maxval"] == pytest.approx(1 / 20)
    assert kernel_init.get_config()["mode"] == "fan_in"


def test_activation_sites_default_to_relu_with_deterministic_names():
    sites = ActivationSites(None)
    x = keras.Input((4,))
    sites(x, "first_act")
    sites(x, "second_act")
    assert [layer.name for layer in sites.layers] == ["first_act", "second_act"]
    assert all(isinstance(layer, keras.layers.ReLU) for layer in sites.layers)
    assert sites.layers[0] is not sites.layers[1]


def test_activation_sites_reject_a_factory_returning_a_shared_layer():
    shared = keras.layers.ReLU()
    with pytest.raises(ValueError, match="new layer on every call"):
        convnet4(activation=lambda: shared)


@pytest.mark.parametrize("factory, error", [
    ("relu", TypeError),  # names go through get_model / activation_factory
    (lambda: keras.activations.relu, TypeError),  # not a layer
])
def test_activation_sites_reject_non_factories(factory, error):
    with pytest.raises(error):
        resnet18(input_shape=(32, 32, 3), classes=10, activation=factory)


def test_model_input_uses_default_shape_and_checks_input_tensor():
    assert model_input(None, (32, 32, 3)).shape == (None, 32, 32, 3)
    assert model_input((8, 9, 1), (32, 32, 3)).shape == (None, 8, 9, 1)
    tensor = keras.Input((40, 40, 3))
    assert model_input(None, (32, 32, 3), tensor) is tensor
    with pytest.raises(ValueError, match="disagrees"):
        model_input((32, 32, 3), (32, 32, 3), tensor)
    with pytest.raises(ValueError, match="height, width, channels"):
        model_input((32, 32), (32, 32, 3))
    with pytest.raises(TypeError, match="symbolic"):
        model_input(None, (32, 32, 3), np.zeros((1, 32, 32, 3)))


def test_builders_accept_an_input_tensor():
    tensor = keras.Input((16, 16, 3), name="images")
    model = convnet4(input_tensor=tensor)
    assert model.inputs[0] is tensor


def test_pool_features():
    x = keras.Input((5, 5, 7))
    assert pool_features(x, None) is x
    assert pool_features(x, "avg").shape == (None, 7)
    assert pool_features(x, "max").shape == (None, 7)
    with pytest.raises(ValueError, match="pooling"):
        pool_features(x, "sum")


def _minus_inf_padded_max_pool(x, pool_size, strides, padding):
    """PyTorch's definition as a TensorFlow graph: pad with -inf, valid max pooling."""
    pad = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    return tf.nn.max_pool2d(tf.pad(x, pad, constant_values=-np.inf), pool_size, strides, "VALID")


@pytest.mark.parametrize("pool_size, strides, padding, size", [
    (3, 2, 1, 9), (3, 2, 1, 8), (3, 1, 1, 5), (3, 2, 2, 7), (5, 2, 2, 6), (2, 2, 1, 5), (3, 2, 1, 1)])
def test_edge_padding_gives_the_minus_inf_padding_outputs_and_gradients_with_ties(
        pool_size, strides, padding, size):
    # Step outputs (+-1) tie in almost every window: the gradient must still
    # reach the inputs the -inf definition sends it to.
    rng = np.random.default_rng(size)
    x = tf.constant(rng.choice([-1.0, 1.0], (2, size, size + 1, 3)).astype("float32"))
    weights = tf.constant(rng.standard_normal(
        _minus_inf_padded_max_pool(x, pool_size, strides, padding).shape).astype("float32"))
    pool = PaddedMaxPooling2D(pool_size, strides, padding)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, reference = pool(x), _minus_inf_padded_max_pool(x, pool_size, strides, padding)
        ours_total, reference_total = tf.reduce_sum(weights * ours), tf.reduce_sum(weights * reference)
    np.testing.assert_array_equal(ours, reference)
    ours_grad, reference_grad = tape.gradient(ours_total, x).numpy(), tape.gradient(reference_total, x).numpy()
    np.testing.assert_array_equal(ours_grad != 0, reference_grad != 0)  # the same inputs win
    np.testing.assert_allclose(ours_grad, reference_grad, rtol=1e-6, atol=1e-6)  # summed in another order


def test_padded_max_pool_graph_holds_no_infinity():
    # An int8 export calibrates every tensor's range; -inf in it ruins the scale.
    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, PaddedMaxPooling2D(3, 2, 1)(inputs))
    graph = tf.function(model).get_concrete_function(tf.TensorSpec((1, 8, 8, 2))).graph
    constants = [op.get_attr("value") for op in graph.get_operations() if op.type == "Const"]
    assert all(np.all(np.isfinite(tf.make_ndarray(value))) for value in constants)
