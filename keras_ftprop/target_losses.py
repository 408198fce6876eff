"""Per-unit target losses: the backward pass of every hard-threshold layer.

FTPROP-MB gives each hidden unit the target ``t = sign(-g)`` (``t = 0``, "no
target", where ``g = 0``), ``g`` being the upstream gradient dLoss/dh, and
trains the layer below on the weighted per-unit loss ``w * L(z, t)``. So the
gradient that flows into a layer's pre-activation ``x`` is

    grad_x = w * dL/dz(x, t),   t = sign(-g),
    w = |g|                       (scale_by_grad=True, the default)
    w = 1[g != 0] / batch_size    (scale_by_grad=False)

A target loss defines ``L(z, t)`` (``__call__``); its derivative is taken by
TensorFlow unless the class gives a closed form (``derivative``). The direct
estimators ``ste`` and ``sste`` define the whole backward instead
(``input_gradient``) and ignore ``scale_by_grad``, as in the reference code.

Built-in losses, by name (with ``w = |g|`` the backward simplifies because
``-t * |g| = g``):

| name              | L(z, t)                          | grad_x with w = abs(g)                  |
|-------------------|----------------------------------|-----------------------------------------|
| ``soft_hinge``    | tanh(-z t) + 1                   | g (1 - tanh(x)^2)                       |
| ``truncated_hinge`` | clip(1 - z t, 0, 2)            | g 1[-1 < t x <= 1]                      |
| ``linear``        | -z t                             | g                                       |
| ``sigmoid``       | sigmoid(-2 z t)                  | g 2 s (1 - s),  s = sigmoid(2 x)        |
| ``lecun_tanh``    | 1.7519 tanh(-(2/3) z t) + 1      | g 1.7519 (2/3) (1 - tanh(2x/3)^2)       |
| ``sste``          | (direct estimator)               | g 1[abs(x) <= 1]                        |
| ``ste``           | (direct estimator)               | g                                       |

A loss of your own subclasses :class:`TargetLoss`, defines ``__call__`` and
``get_config`` and is registered with
``keras.saving.register_keras_serializable`` like any Keras custom object.
"""

import keras
import tensorflow as tf

__all__ = [
    "TargetLoss",
    "SoftHinge",
    "TruncatedHinge",
    "Linear",
    "Sigmoid",
    "LeCunTanh",
    "SaturatedSTE",
    "STE",
    "get",
    "serialize",
    "names",
]

_PACKAGE = "keras_ftprop"


class TargetLoss:
    """Base class: a per-unit loss ``L(z, t)`` for a unit with input ``z`` and target ``t``.

    Subclasses define ``__call__(z, t)`` (elementwise, same shape as ``z``);
    ``derivative`` and ``input_gradient`` follow from it.
    """

    def __call__(self, z, t):
        raise NotImplementedError(
            f"{type(self).__name__} must define __call__(z, t) returning the per-unit loss L(z, t)."
        )

    def derivative(self, z, t):
        """dL/dz(z, t), elementwise; by automatic differentiation unless overridden."""
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = self(z, t)
        grad = tape.gradient(loss, z)
        return tf.zeros_like(z) if grad is None else grad

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        """grad_x = w * dL/dz(x, t) with t = sign(-g); w = |g| or 1[g != 0] / batch_size."""
        t = -tf.sign(g)
        if scale_by_grad:
            weight = tf.abs(g)
        else:
            weight = tf.cast(tf.not_equal(g, 0), g.dtype) / tf.cast(batch_size, g.dtype)
        return weight * self.derivative(x, t)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftHinge(TargetLoss):
    """FTP-SH: L(z, t) = yscale * tanh(-xscale * z * t) + 1.

    With w = |g|: grad_x = g * yscale * xscale * (1 - tanh(xscale * x)^2).
    """

    def __init__(self, xscale=1.0, yscale=1.0):
        self.xscale = float(xscale)
        self.yscale = float(yscale)

    def __call__(self, z, t):
        return self.yscale * tf.tanh(-self.xscale * z * t) + 1.0

    def derivative(self, z, t):
        th = tf.tanh(self.xscale * z * t)
        return -t * (self.yscale * self.xscale) * (1.0 - th * th)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if not scale_by_grad:
            return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)
        # TanhGrad(y, dy) = dy (1 - y^2) in one kernel: the backward of the widest
        # layers then holds two activation-sized temporaries, not five.
        scale = self.yscale * self.xscale
        th = tf.tanh(x if self.xscale == 1.0 else self.xscale * x)
        return tf.raw_ops.TanhGrad(y=th, dy=g if scale == 1.0 else g * scale)

    def get_config(self):
        return {"xscale": self.xscale, "yscale": self.yscale}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LeCunTanh(SoftHinge):
    """LeCun's scaled tanh as a soft hinge: L(z, t) = 1.7519 tanh(-(2/3) z t) + 1."""

    def __init__(self):
        super().__init__(xscale=2.0 / 3.0, yscale=1.7519)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TruncatedHinge(TargetLoss):
    """L(z, t) = clip(margin - z t, 0, threshold); dL/dz = -t * 1[margin - threshold < z t <= margin].

    With the defaults (margin 1, threshold 2) and w = |g|: grad_x = g * 1[-1 < t x <= 1].
    """

    def __init__(self, margin=1.0, threshold=2.0):
        self.margin = float(margin)
        self.threshold = float(threshold)

    def __call__(self, z, t):
        return tf.clip_by_value(self.margin - z * t, 0.0, self.threshold)

    def derivative(self, z, t):
        zt = z * t
        active = tf.logical_and(zt > self.margin - self.threshold, zt <= self.margin)
        return -t * tf.cast(active, z.dtype)

    def get_config(self):
        return {"margin": self.margin, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Linear(TargetLoss):
    """L(z, t) = -z t (the perceptron criterion without margin); with w = |g|: grad_x = g (the STE)."""

    def __call__(self, z, t):
        return -z * t

    def derivative(self, z, t):
        return -t * tf.ones_like(z)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if scale_by_grad:
            return g
        return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Sigmoid(TargetLoss):
    """L(z, t) = sigmoid(-xscale z t); with w = |g|: grad_x = g xscale s (1 - s), s = sigmoid(xscale x)."""

    def __init__(self, xscale=2.0):
        self.xscale = float(xscale)

    def __call__(self, z, t):
        return tf.sigmoid(-self.xscale * z * t)

    def derivative(self, z, t):
        s = tf.sigmoid(-self.xscale * z * t)
        return -t * self.xscale * s * (1.0 - s)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if not scale_by_grad:
            return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)
        s = tf.sigmoid(self.xscale * x)
        return g * (self.xscale * s * (1.0 - s))

    def get_config(self):
        return {"xscale": self.xscale}


class DirectEstimator(TargetLoss):
    """A backward given directly as grad_x = g * 1[x in window]; ``scale_by_grad`` does not apply.

    Computed as one select of g, not a product with a float mask, so the
    backward holds no extra activation-sized float tensor.
    """

    def __call__(self, z, t):
        raise TypeError(f"{type(self).__name__} is a direct gradient estimator and has no loss L(z, t).")

    def in_window(self, x):
        """Boolean mask of the units whose gradient passes."""
        raise NotImplementedError

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        return tf.where(self.in_window(x), g, tf.zeros([], g.dtype))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SaturatedSTE(DirectEstimator):
    """SSTE: grad_x = g * 1[|x| <= limit] (limit 1)."""

    def __init__(self, limit=1.0):
        self.limit = float(limit)

    def in_window(self, x):
        return tf.abs(x) <= self.limit

    def get_config(self):
        return {"limit": self.limit}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class STE(DirectEstimator):
    """Straight-through estimator: grad_x = g (every unit is in the window)."""

    def in_window(self, x):
        return tf.ones_like(x, dtype=tf.bool)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        return g


_BUILTINS = {
    "soft_hinge": SoftHinge,
    "truncated_hinge": TruncatedHinge,
    "linear": Linear,
    "sigmoid": Sigmoid,
    "lecun_tanh": LeCunTanh,
    "sste": SaturatedSTE,
    "ste": STE,
}


def names():
    """The names of the built-in target losses, as accepted by :func:`get`."""
    return tuple(_BUILTINS)


def get(identifier):
    """Resolves a target loss from a name, an instance or a serialized config."""
    if isinstance(identifier, TargetLoss):
        return identifier
    if isinstance(identifier, str):
        try:
            return _BUILTINS[identifier]()
        except KeyError:
            raise ValueError(
                f"Unknown target loss {identifier!r}; valid names are: {', '.join(_BUILTINS)} "
                "(or pass a keras_ftprop.target_losses.TargetLoss instance)."
            ) from None
    if isinstance(identifier, dict):
        loss = keras.saving.deserialize_keras_object(identifier)
        if isinstance(loss, TargetLoss):
            return loss
        raise ValueError(f"Config {identifier!r} does not describe a TargetLoss (got {type(loss).__name__}).")
    raise ValueError(
        f"A target loss must be a name ({', '.join(_BUILTINS)}), a TargetLoss instance or its config; "
        f"got {identifier!r} of type {type(identifier).__name__}."
    )


def serialize(loss):
    """The built-in name of ``loss`` when it is a default built-in, else its Keras config."""
    for name, cls in _BUILTINS.items():
        if loss == cls():
            return name
    return keras.saving.serialize_keras_object(loss)
