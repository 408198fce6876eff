"""Tests of keras_ftprop/pooling.py: PyTorch's MaxPool2d semantics, and files that load with the package alone."""

import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ftprop
from keras_ftprop import HardThreshold, PaddedMaxPooling2D
from tests.package_alone import predict_with_package_alone


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


# --------------------------------------------------------------------------
# saved files load with the installed package alone
# --------------------------------------------------------------------------

OLD_NAME = "ftprop_models>PaddedMaxPooling2D"  # the name while the layer lived in models/layers.py


def test_serialized_under_the_package_name_and_the_old_name_still_resolves():
    config = keras.saving.serialize_keras_object(PaddedMaxPooling2D(3, 2, 1, name="pool"))
    assert config["registered_name"] == "keras_ftprop>PaddedMaxPooling2D"
    old = {**config, "registered_name": OLD_NAME, "module": "models.layers"}
    layer = keras.saving.deserialize_keras_object(old)
    assert type(layer) is PaddedMaxPooling2D and (layer.pool_size, layer.strides, layer.padding) == (3, 2, 1)


def _pooling_model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((9, 9, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras_ftprop.BatchNormThreshold(HardThreshold(), name="bn")(x)
    x = PaddedMaxPooling2D(3, 2, 1, name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))


def _with_old_name(path, old_path):
    """A copy of the .keras file ``path`` whose config names the pooling layer as files written before the move."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old_path, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                text = data.decode()
                assert "keras_ftprop>PaddedMaxPooling2D" in text
                text = text.replace("keras_ftprop>PaddedMaxPooling2D", OLD_NAME)
                data = text.replace('"keras_ftprop.pooling"', '"models.layers"').encode()
            target.writestr(item, data)


def test_keras_files_load_in_a_fresh_process_with_only_the_package_on_the_path(tmp_path):
    """As after ``pip install``: the package importable, neither this checkout nor ``models``; files written
    under the old registered name load too."""
    model = _pooling_model()
    x = np.random.default_rng(6).standard_normal((4, 9, 9, 2)).astype("float32")
    model.save(tmp_path / "new.keras")
    _with_old_name(tmp_path / "new.keras", tmp_path / "old.keras")
    new, old = predict_with_package_alone([(tmp_path / "new.keras", x), (tmp_path / "old.keras", x)], tmp_path)
    expected = model.predict(x, verbose=0)
    np.testing.assert_array_equal(new, expected)
    np.testing.assert_array_equal(old, expected)
