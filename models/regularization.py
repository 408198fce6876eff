"""Weight decay as in the reference: PyTorch's *coupled* ``weight_decay``.

PyTorch's optimisers add ``wd * w`` to the gradient of every parameter before
the update (for SGD and Adam alike). That is the gradient of the penalty

    wd / 2 * ||w||^2

so every builder accepts ``weight_decay=wd`` and attaches
``keras.regularizers.L2(wd / 2)`` to every trainable weight: convolution and
dense kernels and biases, batch-norm gamma and beta. Keras adds these penalties
to the training loss (``model.losses``), so any optimiser then sees exactly
PyTorch's gradients. Builders also accept ``batch_norm_weight_decay``, the
decay of gamma and beta alone (None: ``weight_decay``, as the reference).

Do *not* use the ``weight_decay`` argument of Keras optimisers for this: it is
decoupled decay (``w -= lr * wd * w`` outside the gradient, as in AdamW), which
differs from the reference for Adam (its effect is not rescaled by Adam's
second-moment estimate).
"""

import keras
import numpy as np


def l2_weight_decay(weight_decay):
    """The regulariser giving gradient ``weight_decay * w``; None when 0."""
    weight_decay = float(weight_decay)
    if not weight_decay >= 0.0:  # also rejects NaN
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if weight_decay == 0.0:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


def weight_decay_penalty(weights, weight_decay):
    """``weight_decay / 2 * sum ||w||^2`` over ``weights``, as a Python float.

    ``weights`` is a model, a layer or an iterable of variables/arrays; for a
    model or layer its trainable weights are used. Handy for logging and for
    custom training loops that do not use ``model.losses``.
    """
    if isinstance(weights, keras.layers.Layer):
        weights = weights.trainable_weights
    total = sum(np.sum(np.square(_to_float64(w))) for w in weights)
    return 0.5 * float(weight_decay) * float(total)


def _to_float64(weight):
    value = weight.numpy() if hasattr(weight, "numpy") else weight
    return np.asarray(value, dtype=np.float64)


def resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay):
    """The decay of batch norm's gamma and beta: ``batch_norm_weight_decay``, or ``weight_decay`` if None.

    A step after batch norm sees only sign(gamma * x_hat + beta), so the loss
    does not resist decay shrinking (gamma, beta) together; 0 exempts them.
    """
    if batch_norm_weight_decay is None:
        return weight_decay
    if not float(batch_norm_weight_decay) >= 0.0:  # also rejects NaN
        raise ValueError(f"batch_norm_weight_decay must be >= 0 or None, got {batch_norm_weight_decay}")
    return batch_norm_weight_decay
