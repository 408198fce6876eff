"""Hard-threshold activations as plain functions with an FTPROP-MB backward.

Each op is a ``tf.custom_gradient`` whose backward is the target loss's
``input_gradient`` (see [`keras_ftprop.target_losses`][keras_ftprop.target_losses]):

    grad_x = w * dL/dz(x, t),  t = sign(-g),  w = |g|  or  1[g != 0] / batch_size

``batch_size`` is the size of the first axis times the number of replicas in
sync, so that under ``tf.distribute`` it is the global batch and the
gradients equal the single-device ones.
"""

import tensorflow as tf

from keras_ftprop import target_losses

__all__ = ["hard_threshold", "staircase", "saturated_relu"]


def _as_floating(x, op_name):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(
            f"{op_name} expects a floating-point tensor (float16, bfloat16, float32 or float64); "
            f"got dtype {x.dtype.name}. Cast the input first, e.g. tf.cast(x, tf.float32)."
        )
    return x


def _global_batch_size(g):
    """Size of the first axis of ``g`` times the replicas in sync (1 for a scalar)."""
    local = tf.shape(g)[0] if g.shape.rank else 1
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    return local * replicas


def hard_threshold(x, target_loss="soft_hinge", scale_by_grad=True, zero_one=False):
    """Step activation trained by feasible target propagation.

    Forward:  h = +1 if x > 0 else -1  (never 0); with ``zero_one`` h = 1[x > 0].
    Backward: grad_x = w * dL/dz(x, sign(-g)) for the target loss L, the same
    for both output ranges (g is the gradient with respect to h), except for a
    rule with a {0, 1} form of its own (``ramp``; ``TargetLoss.for_output_range``).

    Args:
      x: floating-point tensor of pre-activations.
      target_loss: name, [`TargetLoss`][keras_ftprop.target_losses.TargetLoss] or config.
      scale_by_grad: w = |g| when True, else 1[g != 0] / batch_size.
      zero_one: outputs in {0, 1} instead of {-1, +1}.
    """
    x = _as_floating(x, "hard_threshold")
    loss = target_losses.get(target_loss).for_output_range(zero_one)
    low = 0.0 if zero_one else -1.0

    @tf.custom_gradient
    def _step(x):
        y = tf.where(x > 0, tf.constant(1.0, x.dtype), tf.constant(low, x.dtype))

        def grad(g):
            # Only once g has arrived: otherwise the executor computes the part that reads x alone
            # (tanh x, |x| <= 1) as soon as x exists and keeps it through the forward pass.
            with tf.control_dependencies([g]):
                return loss.input_gradient(x, g, scale_by_grad=scale_by_grad, batch_size=_global_batch_size(g))

        return y, grad

    return _step(x)


def staircase(x, steps=3, target_loss="soft_hinge", scale_by_grad=True, low=0.0, high=1.0):
    """Quantized ReLU with ``steps + 1`` levels on [low, high].

    Forward (n = steps, a = low, b = high):
      x' = (x - a) / (b - a);  y' = clip(ceil(x' (n - 1)), 0, n) / n;  y = y' (b - a) + a.
    Thresholds sit at x' = 0, 1/(n-1), ..., 1. For n = 1 the single threshold is
    x' = 0 (y' = 1[x' > 0]), where the formula would give a constant.

    Backward: the whole staircase is one unit centred on its range,
    u = 2 x' - 1, with no chain-rule factor for u:
      grad_x = w' * dL/dz(u, sign(-g)) / (b - a),  w' = |g| (b - a)  or  1[g != 0] / batch_size,
    e.g. soft hinge with w = |g|: grad_x = g (1 - tanh(u)^2); SSTE: grad_x = g 1[0 <= x' <= 1].
    """
    x = _as_floating(x, "staircase")
    steps, low, high = check_staircase_args(steps, low, high)
    loss = target_losses.get(target_loss).for_output_range(zero_one=False)
    span = high - low
    levels = tf.constant(float(steps), x.dtype)
    slope = tf.constant(float(max(steps - 1, 1)), x.dtype)

    unit_range = (low, high) == (0.0, 1.0)  # x' = x: no affine maps, no temporaries for them

    def unit_of(x):
        return x if unit_range else (x - low) / span

    @tf.custom_gradient
    def _staircase(x):
        y = tf.clip_by_value(tf.math.ceil(unit_of(x) * slope), 0.0, levels) / levels
        if not unit_range:
            y = y * span + low

        def grad(g):
            # From x, once g has arrived: the backward keeps only x, as hard_threshold's does.
            with tf.control_dependencies([g]):
                centred = 2.0 * unit_of(x) - 1.0
            g_unit = g if span == 1.0 else g * span  # dLoss/dy'
            grad_unit = loss.input_gradient(
                centred, g_unit, scale_by_grad=scale_by_grad, batch_size=_global_batch_size(g)
            )
            return grad_unit if span == 1.0 else grad_unit / span

        return y, grad

    return _staircase(x)


def saturated_relu(x):
    """The paper's baseline: y = min(max(x, 0), 1), with its ordinary gradient 1[0 <= x <= 1]."""
    x = _as_floating(x, "saturated_relu")
    return tf.clip_by_value(x, 0.0, 1.0)


def check_staircase_args(steps, low, high):
    try:
        integral = not isinstance(steps, bool) and float(steps).is_integer()
    except (TypeError, ValueError):
        integral = False
    if not integral:
        raise ValueError(f"staircase steps must be an integer >= 1; got {steps!r}.")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"staircase steps must be an integer >= 1 (steps + 1 output levels); got {steps}.")
    low, high = float(low), float(high)
    if not high > low:
        raise ValueError(f"staircase needs high > low; got low={low}, high={high}.")
    return steps, low, high
