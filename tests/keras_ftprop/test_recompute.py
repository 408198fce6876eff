"""keras_ftprop.recompute.threshold_of: the composition's gradient, with x recomputed in the backward pass."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import BatchNormThreshold, HardThreshold, Staircase, ops
from keras_ftprop.recompute import threshold_of
from tests import numpy_reference as ref


def test_gradient_is_the_compositions_and_x_is_recomputed():
    rng = np.random.default_rng(0)
    z, a, b, g = (tf.constant(rng.normal(size=s).astype(np.float32)) for s in [(6, 5), (5,), (5,), (6, 5)])
    calls = []

    def pre_activation(z, a, b):
        calls.append(1)
        return a * z + b, (tf.reduce_sum(z),)

    @tf.function
    def run(z, a, b):
        with tf.GradientTape() as tape:
            tape.watch([z, a, b])
            h, (total,) = threshold_of(pre_activation, lambda x: ops.hard_threshold(x, "sigmoid"), [z, a, b])
            loss = tf.reduce_sum(h * g) + total  # total carries no gradient
        return h, tape.gradient(loss, [z, a, b])

    h, (dz, da, db) = run(z, a, b)
    assert len(calls) == 2  # traced once in the forward pass, once in the backward pass
    x = (a * z + b).numpy()
    grad_x = ref.step_grad("sigmoid", x, g.numpy(), True)
    np.testing.assert_array_equal(h.numpy(), ref.step_forward(x))
    np.testing.assert_allclose(dz.numpy(), grad_x * a.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(da.numpy(), (grad_x * z.numpy()).sum(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db.numpy(), grad_x.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_aux_outputs_carry_no_gradient():
    z = tf.constant([[-2.0, 0.5, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(z)
        h, (doubled,) = threshold_of(lambda z: (2.0 * z, (2.0 * z,)), ops.hard_threshold, [z])
        loss = tf.reduce_sum(doubled)
    np.testing.assert_array_equal(doubled.numpy(), [[-4.0, 1.0, 6.0]])
    np.testing.assert_array_equal(h.numpy(), [[-1.0, 1.0, 1.0]])
    grad = tape.gradient(loss, z)
    assert grad is None or not np.any(grad.numpy())


# batch_norm_threshold: batch norm's backward in closed form from the forward's moments.

_ACTIVATIONS = {  # name: (layer, numpy forward, numpy gradient given (x, g))
    "step-soft_hinge": (lambda: HardThreshold(), ref.step_forward,
                        lambda x, g: ref.step_grad("soft_hinge", x, g, True)),
    "step-sste": (lambda: HardThreshold(target_loss="sste"), ref.step_forward,
                  lambda x, g: ref.step_grad("sste", x, g, True)),
    **{
        f"staircase{steps}-{loss}": (
            lambda steps=steps, loss=loss: Staircase(steps=steps, target_loss=loss),
            lambda x, steps=steps: ref.staircase_forward(x, steps, 0.0, 1.0),
            lambda x, g, steps=steps, loss=loss: ref.staircase_grad(loss, x, g, steps, 0.0, 1.0, True),
        )
        for steps, loss in [(3, "soft_hinge"), (3, "sste"), (5, "soft_hinge"), (5, "sste"), (6, "sste"),
                            (6, "truncated_hinge")]
    },
}
# One beta per channel: where z equals its channel's mean (0), x = beta exactly, on a tie of the step
# (0), the window edges of SSTE (+-1) or the staircase's thresholds (x' = 0, 1/4, 1/2, 3/4, 1).
_TIE_BETAS = np.array([0.0, 1.0, -1.0, 0.5, 0.25, 0.75], np.float32)


def _tie_data(seed, shape):
    """Integer z whose channel means are exactly 0 (each value with its negative), with exact zeros."""
    rng = np.random.default_rng(seed)
    half = rng.integers(-3, 4, size=(shape[0] // 2, *shape[1:])).astype(np.float32)
    z = np.concatenate([half, -half])
    z[0, 0] = z[shape[0] // 2, 0] = 0.0  # z = mean in every channel at least twice
    gamma = rng.uniform(0.5, 2.0, size=shape[-1]).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    return z, gamma, g


@pytest.mark.parametrize("activation", sorted(_ACTIVATIONS))
@pytest.mark.parametrize("residual", [False, True])
def test_batch_norm_threshold_at_ties_matches_numpy(activation, residual):
    make, forward, backward = _ACTIVATIONS[activation]
    z, gamma, g = _tie_data(0, (8, 3, 2, len(_TIE_BETAS)))
    r = np.where(z > 1, 0.5, 0.0).astype(np.float32) if residual else np.zeros_like(z)
    layer = BatchNormThreshold(make(), epsilon=1e-3)
    layer.build([z.shape, z.shape] if residual else z.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(_TIE_BETAS)

    @tf.function
    def step(z, r):
        with tf.GradientTape() as tape:
            tape.watch([z, r])
            h = layer([z, r] if residual else z, training=True)
        return h, tape.gradient(h, [z, r, layer.gamma, layer.beta], output_gradients=tf.constant(g))

    h, (dz, dr, dgamma, dbeta) = step(tf.constant(z), tf.constant(r))
    x, _, _ = ref.batch_norm_forward(z.astype(np.float64), gamma, _TIE_BETAS, 1e-3)
    x = x + r
    assert np.any(x == _TIE_BETAS) and np.all(x[z == 0] == (_TIE_BETAS + r)[z == 0])
    np.testing.assert_allclose(h.numpy(), forward(x), rtol=0, atol=1e-6)  # levels 1/6 apart at least
    grad_x = backward(x, g)
    expected_dz, expected_dgamma, expected_dbeta = ref.batch_norm_grad(z.astype(np.float64), gamma, 1e-3, grad_x)
    for name, got, expected in [("z", dz, expected_dz), ("gamma", dgamma, expected_dgamma),
                                ("beta", dbeta, expected_dbeta)] + ([("residual", dr, grad_x)] if residual else []):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(),
                                   err_msg=name)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.0, atol=1e-7)  # the moments still update


@pytest.mark.parametrize("scale, center", [(False, False), (True, False), (False, True)])
def test_batch_norm_threshold_on_a_channel_axis_other_than_the_last(scale, center):
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(6, 4, 5)) * 1.5 + 0.3).astype(np.float32)  # channels on axis 1
    g = rng.normal(size=z.shape).astype(np.float32)
    layer = BatchNormThreshold(Staircase(steps=5, target_loss="soft_hinge"), axis=1, scale=scale, center=center)
    layer.build(z.shape)
    if scale:
        layer.gamma.assign(np.array([0.5, 1.0, 1.5, 2.0], np.float32))
    if center:
        layer.beta.assign(np.array([-0.2, 0.0, 0.3, 0.6], np.float32))
    z_t = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z_t)
        h = layer(z_t, training=True)
    weights = layer.trainable_weights
    dz, *dweights = tape.gradient(h, [z_t, *weights], output_gradients=tf.constant(g))

    last = np.moveaxis(z, 1, -1).astype(np.float64)  # the numpy reference normalizes the last axis
    gamma = layer.gamma.numpy() if scale else np.ones(4, np.float32)
    beta = layer.beta.numpy() if center else np.zeros(4, np.float32)
    x = ref.batch_norm_forward(last, gamma, beta, layer.epsilon)[0]
    grad_x = ref.staircase_grad("soft_hinge", x, np.moveaxis(g, 1, -1), 5, 0.0, 1.0, True)
    expected_dz, expected_dgamma, expected_dbeta = ref.batch_norm_grad(last, gamma, layer.epsilon, grad_x)
    np.testing.assert_allclose(np.moveaxis(h.numpy(), 1, -1), ref.staircase_forward(x, 5, 0.0, 1.0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.moveaxis(dz.numpy(), 1, -1), expected_dz, rtol=1e-4,
                               atol=1e-5 * np.abs(expected_dz).max())
    expected_weights = ([expected_dgamma] if scale else []) + ([expected_dbeta] if center else [])
    for got, expected in zip(dweights, expected_weights, strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_batch_norm_threshold_computes_the_moments_once():
    """Two reductions for the mean and the variance in the forward pass, none in the backward."""
    layer = BatchNormThreshold(HardThreshold())
    layer.build((4, 3, 3, 2))

    @tf.function
    def step(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            h = layer(z, training=True)
        return tape.gradient(h, [z, layer.gamma, layer.beta])

    graph = step.get_concrete_function(tf.TensorSpec((4, 3, 3, 2))).graph

    def op_types(graph):
        for op in graph.get_operations():
            yield op.type
            for name in op.node_def.attr:  # the bodies of the custom gradient and other functions
                attr = op.node_def.attr[name]
                if attr.HasField("func"):
                    yield from op_types(graph._get_function(attr.func.name).graph)  # noqa: SLF001

    assert list(op_types(graph)).count("Mean") == 2
