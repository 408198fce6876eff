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
f (for batch norm: the batch moments and one affine map).
"""

import tensorflow as tf

__all__ = ["threshold_of"]


def threshold_of(pre_activation, threshold, inputs, return_pre_activation=False):
    """``h = threshold(x)`` with ``x, aux = pre_activation(*inputs)``, recomputing x in the backward pass.

    Args:
      pre_activation: pure function of the tensors ``inputs`` returning ``(x, aux)``, aux a
        tuple of tensors (e.g. the batch statistics) returned alongside h without gradient.
      threshold: function x -> h whose gradient is the threshold's (e.g. ``ops.hard_threshold``).
      inputs: list of tensors; the gradient flows to each of them.
      return_pre_activation: also return x (without gradient), e.g. for diagnostics; x is then
        kept for as long as its consumers need it.

    Returns:
      ``(h, aux)`` or ``(h, aux, x)``.
    """
    inputs = [tf.convert_to_tensor(t) for t in inputs]

    @tf.custom_gradient
    def _fused(*inputs):
        x, aux = pre_activation(*inputs)
        outputs = (threshold(x), *aux) + ((x,) if return_pre_activation else ())

        def grad(dh, *unused):  # aux and x carry no gradient (stop_gradient below)
            # The control dependency on dh makes the recomputation distinct from the forward
            # ops, so that graph optimizers do not merge the two and keep x after all.
            with tf.control_dependencies([dh]), tf.GradientTape() as tape:
                tape.watch(inputs)
                h = threshold(pre_activation(*inputs)[0])
            grads = tape.gradient(h, inputs, output_gradients=dh)
            return [tf.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]

        return outputs, grad

    outputs = _fused(*inputs)
    h, rest = outputs[0], [tf.stop_gradient(t) for t in outputs[1:]]
    aux = tuple(rest[: len(rest) - return_pre_activation])
    return (h, aux, rest[-1]) if return_pre_activation else (h, aux)
