"""keras_ftprop.recompute.threshold_of: the composition's gradient, with x recomputed in the backward pass."""

import numpy as np
import tensorflow as tf

from keras_ftprop import ops
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


def test_returns_the_pre_activation_without_gradient():
    z = tf.constant([[-2.0, 0.5, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(z)
        h, aux, x = threshold_of(lambda z: (2.0 * z, ()), ops.hard_threshold, [z], return_pre_activation=True)
        loss = tf.reduce_sum(x)
    assert aux == ()
    np.testing.assert_array_equal(x.numpy(), [[-4.0, 1.0, 6.0]])
    np.testing.assert_array_equal(h.numpy(), [[-1.0, 1.0, 1.0]])
    grad = tape.gradient(loss, z)
    assert grad is None or not np.any(grad.numpy())
