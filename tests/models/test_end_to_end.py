"""The contract every model keeps, on tiny inputs: it trains on CPU with each
activation, gradients reach every weight, it round-trips through ``.keras``,
exports a SavedModel and trains under ``MirroredStrategy`` on two CPUs.

The two logical CPUs are configured by ``tests/conftest.py`` at session start.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import ACTIVATION_NAMES, get_model
from tests.models.helpers import (
    TINY_CLASSES,
    TINY_INPUT_SHAPES,
    compile_for_one_step,
    tiny_batch,
)
from tests.package_alone import predict_with_package_alone

PAPER_MODELS = ("convnet4", "convnet8", "alexnet", "resnet18")
# The ImageNet nets' export and MirroredStrategy checks take 5-15 s each on two
# cores: they run in the slow step.
PAPER_MODELS_BIG_ONES_SLOW = (
    "convnet4", "convnet8",
    pytest.param("alexnet", marks=pytest.mark.slow),
    pytest.param("resnet18", marks=pytest.mark.slow),
)
FIRST_CONV = {"convnet4": "conv1", "convnet8": "conv0", "alexnet": "conv0",
              "resnet18": "stem_conv", "resnet34": "stem_conv"}


def tiny_model(name, activation="step", **kwargs):
    return get_model(name, activation=activation,
                     input_shape=TINY_INPUT_SHAPES[name],
                     classes=TINY_CLASSES, **kwargs)


def gradients(model, images, labels):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True))
    return tape.gradient(loss, model.trainable_weights)


def two_cpu_strategy():
    """MirroredStrategy over the two logical CPUs, reducing on one device.

    Not the default cross-device ops: those use collective ops, and every
    new MirroredStrategy in a process restarts its collective instance keys,
    so a second strategy reducing differently shaped gradients aborts the
    process's collective executor ("Shape mismatch in the collective
    instance ...") for every later test. The model code does not depend on how
    gradients are summed across replicas.
    """
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPUs (configured by tests/conftest.py)")
    return tf.distribute.MirroredStrategy(
        [cpu.name for cpu in cpus[:2]],
        cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_one_training_step_on_cpu(name, activation):
    keras.utils.set_random_seed(0)
    model = compile_for_one_step(tiny_model(name, activation))
    images, labels = tiny_batch(TINY_INPUT_SHAPES[name])
    first_conv = model.get_layer(FIRST_CONV[name]).kernel
    before = first_conv.numpy()

    loss = float(model.train_on_batch(images, labels))

    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    # The update reached the bottom of the network, through every activation.
    assert not np.array_equal(first_conv.numpy(), before)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_target_propagation_reaches_every_weight(name):
    keras.utils.set_random_seed(1)
    model = tiny_model(name, "step")
    # 8 images: with 4, AlexNet's tiny step features before fc0 are the same for every image, so fc0's
    # batch norm sees no spread and its gamma, exactly, no gradient.
    grads = gradients(model, *tiny_batch(TINY_INPUT_SHAPES[name], batch_size=8))
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        grad = grad.numpy()
        assert np.all(np.isfinite(grad)), weight.path
        assert np.any(grad != 0), weight.path


def randomise_batch_norm_statistics(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.1, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, shape))


# Every model, and both FTPROP layers, at least once.
@pytest.mark.parametrize("name, activation", [
    ("convnet4", "step"), ("convnet4", "staircase"), ("convnet8", "step"),
    ("convnet8", "staircase"), pytest.param("alexnet", "step",
                                            marks=pytest.mark.slow),
    ("resnet18", "staircase"),
])
def test_keras_file_round_trip_gives_identical_outputs_and_gradients(
        name, activation, tmp_path):
    keras.utils.set_random_seed(2)
    # convnet4 has batch norm only when asked: ask, so that it is saved too.
    extra = {"batch_norm": True} if name == "convnet4" else {}
    model = tiny_model(name, activation, target_loss="sste",
                       weight_decay=1e-4, **extra)
    randomise_batch_norm_statistics(model)
    images, labels = tiny_batch(TINY_INPUT_SHAPES[name], seed=3)

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert [layer.name for layer in loaded.layers] == [
        layer.name for layer in model.layers]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)))
    # The FTPROP backward (target loss, scaling) and the weight decay survive.
    assert len(loaded.losses) == len(model.losses)
    if name != "convnet8":  # convnet8's channel dropout is random in training
        for ours, theirs in zip(gradients(model, images, labels),
                                gradients(loaded, images, labels)):
            np.testing.assert_allclose(theirs.numpy(), ours.numpy(),
                                       rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # ~20 s on two cores; the default run checks one layer (test_pooling) and train.py's ResNet-18
def test_every_paper_network_loads_with_the_package_alone(tmp_path):
    """Every layer, regulariser and initializer the networks save is Keras's or keras_ftprop's: the files load
    in a fresh interpreter that sees the installed package and not this checkout's ``models``."""
    cases = [("convnet4", "step", {"batch_norm": True}), ("convnet8", "staircase", {}),
             ("alexnet", "step", {}), ("resnet18", "saturated_relu", {}), ("resnet18", "staircase", {})]
    paths, images, expected = [], [], []
    for i, (name, activation, extra) in enumerate(cases):
        model = tiny_model(name, activation, target_loss="sste", weight_decay=1e-4, **extra)
        randomise_batch_norm_statistics(model)
        paths.append(tmp_path / f"{i}-{name}.keras")
        model.save(paths[-1])
        images.append(tiny_batch(TINY_INPUT_SHAPES[name], seed=i)[0])
        expected.append(keras.ops.convert_to_numpy(model(images[-1], training=False)))
    loaded = predict_with_package_alone(list(zip(paths, images)), tmp_path)
    for path, got, want in zip(paths, loaded, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("activation", ["relu", "saturated_relu"])
def test_keras_file_round_trip_with_the_baseline_activations(activation,
                                                              tmp_path):
    model = tiny_model("convnet8", activation)
    path = tmp_path / "baseline.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images, _ = tiny_batch(TINY_INPUT_SHAPES["convnet8"])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)))


@pytest.mark.parametrize("name", PAPER_MODELS_BIG_ONES_SLOW)
def test_export_saved_model_serves_the_same_outputs(name, tmp_path):
    keras.utils.set_random_seed(4)
    activation = "staircase" if name == "resnet18" else "step"
    model = tiny_model(name, activation)
    images, _ = tiny_batch(TINY_INPUT_SHAPES[name], batch_size=3)
    expected = keras.ops.convert_to_numpy(model(images, training=False))

    model.export(str(tmp_path / "export"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "export"))
    served = reloaded.serve(images)

    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PAPER_MODELS_BIG_ONES_SLOW)
def test_one_training_step_under_mirrored_strategy(name):
    strategy = two_cpu_strategy()
    images, labels = tiny_batch(TINY_INPUT_SHAPES[name], batch_size=4)
    with strategy.scope():
        model = compile_for_one_step(tiny_model(name, "step",
                                                weight_decay=1e-4))
    before = model.get_layer(FIRST_CONV[name]).kernel.numpy()
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(model.get_layer(FIRST_CONV[name]).kernel.numpy(),
                              before)


@pytest.mark.parametrize("scale_by_grad", [True, False])
def test_mirrored_step_equals_single_device_step(scale_by_grad):
    # convnet4 without batch norm or dropout: the update of a global batch
    # split over two replicas (with weight decay and the FTPROP backward)
    # must equal the single-device update.
    strategy = two_cpu_strategy()
    images, labels = tiny_batch(TINY_INPUT_SHAPES["convnet4"], batch_size=8)

    def one_step(scope):
        keras.utils.set_random_seed(5)
        with scope:
            model = compile_for_one_step(
                tiny_model("convnet4", "step", weight_decay=5e-3,
                           scale_by_grad=scale_by_grad), learning_rate=0.5)
        model.fit(images, labels, batch_size=8, epochs=1, shuffle=False,
                  verbose=0)
        return [w.numpy() for w in model.trainable_weights]

    single = one_step(tf.distribute.get_strategy().scope())
    mirrored = one_step(strategy.scope())
    for ours, theirs in zip(single, mirrored):
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)


def test_models_run_under_mixed_bfloat16():
    # train.py's --mixed_precision policy on CPU; -inf padding of the pools
    # and the hard-threshold layers must work in bfloat16.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for name in ("resnet18", "alexnet"):
            model = tiny_model(name, "step")
            images, _ = tiny_batch(TINY_INPUT_SHAPES[name], batch_size=2)
            out = model(images, training=False)
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(
                keras.ops.cast(out, "float32"))))
    finally:
        keras.config.set_dtype_policy(policy)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["step", "staircase"])
@pytest.mark.parametrize("name", ["convnet4", "convnet8"])
def test_xla_compiled_training_step(name, activation):
    model = compile_for_one_step(tiny_model(name, activation),
                                 jit_compile=True)
    images, labels = tiny_batch(TINY_INPUT_SHAPES[name])
    assert np.isfinite(float(model.train_on_batch(images, labels)))


@pytest.mark.slow
def test_resnet34_one_training_step():
    model = compile_for_one_step(tiny_model("resnet34", "staircase"))
    images, labels = tiny_batch(TINY_INPUT_SHAPES["resnet34"])
    assert np.isfinite(float(model.train_on_batch(images, labels)))


@pytest.mark.parametrize("name", ["convnet8", "alexnet", "resnet18"])
def test_fused_batch_norm_threshold_is_the_plain_layout(name):
    """The same weights, by layer name, give the same outputs, gradients and statistics fused or not."""
    images, labels = tiny_batch(TINY_INPUT_SHAPES[name], batch_size=8)
    fused = tiny_model(name, activation="staircase", target_loss="soft_hinge")
    plain = tiny_model(name, activation="staircase", target_loss="soft_hinge", fuse_batch_norm=False)
    for layer in fused.layers:  # the fused layers carry the batch norms' names and weights
        layer.set_weights(plain.get_layer(layer.name).get_weights())
    for model in (fused, plain):  # convnet8's dropout masks would differ between the two models
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
    np.testing.assert_array_equal(fused.predict(images, verbose=0), plain.predict(images, verbose=0))
    got = dict(zip([w.path for w in fused.trainable_weights], gradients(fused, images, labels)))
    expected = dict(zip([w.path for w in plain.trainable_weights], gradients(plain, images, labels)))
    assert set(got) == set(expected)
    # The fused layer's closed-form batch-norm backward sums in another order than autodiff through the
    # plain layer: over a network's depth float32 rounding reaches about 1e-5 of the largest gradient.
    for path, grad in expected.items():
        np.testing.assert_allclose(got[path], grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max(), err_msg=path)
    for weight in plain.non_trainable_weights:  # moving statistics, updated once by the training pass
        layer = fused.get_layer(weight.path.split("/")[0])
        match = [w for w in layer.non_trainable_weights if w.path == weight.path]
        np.testing.assert_allclose(match[0].numpy(), weight.numpy(), rtol=1e-6, atol=1e-7)
