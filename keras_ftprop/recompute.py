"""A threshold of a cheap pre-activation that keeps only the pre-activation's inputs for the backward pass.

A step or staircase backward reads its input x (grad_x = w dL/dz(x, t)), which
its quantized output does not carry, so ``threshold(x)`` keeps x alive until
the backward pass reaches it. When x = f(inputs) is cheap and the inputs are
kept anyway (batch norm keeps its input z for its own backward), the backward
can recompute x instead:

    forward:   x, aux = f(*inputs);  h = threshold(x)          (x freed at once)
    backward:  x = f(*inputs) again;  grad_inputs = (d threshold(f(inputs)) / d inputs)^T dh

The backward differentiates the same ops as the plain composition, so the
gradients are those of ``threshold(f(inputs))``; it costs one more evaluation of
f. For batch norm, [`batch_norm_threshold`][keras_ftprop.recompute.batch_norm_threshold] keeps the forward's batch
moments (one number per channel) and gives batch norm's backward in closed
form, so the recomputation is one affine map, not the moments again.
"""

import tensorflow as tf

__all__ = ["threshold_of", "batch_norm_threshold"]


def threshold_of(pre_activation, threshold, inputs):
    """``h = threshold(x)`` with ``x, aux = pre_activation(*inputs)``, recomputing x in the backward pass.

    Args:
      pre_activation: pure function of the tensors ``inputs`` returning ``(x, aux)``, aux a
        tuple of tensors (e.g. the batch statistics) returned alongside h without gradient.
      threshold: function x -> h whose gradient is the threshold's (e.g. ``ops.hard_threshold``).
      inputs: list of tensors; the gradient flows to each of them.

    Returns:
      ``(h, aux)``.
    """
    inputs = [tf.convert_to_tensor(t) for t in inputs]

    @tf.custom_gradient
    def _fused(*inputs):
        x, aux = pre_activation(*inputs)
        outputs = (threshold(x), *aux)

        def grad(dh, *unused):  # aux carries no gradient (stop_gradient below)
            # The control dependency on dh makes the recomputation distinct from the forward
            # ops, so that graph optimizers do not merge the two and keep x after all.
            with tf.control_dependencies([dh]), tf.GradientTape() as tape:
                tape.watch(inputs)
                h = threshold(pre_activation(*inputs)[0])
            grads = tape.gradient(h, inputs, output_gradients=dh)
            return [tf.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]

        return outputs, grad

    outputs = _fused(*inputs)
    return outputs[0], tuple(tf.stop_gradient(t) for t in outputs[1:])


def batch_norm_threshold(threshold, normalize, z, mean, variance, *, axes, epsilon, gamma=None, beta=None,
                         residual=None, lazy_x=False):
    """``h = threshold(x)``, ``x = normalize(z, mean, variance, gamma, beta, residual)``, with batch norm's backward
    in closed form from the forward's batch moments.

    ``mean`` and ``variance`` are the batch moments of ``z`` over ``axes`` (computed by the caller, so the
    forward is exactly the caller's); ``normalize`` is batch normalization (+ residual r), as the forward
    computes it. The backward recomputes x by ``normalize`` from the kept z and moments, takes
    ``dx = (d threshold / dx)^T dh``, and then, with n units per channel, s = 1 / sqrt(var + epsilon),
    x^ = (z - mean) s:

        dbeta = sum dx,  dgamma = sum dx x^,  dr = dx,
        dz = gamma s (dx - dbeta / n - x^ dgamma / n)

    the gradient of ``threshold(normalize(z, moments(z), ...))``: the moments' own gradients are the
    two mean terms. Nothing activation-sized is kept beyond z (and r): the moments are per channel.

    Args:
      threshold: function x -> h whose gradient is the threshold's (e.g. ``ops.hard_threshold``).
      normalize: ``(z, mean, variance, gamma, beta, residual) -> x``, elementwise given the statistics.
      z: the batch-norm input, kept as given (e.g. float16): ``normalize`` and the backward see it cast
        to the moments' dtype.
      mean: the batch mean of z over ``axes``, with the shape of gamma (one per channel).
      variance: the batch variance of z over ``axes``, the same shape.
      axes: the reduced axes of z (all but the channel axis).
      epsilon: batch norm's variance epsilon.
      gamma: batch norm's scale, or None (absent).
      beta: batch norm's offset, or None.
      residual: a tensor added after batch norm, or None.
      lazy_x: the backward calls ``threshold(x, x_again)``, ``x_again`` a zero-argument function
        recomputing x, for what reads x only sometimes (the target statistics, while recording):
        given x itself, a compiled step would write x out on every step to pass it on.

    Returns:
      h.
    """
    z = tf.convert_to_tensor(z)
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)  # their gradient is in dz's formula
    dtype = mean.dtype
    channel_shape = [1 if axis in axes else z.shape[axis] for axis in range(z.shape.rank)]
    given = {name: t for name, t in (("gamma", gamma), ("beta", beta), ("residual", residual)) if t is not None}
    names = list(given)

    @tf.custom_gradient
    def _fused(z_given, *tensors):
        params = dict(zip(names, tensors))

        def pre_activation():
            z = tf.cast(z_given, dtype)  # a no-op for z in dtype; else cast again in the backward, not kept
            x = normalize(z, mean, variance, params.get("gamma"), params.get("beta"), params.get("residual"))
            return z, x

        x = pre_activation()[1]

        def grad(dh):
            # The control dependency on dh makes the recomputed x distinct from the forward's, so that
            # graph optimizers do not merge the two and keep x after all.
            with tf.control_dependencies([dh]), tf.GradientTape() as tape:
                z, x = pre_activation()
                tape.watch(x)
                h = threshold(x, lambda: pre_activation()[1]) if lazy_x else threshold(x)
            dx = tape.gradient(h, x, output_gradients=dh)
            dx_z = tf.cast(dx, dtype)
            inv = tf.math.rsqrt(variance + tf.cast(epsilon, dtype))
            count = tf.cast(tf.size(z, out_type=tf.int64) // tf.size(inv, out_type=tf.int64), dtype)
            with tf.control_dependencies([dx]):  # else z - mean is computed, and kept, in the forward pass
                centred = z - tf.reshape(mean, channel_shape)
            dbeta = tf.reduce_sum(dx_z, axes)
            dgamma = tf.reduce_sum(dx_z * centred, axes) * inv  # sum dx x^
            scale = inv if "gamma" not in params else params["gamma"] * inv
            # dz = scale (dx - dbeta / n) - centred (scale s dgamma / n)
            dz = (dx_z - tf.reshape(dbeta / count, channel_shape)) * tf.reshape(scale, channel_shape) - centred * (
                tf.reshape(scale * inv * dgamma / count, channel_shape)
            )
            grads = {"gamma": dgamma, "beta": dbeta, "residual": dx}
            return [tf.cast(dz, z_given.dtype)] + [tf.cast(grads[name], params[name].dtype) for name in names]

        return threshold(x), grad

    return _fused(z, *given.values())
