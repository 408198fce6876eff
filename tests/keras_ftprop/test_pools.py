"""Exact average pools (``keras_ftprop.deploy.pools``): the global average pool of a step's +-1 is a code of its
grid, so the int8 MEAN, the logits after it and the copy agree on every runtime, for even, odd and single
positions."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_ftprop import HardThreshold, Staircase, deploy
from keras_ftprop.deploy.graph import graph
from keras_ftprop.deploy.pools import ExactGlobalAveragePooling2D, pooled_grid
from tests.keras_ftprop.test_runtimes import _every_int8_tensor, _interpreter, _operators, clear_of_float32


def pooled_network(strides, activation=HardThreshold, seed=0):
    """digits (8x8) -> conv -> BN -> step -> conv (``strides``) -> BN -> ``activation`` -> global average
    pool -> logits; the pool sees (8 / strides)^2 positions."""
    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(x)
    h = HardThreshold(name="act1")(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.Conv2D(32, 3, strides=strides, padding="same", use_bias=False, name="conv2")(h)
    h = activation(name="act2")(keras.layers.BatchNormalization(name="bn2")(h))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(x, keras.layers.Dense(10, name="logits")(h))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, digits.target, epochs=3, batch_size=64, verbose=0)
    return model, images


@pytest.mark.parametrize("strides, positions", [(2, 16), (3, 9), (8, 1)], ids=["16", "9", "1"])
def test_the_pool_is_exact_on_every_runtime_and_in_the_copy(strides, positions):
    model, images = pooled_network(strides)
    j = 127 // positions
    scale, step = pooled_grid(model.get_layer("pool"), graph(model)[0])
    assert scale == pytest.approx(1 / (positions * j)) and step == (2 * j if positions % 2 == 0 else j)
    qat = deploy.quantization_aware(model, images[:300])
    pool = qat.get_layer("pool")
    assert isinstance(pool, ExactGlobalAveragePooling2D)
    assert (pool.minimum, pool.maximum) == pytest.approx((-128 * scale, 127 * scale))
    assert qat.get_layer("logits").logits["input_step"] == step
    flatbuffer = deploy.to_tflite(qat, images[:300], io_dtype="int8")
    assert flatbuffer.report.logits.startswith("the same codes"), flatbuffer.report.logits
    ((_, (inp, *_), out, _),) = [op for op in _operators(flatbuffer) if op[0] == "MEAN"]
    assert float(out["scale"][0]) == pytest.approx(scale, rel=1e-6) and int(out["zero_point"][0]) == 0
    assert float(inp["scale"][0]) == pytest.approx(1 / 127, rel=1e-6)

    scale_in, zero_point = _interpreter(flatbuffer).get_input_details()[0]["quantization"]
    rounded = keras.Model(qat.inputs, qat.get_layer("input_quant").output).predict(images[:200], verbose=0)
    codes = np.clip(np.round(rounded / scale_in) + zero_point, -128, 127).astype(np.int8)
    names, values, output = _every_int8_tensor(flatbuffer, codes)
    for i in values["xnnpack"]:  # the MEAN and the logits included
        np.testing.assert_array_equal(values["xnnpack"][i], values["reference"][i], err_msg=names[i])
    np.testing.assert_array_equal(values["tflm"][output], values["reference"][output])
    # The int8 mean is (2k - N) j, the copy's pool and logits are the int8 model's codes.
    (mean,) = [i for i, name in names.items() if name == out["name"]]
    int8_mean = values["reference"][mean][:, 0].astype(int)
    copy_pool, copy_logits = keras.Model(qat.inputs, [pool.output, qat.outputs[0]]).predict(images[:200], verbose=0)
    # the copy decides act1 and act2 on float32 batch norms, the int8 model on exact accumulators: compared on
    # the images where no CPU's float32 rounding can decide a unit differently
    clear = clear_of_float32(qat, ["act1", "act2"], images[:200])
    assert clear.mean() > 0.9, clear.mean()
    np.testing.assert_array_equal(int8_mean[clear], np.round(copy_pool / scale).astype(int)[clear])
    assert np.all((int8_mean // j + positions) % 2 == 0) and np.all(int8_mean % j == 0)
    assert len(np.unique(int8_mean)) > min(positions, 5)  # means of many k
    (out_detail,) = _interpreter(flatbuffer).get_output_details()
    out_scale, out_zero = out_detail["quantization"]
    np.testing.assert_array_equal((np.round(copy_logits / out_scale).astype(int) + out_zero)[clear],
                                  values["reference"][output][:, 0].astype(int)[clear])


def test_other_pools_keep_a_calibrated_grid():
    """A staircase's pool, and a pool over more than 127 positions, are not rounded onto a pooled grid."""
    model, images = pooled_network(2, activation=lambda name: Staircase(3, name=name))
    assert pooled_grid(model.get_layer("pool"), graph(model)[0]) is None
    model, images = pooled_network(1)  # 64 positions: pooled; then 12x12 = 144: not
    assert pooled_grid(model.get_layer("pool"), graph(model)[0]) is not None
    inputs = keras.Input((12, 12, 4))
    pooled = keras.layers.GlobalAveragePooling2D()(HardThreshold()(inputs))
    wide = keras.Model(inputs, pooled)
    assert pooled_grid(wide.layers[-1], graph(wide)[0]) is None
    qat = deploy.quantization_aware(pooled_network(2, activation=lambda name: Staircase(3, name=name))[0],
                                    images[:100])
    assert not isinstance(qat.get_layer("pool"), ExactGlobalAveragePooling2D)


def test_the_exact_pool_round_trips_through_keras_files(tmp_path):
    inputs = keras.Input((4, 4, 3))
    pool = ExactGlobalAveragePooling2D(-128 / 112, 127 / 112, name="pool")
    model = keras.Model(inputs, pool(HardThreshold(name="act")(inputs)))
    path = tmp_path / "pool.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(32, 4, 4, 3)).astype(np.float32)
    codes = loaded.predict(x, verbose=0) * 112  # (2k - 16) 7
    np.testing.assert_array_equal(codes, model.predict(x, verbose=0) * 112)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert np.all(np.round(codes) % 14 == 0)
