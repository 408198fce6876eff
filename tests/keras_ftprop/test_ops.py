import itertools

import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import ops, target_losses
from tests import numpy_reference as ref

STAIRCASES = [  # (steps, low, high)
    (3, 0.0, 1.0),
    (5, 0.0, 1.0),
    (1, 0.0, 1.0),
    (4, -1.0, 3.0),
    (2, 0.5, 0.75),
]


def _inputs(low=-1.0, high=1.0, batch=6, units=16, seed=0):
    """Pre-activations spread over and beyond [low, high] with the tie points, and
    upstream gradients that include exact zeros (units with no target)."""
    rng = np.random.default_rng(seed)
    span = high - low
    x = rng.uniform(low - 0.75 * span, high + 0.75 * span, size=(batch, units)).astype(np.float32)
    x[0, :5] = [low, high, (low + high) / 2, 0.0, low + span / 4]
    x[1, :4] = [-1.0, 1.0, 0.0, 0.0]
    g = rng.normal(size=(batch, units)).astype(np.float32)
    g[rng.random(size=g.shape) < 0.2] = 0.0
    g[1, 2] = 0.0  # x = 0 and no target
    return x, g


def _loss(name):
    """The built-in loss ``name``; a scheduled one bound to the reference's step and length."""
    loss = target_losses.get(name)
    if loss.scheduled:
        loss.bind(tf.constant(ref.EDE_STEP, tf.int64), total_steps=ref.EDE_TOTAL)
    return loss


def _grad(fn, x, g):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x, output_gradients=tf.constant(g)).numpy()


@pytest.mark.parametrize(
    "name, scale_by_grad, zero_one",
    list(itertools.product(ref.LOSSES, [True, False], [False, True])),
)
def test_hard_threshold_matches_numpy(name, scale_by_grad, zero_one):
    x, g = _inputs()
    y, grad = _grad(lambda v: ops.hard_threshold(v, _loss(name), scale_by_grad, zero_one), x, g)
    np.testing.assert_array_equal(y, ref.step_forward(x, zero_one))
    # atol: float32 1 - tanh^2 near saturation loses digits (soft_hinge2, swish_sign)
    np.testing.assert_allclose(grad, ref.step_grad(name, x, g, scale_by_grad, zero_one), rtol=2e-5, atol=5e-6)
    if name not in ("ste", "linear") or not scale_by_grad:
        assert np.all(grad[g == 0] == 0), "a unit with no target must get no gradient"


@pytest.mark.parametrize(
    "name, scale_by_grad, shape",
    list(itertools.product(ref.LOSSES, [True, False], STAIRCASES)),
)
def test_staircase_matches_numpy(name, scale_by_grad, shape):
    steps, low, high = shape
    x, g = _inputs(low, high)
    y, grad = _grad(lambda v: ops.staircase(v, steps, _loss(name), scale_by_grad, low, high), x, g)
    np.testing.assert_allclose(y, ref.staircase_forward(x, steps, low, high), rtol=0, atol=1e-6)
    expected = ref.staircase_grad(name, x, g, steps, low, high, scale_by_grad)
    np.testing.assert_allclose(grad, expected, rtol=2e-5, atol=5e-6)


def test_step_forward_at_the_tie_point():
    x = tf.constant([-1e-30, -0.0, 0.0, 1e-30, np.inf, -np.inf])
    np.testing.assert_array_equal(ops.hard_threshold(x).numpy(), [-1, -1, -1, 1, 1, -1])
    np.testing.assert_array_equal(ops.hard_threshold(x, zero_one=True).numpy(), [0, 0, 0, 1, 1, 0])


def test_staircase_forward_boundaries_by_hand():
    # n = 3 on [0, 1]: thresholds at x' = 0, 1/2, 1; levels {0, 1/3, 2/3, 1}
    x = tf.constant([-5.0, -0.1, 0.0, 1e-6, 0.5, 0.500001, 1.0, 1.000001, 1.5, 9.0])
    expected = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3], np.float32) / 3
    np.testing.assert_array_equal(ops.staircase(x, steps=3).numpy(), expected)


def test_staircase_forward_on_a_shifted_range():
    # n = 2 on [-2, 2]: x' = (x + 2) / 4, thresholds at x = -2 and x = 2; levels {-2, 0, 2}
    x = tf.constant([-3.0, -2.0, -1.99, 0.0, 2.0, 2.01])
    np.testing.assert_allclose(ops.staircase(x, 2, low=-2.0, high=2.0).numpy(), [-2, -2, 0, 0, 0, 2], atol=1e-6)


def test_single_step_staircase_is_a_zero_one_step():
    x = tf.constant([-1.0, 0.0, 1e-3, 0.7, 3.0])
    np.testing.assert_array_equal(ops.staircase(x, steps=1).numpy(), [0, 0, 1, 1, 1])


@pytest.mark.parametrize("op", [ops.hard_threshold, ops.staircase, ops.saturated_relu])
@pytest.mark.parametrize("value", [[1, 2], [True], ["a"], np.array([3], np.uint8)])
def test_ops_refuse_non_floating_tensors(op, value):
    dtype = tf.constant(value).dtype.name
    with pytest.raises(ValueError, match=f"floating-point tensor.*got dtype {dtype}"):
        op(value)


@pytest.mark.parametrize("steps", [0, -2, 2.5, "three", True])
def test_staircase_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ops.staircase(tf.zeros(3), steps=steps)


@pytest.mark.parametrize("low, high", [(1.0, 1.0), (1.0, 0.0)])
def test_staircase_rejects_empty_range(low, high):
    with pytest.raises(ValueError, match="high > low"):
        ops.staircase(tf.zeros(3), low=low, high=high)


def test_unknown_loss_is_rejected_by_the_op():
    with pytest.raises(ValueError, match="Unknown target loss"):
        ops.hard_threshold(tf.zeros(3), target_loss="soft-hinge")


def test_saturated_relu_forward_and_gradient():
    x, g = np.array([-1.0, 0.25, 0.5, 2.0], np.float32), np.ones(4, np.float32)
    y, grad = _grad(ops.saturated_relu, x, g)
    np.testing.assert_array_equal(y, np.clip(x, 0, 1))
    np.testing.assert_array_equal(grad, [0, 1, 1, 0])


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
@pytest.mark.parametrize("op", [ops.hard_threshold, ops.staircase])
def test_output_and_gradient_dtypes_follow_the_input(op, dtype):
    x = tf.cast(tf.linspace(-2.0, 2.0, 8), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = op(x)
    grad = tape.gradient(y, x)
    assert y.dtype == dtype and grad.dtype == dtype
    expected_y, _ = _grad(op, x.numpy().astype(np.float32), np.ones(8, np.float32))
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected_y, atol=1e-2)


HALF_EPSILON = {tf.float16: 2.0**-10, tf.bfloat16: 2.0**-7}


@pytest.mark.parametrize("names", [pytest.param(("soft_hinge", "sste", "ede"), id="ftp_sh-sste-ede"),
                                   pytest.param(tuple(ref.LOSSES), id="every-loss", marks=pytest.mark.slow)])
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_gradients_keep_the_input_dtype_and_the_numpy_values(dtype, jit_compile, names):
    """Under mixed_float16 / mixed_bfloat16 a unit's input is half precision: its FTPROP gradient must come
    back in that dtype (a float32 gradient breaks the XLA-compiled step), equal to the numpy formulas
    to its rounding. x on a grid of quarters, exact in both dtypes and off every threshold that is
    itself rounded (SSTE-v2's sqrt(3), the truncated log loss's 1.85)."""
    x = np.arange(-2.5, 3.75, 0.25, dtype=np.float32)
    g = np.random.default_rng(0).choice(np.array([-1.25, -0.5, 0.0, 0.75, 1.0], np.float32), size=x.shape)
    cases = [(name, scale_by_grad, kind) for name in names for scale_by_grad in (True, False)
             for kind in ("step", "staircase")]

    def op(name, scale_by_grad, kind):
        if kind == "step":
            return lambda v: ops.hard_threshold(v, _loss(name), scale_by_grad)
        return lambda v: ops.staircase(v, 3, _loss(name), scale_by_grad, low=-1.0, high=3.0)

    @tf.function(jit_compile=jit_compile)
    def gradients(v, upstream):
        out = []
        for case in cases:
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = op(*case)(v)
            out.append(tape.gradient(y, v, output_gradients=upstream))
        return out

    for (name, scale_by_grad, kind), grad in zip(cases, gradients(tf.cast(x, dtype), tf.cast(g, dtype))):
        assert grad.dtype == dtype, (name, scale_by_grad, kind)
        if kind == "step":
            expected = ref.step_grad(name, x, g, scale_by_grad, False)
        else:
            expected = ref.staircase_grad(name, x, g, 3, -1.0, 3.0, scale_by_grad)
        # A few roundings of the dtype, relative to the largest value (swish_sign's reaches 5 |g|).
        atol = 4 * HALF_EPSILON[dtype] * max(1.0, np.abs(expected).max())
        np.testing.assert_allclose(tf.cast(grad, tf.float32).numpy(), expected, rtol=0, atol=atol,
                                   err_msg=f"{name}, scale_by_grad={scale_by_grad}, {kind}")


@pytest.mark.parametrize("name", ["soft_hinge", "sste", "truncated_hinge"])
@pytest.mark.parametrize("scale_by_grad", [True, False])
def test_gradients_under_xla_equal_eager(name, scale_by_grad):
    x, g = _inputs()

    def both(v):
        return ops.hard_threshold(v, name, scale_by_grad) + ops.staircase(v, 3, name, scale_by_grad)

    @tf.function(jit_compile=True)
    def compiled(v, upstream):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = both(v)
        return tape.gradient(y, v, output_gradients=upstream)

    _, eager = _grad(both, x, g)
    np.testing.assert_allclose(compiled(tf.constant(x), tf.constant(g)).numpy(), eager, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("loss", ["soft_hinge", "sste"])
def test_step_forward_and_backward_make_three_activation_sized_tensors(loss):
    """Memory: the output, then in the backward one intermediate (tanh x, or |x|)
    and grad_x; a product-of-factors backward would hold several more."""

    @tf.function
    def backward(x, g):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.hard_threshold(x, target_loss=loss)
        return tape.gradient(y, x, output_gradients=g)

    spec = tf.TensorSpec([8, 16], tf.float32)
    graph = backward.get_concrete_function(spec, spec).graph
    full_size = [op.type for op in graph.get_operations()
                 if op.type not in ("Placeholder", "Identity", "IdentityN", "Const")
                 and any(out.dtype == tf.float32 and out.shape == (8, 16) for out in op.outputs)]
    assert len(full_size) == 3, full_size


def _ops_of_x_alone(graph, x_name, g_name):
    """Types of the ops that read x (directly or not) but not g: what the executor may run in the forward pass."""
    ancestors = {}

    def of(op):
        if op.name not in ancestors:
            ancestors[op.name] = {op.name}.union(
                *(of(t.op) for t in op.inputs), *(of(c) for c in op.control_inputs))
        return ancestors[op.name]

    skip = ("Placeholder", "Identity", "IdentityN", "Const", "Shape", "StridedSlice", "NoOp")
    return sorted(op.type for op in graph.get_operations()
                  if op.type not in skip and x_name in of(op) and g_name not in of(op))


@pytest.mark.parametrize("loss", ["soft_hinge", "sste", "truncated_hinge"])
@pytest.mark.parametrize("op", [
    lambda x, loss: ops.hard_threshold(x, target_loss=loss),
    lambda x, loss: ops.staircase(x, 5, target_loss=loss),
    lambda x, loss: ops.staircase(x, 3, target_loss=loss, low=-1.0, high=3.0),
], ids=["step", "staircase", "staircase_shifted"])
def test_backward_reads_x_only_after_the_upstream_gradient(op, loss):
    """Memory: the backward keeps x alone. Computed from x before g arrives, tanh x (or
    2 x' - 1, or |x| <= 1) would run during the forward pass and stay alive until the backward
    reached the unit: one more activation-sized tensor per site."""

    @tf.function
    def forward(x, g):
        return op(x, loss)

    @tf.function
    def backward(x, g):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = op(x, loss)
        return tape.gradient(y, x, output_gradients=g)

    spec = tf.TensorSpec([8, 16], tf.float32)
    graphs = [f.get_concrete_function(spec, spec).graph for f in (forward, backward)]
    x_name, g_name = (t.op.name for t in graphs[1].inputs[:2])
    assert _ops_of_x_alone(graphs[1], x_name, g_name) == _ops_of_x_alone(graphs[0], x_name, g_name)
