"""Tests of models/regularization.py: coupled (PyTorch-style) weight decay.

PyTorch's ``weight_decay=wd`` adds ``wd * w`` to every parameter's gradient,
i.e. it minimises ``loss + wd / 2 * sum ||w||^2`` over all parameters. The
builders' ``weight_decay`` must give exactly that penalty, on every trainable
weight (kernels, biases, batch-norm gamma and beta), and nothing else;
``batch_norm_weight_decay`` replaces it on gamma and beta alone.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import get_model, l2_weight_decay, weight_decay_penalty
from tests.models.helpers import TINY_CLASSES, TINY_INPUT_SHAPES

WEIGHT_DECAY = 5e-4

MODEL_VARIANTS = [
    ("convnet4", {}),
    ("convnet4", {"batch_norm": True}),
    ("convnet8", {}),
    ("alexnet", {}),
    ("resnet18", {}),
]


def build_tiny(name, weight_decay, **kwargs):
    return get_model(name, activation="step", weight_decay=weight_decay,
                     input_shape=TINY_INPUT_SHAPES[name],
                     classes=TINY_CLASSES, **kwargs)


def numpy_penalty_of(weights, weight_decay):
    """wd / 2 * sum of squares of ``weights``, in float64."""
    return weight_decay / 2 * sum(np.sum(np.square(w.numpy().astype(np.float64)))
                                  for w in weights)


def numpy_penalty(model, weight_decay):
    """wd / 2 * sum of squares of every trainable weight, in float64."""
    return numpy_penalty_of(model.trainable_weights, weight_decay)


@pytest.mark.parametrize("name, kwargs", MODEL_VARIANTS)
def test_regularisation_loss_is_half_wd_times_squared_norm_of_all_weights(
        name, kwargs):
    model = build_tiny(name, WEIGHT_DECAY, **kwargs)
    # Move batch-norm gamma/beta away from 1/0 so that they count visibly.
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32"))

    # One penalty term per trainable weight, none on anything else.
    assert len(model.losses) == len(model.trainable_weights)
    assert all(w.regularizer is not None for w in model.trainable_weights)
    assert all(getattr(w, "regularizer", None) is None
               for w in model.non_trainable_weights)

    expected = numpy_penalty(model, WEIGHT_DECAY)
    got = float(keras.ops.sum(keras.ops.stack(model.losses)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert weight_decay_penalty(model, WEIGHT_DECAY) == pytest.approx(
        expected, rel=1e-12)


@pytest.mark.parametrize("name, kwargs", MODEL_VARIANTS[:3])
def test_penalty_gradient_is_wd_times_w_like_pytorch(name, kwargs):
    model = build_tiny(name, WEIGHT_DECAY, **kwargs)
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    grads = tape.gradient(penalty, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads):
        np.testing.assert_allclose(grad.numpy(), WEIGHT_DECAY * weight.numpy(),
                                   rtol=1e-5, atol=1e-12)


def test_one_sgd_step_matches_pytorch_coupled_weight_decay():
    # Same initial weights and batch with and without decay: the data gradient
    # g is recovered from the undecayed step, and the decayed step must be
    # PyTorch's SGD update w <- w - lr * (g + wd * w).
    lr = 0.1
    images = np.random.default_rng(1).standard_normal(
        (4, *TINY_INPUT_SHAPES["convnet4"])).astype("float32")
    labels = np.array([0, 1, 2, 3])

    def one_step(weight_decay):
        keras.utils.set_random_seed(3)
        model = build_tiny("convnet4", weight_decay)
        before = [w.numpy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        model.train_on_batch(images, labels)
        after = [w.numpy() for w in model.trainable_weights]
        return before, after

    before, plain = one_step(0.0)
    before_decayed, decayed = one_step(WEIGHT_DECAY)
    for w0, w0_decayed, w_plain, w_decayed in zip(
            before, before_decayed, plain, decayed):
        np.testing.assert_array_equal(w0, w0_decayed)  # same initial weights
        data_grad = (w0 - w_plain) / lr
        expected = w0 - lr * (data_grad + WEIGHT_DECAY * w0)
        np.testing.assert_allclose(w_decayed, expected, rtol=1e-4, atol=1e-7)


def test_zero_weight_decay_adds_no_regulariser():
    model = build_tiny("convnet8", 0.0)
    assert model.losses == []
    assert l2_weight_decay(0) is None


def test_l2_weight_decay_is_half_wd():
    regulariser = l2_weight_decay(1e-4)
    assert regulariser.get_config()["l2"] == pytest.approx(5e-5)
    assert float(regulariser(keras.ops.ones((3, 2)))) == pytest.approx(3e-4)


@pytest.mark.parametrize("bad", [-1e-4, float("nan")])
def test_negative_or_nan_weight_decay_is_rejected(bad):
    with pytest.raises(ValueError, match="weight_decay"):
        l2_weight_decay(bad)


def test_weight_decay_survives_serialisation():
    model = build_tiny("convnet4", WEIGHT_DECAY)
    clone = keras.Model.from_config(model.get_config())
    assert len(clone.losses) == len(clone.trainable_weights)
    clone.set_weights(model.get_weights())
    assert float(tf.add_n(clone.losses)) == pytest.approx(
        float(tf.add_n(model.losses)), rel=1e-6)


def batch_norm_weight_ids(model):
    return {id(w) for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.gamma, layer.beta)}


@pytest.mark.parametrize("name, kwargs", [v for v in MODEL_VARIANTS if v != ("convnet4", {})])
@pytest.mark.parametrize("bn_decay", [0.0, 1e-5])
def test_batch_norm_weight_decay_applies_to_gamma_and_beta_only(name, kwargs, bn_decay):
    model = build_tiny(name, WEIGHT_DECAY, batch_norm_weight_decay=bn_decay, **kwargs)
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32"))
    bn_ids = batch_norm_weight_ids(model)
    assert bn_ids  # every variant here has batch norm
    bn = [w for w in model.trainable_weights if id(w) in bn_ids]
    others = [w for w in model.trainable_weights if id(w) not in bn_ids]

    assert all(w.regularizer is not None for w in others)
    if bn_decay == 0.0:
        assert all(w.regularizer is None for w in bn)
        assert len(model.losses) == len(others)
    expected = (numpy_penalty_of(others, WEIGHT_DECAY)
                + numpy_penalty_of(bn, bn_decay))
    got = float(keras.ops.sum(keras.ops.stack(model.losses)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_batch_norm_weight_decay_none_is_weight_decay():
    default = build_tiny("convnet8", WEIGHT_DECAY)
    explicit = build_tiny("convnet8", WEIGHT_DECAY, batch_norm_weight_decay=WEIGHT_DECAY)
    assert default.get_config() == explicit.get_config()


@pytest.mark.parametrize("bad", [-1e-4, float("nan")])
def test_negative_or_nan_batch_norm_weight_decay_is_rejected(bad):
    with pytest.raises(ValueError, match="batch_norm_weight_decay"):
        build_tiny("convnet8", WEIGHT_DECAY, batch_norm_weight_decay=bad)


def test_batch_norm_exemption_survives_serialisation():
    model = build_tiny("convnet8", WEIGHT_DECAY, batch_norm_weight_decay=0.0)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert len(clone.losses) == len(model.losses)
    assert not any(w.regularizer is not None for w in clone.trainable_weights
                   if id(w) in batch_norm_weight_ids(clone))
    assert float(tf.add_n(clone.losses)) == pytest.approx(float(tf.add_n(model.losses)), rel=1e-6)
