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
estimators ``ste``, ``sste``, ``sste_v2`` and ``ramp`` define the whole
backward instead (``input_gradient``) and ignore ``scale_by_grad``, as in the
reference code. The surrogate gradients of binary networks are target losses
``L(z, t) = 1 - F(z t)`` of an odd ``F``: with ``w = |g|``, grad_x = g F'(x).

Built-in losses, by name (with ``w = |g|`` the backward simplifies because
``-t * |g| = g``; ``s(v) = sigmoid(v)``, ``[v]+ = max(v, 0)``):

| name                      | L(z, t)                                | grad_x with w = abs(g)                      |
|---------------------------|----------------------------------------|---------------------------------------------|
| ``soft_hinge``            | tanh(-z t) + 1                         | g (1 - tanh(x)^2)                           |
| ``soft_hinge2``           | tanh(-2 z t) + 1                       | g 2 (1 - tanh(2x)^2)                        |
| ``lecun_tanh``            | 1.7519 tanh(-(2/3) z t) + 1            | g 1.7519 (2/3) (1 - tanh(2x/3)^2)           |
| ``truncated_hinge``       | clip(1 - z t, 0, 2)                    | g 1[-1 < t x <= 1]                          |
| ``hinge``                 | [1 - z t]+                             | g 1[t x <= 1]                               |
| ``perceptron``            | [-z t]+                                | g 1[t x <= 0]                               |
| ``linear``                | -z t                                   | g                                           |
| ``adaline``               | t^2 (z - t)^2 / 2                      | abs(g) (x - t) = g + abs(g) x               |
| ``log_hinge``             | log(1 + [1 - z t]+)                    | g 1[t x <= 1] / (2 - t x)                   |
| ``truncated_log_hinge``   | log(1 + clip(1 - z t, 0, 2))           | g 1[-1 < t x <= 1] / (2 - t x)              |
| ``log_loss``              | log(1 + exp(-z t))                     | g s(-t x)                                   |
| ``truncated_log_loss``    | min(log(1 + exp(-z t)), 2)             | g s(-t x) 1[log(1 + exp(-t x)) < 2]         |
| ``square_loss``           | [1 - z t]+^2                           | g 2 [1 - t x]+                              |
| ``truncated_square_loss`` | min([1 - z t]+^2, 4)                   | g 2 (1 - t x) 1[-1 < t x <= 1]              |
| ``sigmoid``               | s(-2 z t)                              | g 2 s(2x) (1 - s(2x))                       |
| ``sigmoid2_2``            | 2 s(-2 z t)                            | g 4 s(2x) (1 - s(2x))                       |
| ``sigmoid3_2``            | 2 s(-3 z t)                            | g 6 s(3x) (1 - s(3x))                       |
| ``log_sigmoid``           | log s(-2 z t)                          | g 2 s(2 t x)                                |
| ``approx_sign``           | 1 - F(z t), F(v) = sign(v)(1 - [1 - abs(v)]+^2) | g 2 [1 - abs(x)]+                  |
| ``swish_sign`` (b = 5)  | 1 - F(z t), F(v) = 2 s(bv)(1 + bv(1 - s(bv))) - 1 | g b (2 - bx tanh(bx/2)) / (1+cosh bx) |
| ``ede``                   | k tanh(-T z t) + 1, T: 0.1 -> 10, k = max(1/T, 1) | g k T (1 - tanh(T x)^2)  |
| ``sste``                  | (direct estimator)                     | g 1[abs(x) <= 1]                            |
| ``sste_v2``               | (direct estimator)                     | g 1[abs(x) <= sqrt(3)]                      |
| ``ramp``                  | (direct estimator)                     | g clip(2 - abs(x), 0, 1)                    |
| ``ramp``, {0, 1} step     | (direct estimator)                     | g clip(1.5 - abs(x - 1/2), 0, 1)            |
| ``ste``                   | (direct estimator)                     | g                                           |

Every numeric parameter of a loss class may be a schedule over training steps
(a ``keras.optimizers.schedules.LearningRateSchedule``, e.g.
[`keras_ftprop.schedules.Geometric`][keras_ftprop.schedules.Geometric]); such a loss reads the step it is
[`bind`][keras_ftprop.target_losses.TargetLoss.bind]-ed to, which
[`keras_ftprop.callbacks.TargetLossSchedule`][keras_ftprop.callbacks.TargetLossSchedule] does for ``model.fit``.

A loss of your own subclasses [`TargetLoss`][keras_ftprop.target_losses.TargetLoss], defines ``__call__`` and
``get_config`` and is registered with
``keras.saving.register_keras_serializable`` like any Keras custom object.
"""

import functools
import json
import math

import keras
import tensorflow as tf

__all__ = [
    "TargetLoss",
    "SoftHinge",
    "TruncatedHinge",
    "Hinge",
    "Linear",
    "Adaline",
    "LogHinge",
    "LogLoss",
    "SquareLoss",
    "Sigmoid",
    "LogSigmoid",
    "LeCunTanh",
    "ApproxSign",
    "SwishSign",
    "EDE",
    "DirectEstimator",
    "SaturatedSTE",
    "Ramp",
    "STE",
    "get",
    "serialize",
    "names",
]

_PACKAGE = "keras_ftprop"
_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _number_or_schedule(value, name):
    """A parameter: a float, or a schedule over training steps (also from its Keras config)."""
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if isinstance(value, _Schedule):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or a keras.optimizers.schedules.LearningRateSchedule; got {value!r}."
        ) from None


def _optional(value, name):
    """A threshold: None (no truncation), a float or a schedule."""
    return None if value is None else _number_or_schedule(value, name)


def _config_value(value):
    return keras.saving.serialize_keras_object(value) if isinstance(value, _Schedule) else value


def _is(value, number):
    """True when ``value`` is the Python number ``number`` (never for a scheduled tensor)."""
    return isinstance(value, float) and value == number


def _sqrt(value):
    return math.sqrt(value) if isinstance(value, float) else tf.sqrt(value)


class TargetLoss:
    """Base class: a per-unit loss ``L(z, t)`` for a unit with input ``z`` and target ``t``.

    Subclasses define ``__call__(z, t)`` (elementwise, same shape as ``z``);
    ``derivative`` and ``input_gradient`` follow from it.
    """

    _step = None  # the training step that scheduled parameters are computed at (see bind)

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

    def for_output_range(self, zero_one):
        """The rule for a {0, 1} step (``zero_one``) or a unit centred on 0 (a {-1, +1} step, a
        staircase's centred unit): this one, unless the rule has a {0, 1} form of its own (``ramp``)."""
        return self

    # Schedules. The step is read inside the compiled training step (a variable
    # read), so a changing parameter neither retraces nor recompiles it; reading
    # the optimizer's iteration count makes a restored optimizer resume the schedule.

    def bind(self, step, total_steps=None):
        """Computes scheduled parameters at ``step``, an integer variable such as ``optimizer.iterations``.

        ``total_steps``, the length of training, is used by losses annealed over
        the whole of it (``EDE``) when they were not given one. Returns ``self``.
        """
        self._step = step
        return self

    @property
    def scheduled(self):
        """Whether a parameter follows a schedule (the loss then needs
        [`bind`][keras_ftprop.target_losses.TargetLoss.bind])."""
        return bool(self._schedules())

    def scheduled_values(self):
        """``{parameter: value}`` of the scheduled parameters at the bound step, as tensors."""
        return {name: schedule(self._current_step()) for name, schedule in self._schedules().items()}

    def _schedules(self):
        return {name: value for name, value in vars(self).items() if isinstance(value, _Schedule)}

    def _current_step(self):
        if self._step is not None:
            return self._step
        message = (
            f"{self!r} follows a schedule over training steps but is bound to no step: train with "
            "keras_ftprop.callbacks.TargetLossSchedule() in model.fit's callbacks, or call "
            "loss.bind(optimizer.iterations) in a loop of your own."
        )
        if tf.executing_eagerly():
            raise ValueError(message)
        # Traced, e.g. by a SavedModel export that saves the gradient functions: the
        # gradient fails when it runs, not when it is traced (XLA drops the check).
        check = tf.debugging.Assert(tf.constant(False), [message])
        with tf.control_dependencies([check]):
            return tf.zeros([], tf.int64)

    def _value(self, parameter, dtype):
        """A parameter for computing in ``dtype``: the float (or None) itself, or the schedule at the bound step."""
        if isinstance(parameter, _Schedule):
            return tf.cast(parameter(self._current_step()), dtype)
        return parameter

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
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True, default=repr)))


class _Scaled(TargetLoss):
    """A loss of ``xscale z t`` scaled by ``yscale``; each a number or a schedule."""

    def __init__(self, xscale, yscale):
        self.xscale = _number_or_schedule(xscale, "xscale")
        self.yscale = _number_or_schedule(yscale, "yscale")

    def _scales(self, dtype):
        return self._value(self.xscale, dtype), self._value(self.yscale, dtype)

    def get_config(self):
        return {"xscale": _config_value(self.xscale), "yscale": _config_value(self.yscale)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftHinge(_Scaled):
    """FTP-SH: L(z, t) = yscale * tanh(-xscale * z * t) + 1.

    With w = |g|: grad_x = g * yscale * xscale * (1 - tanh(xscale * x)^2).
    ``soft_hinge2`` is the reference's soft hinge with xscale 2 (a loss without a
    backward there).
    """

    def __init__(self, xscale=1.0, yscale=1.0):
        super().__init__(xscale, yscale)

    def __call__(self, z, t):
        xscale, yscale = self._scales(z.dtype)
        return yscale * tf.tanh(-xscale * z * t) + 1.0

    def derivative(self, z, t):
        xscale, yscale = self._scales(z.dtype)
        th = tf.tanh(xscale * z * t)
        return -t * (yscale * xscale) * (1.0 - th * th)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if not scale_by_grad:
            return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)
        # TanhGrad(y, dy) = dy (1 - y^2) in one kernel: the backward of the widest
        # layers then holds two activation-sized temporaries, not five.
        xscale, yscale = self._scales(x.dtype)
        scale = yscale * xscale
        th = tf.tanh(x if _is(xscale, 1.0) else xscale * x)
        return tf.raw_ops.TanhGrad(y=th, dy=g if _is(scale, 1.0) else g * scale)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LeCunTanh(SoftHinge):
    """LeCun's scaled tanh as a soft hinge: L(z, t) = 1.7519 tanh(-(2/3) z t) + 1."""

    def __init__(self):
        super().__init__(xscale=2.0 / 3.0, yscale=1.7519)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EDE(SoftHinge):
    """IR-Net's error decay estimator (Qin et al., 2020) as a soft hinge with annealed scales.

    L(z, t) = k tanh(-T z t) + 1, so with w = |g|: grad_x = g k T (1 - tanh(T x)^2), with

        T = t_min 10^(p log10(t_max / t_min)),  k = max(1 / T, 1),  p = min(step / total_steps, 1)

    the fraction of training done. ``total_steps`` defaults to the length of
    training the loss is bound to ([`bind`][keras_ftprop.target_losses.TargetLoss.bind]; ``TargetLossSchedule`` passes
    the length of the fit).
    """

    def __init__(self, t_min=0.1, t_max=10.0, total_steps=None):
        self.t_min, self.t_max = float(t_min), float(t_max)
        if not (self.t_min > 0 and self.t_max > 0):
            raise ValueError(f"EDE needs t_min > 0 and t_max > 0; got t_min={t_min}, t_max={t_max}.")
        self.total_steps = None if total_steps is None else self._schedule_of(total_steps).steps

    def _schedule_of(self, total_steps):
        from keras_ftprop.schedules import Geometric

        return Geometric(self.t_min, self.t_max, total_steps)

    def bind(self, step, total_steps=None):
        if self.total_steps is None:
            if total_steps is None:
                raise ValueError(
                    "EDE anneals over the whole training and needs its length: give "
                    "EDE(total_steps=...) or bind(step, total_steps=...) (TargetLossSchedule takes it "
                    "from model.fit's epochs and steps per epoch when they are known)."
                )
            self.total_steps = self._schedule_of(total_steps).steps
        return super().bind(step)

    @property
    def scheduled(self):
        return True

    def scheduled_values(self):
        scale = self._schedule_of(self.total_steps)(self._current_step())
        return {"t": scale, "k": tf.maximum(1.0 / scale, 1.0)}

    def _scales(self, dtype):
        step = self._current_step()  # bound, it has total_steps
        scale = tf.cast(self._schedule_of(self.total_steps or 1)(step), dtype)
        return scale, tf.maximum(1.0 / scale, tf.ones([], dtype))

    def get_config(self):
        return {"t_min": self.t_min, "t_max": self.t_max, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TruncatedHinge(TargetLoss):
    """L(z, t) = clip(margin - z t, 0, threshold); dL/dz = -t * 1[margin - threshold < z t <= margin].

    With the defaults (margin 1, threshold 2) and w = |g|: grad_x = g * 1[-1 < t x <= 1].
    """

    def __init__(self, margin=1.0, threshold=2.0):
        self.margin = _number_or_schedule(margin, "margin")
        self.threshold = _optional(threshold, "threshold")  # None: no truncation

    def __call__(self, z, t):
        margin, threshold = self._value(self.margin, z.dtype), self._value(self.threshold, z.dtype)
        hinge = tf.nn.relu(margin - z * t)
        return hinge if threshold is None else tf.minimum(hinge, threshold)

    def derivative(self, z, t):
        margin, threshold = self._value(self.margin, z.dtype), self._value(self.threshold, z.dtype)
        zt = z * t
        active = zt <= margin
        if threshold is not None:
            active = tf.logical_and(zt > margin - threshold, active)
        return -t * tf.cast(active, z.dtype)

    def get_config(self):
        return {"margin": _config_value(self.margin), "threshold": _config_value(self.threshold)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Hinge(TruncatedHinge):
    """The weighted hinge: L(z, t) = max(margin - z t, 0); with w = |g|: grad_x = g 1[t x <= margin].

    ``perceptron`` is ``Hinge(margin=0)``, the perceptron criterion. The
    reference's backward of its untruncated hinge is disabled (an assertion);
    this is the derivative of its loss.
    """

    def __init__(self, margin=1.0):
        super().__init__(margin=margin, threshold=None)

    def get_config(self):
        return {"margin": _config_value(self.margin)}


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
class Adaline(TargetLoss):
    """The delta rule: L(z, t) = t^2 (z - t)^2 / 2, dL/dz = t^2 (z - t) (t^2 = 1 with a target, 0 without).

    With w = |g|: grad_x = |g| (x - t) = g + |g| x. The reference gives only
    this backward (no loss), for {-1, +1} steps; here the same rule on z serves
    both output ranges, as every target loss does.
    """

    def __call__(self, z, t):
        return t * t * tf.square(z - t) / 2.0

    def derivative(self, z, t):
        return t * t * (z - t)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LogHinge(TargetLoss):
    """L(z, t) = log(1 + clip(margin - z t, 0, threshold)), untruncated by default (threshold None).

    dL/dz = -t 1[margin - threshold < z t <= margin] / (1 + margin - z t); with the
    defaults and w = |g|: grad_x = g 1[t x <= 1] / (2 - t x). ``truncated_log_hinge``
    has threshold 2. The reference's log hinge always clamps z t to
    [-margin, margin] (it is the truncated one, threshold 2 margin); its
    "truncated" rule is twice that, its threshold argument unused. Neither has
    a backward there.
    """

    def __init__(self, margin=1.0, threshold=None):
        self.margin = _number_or_schedule(margin, "margin")
        self.threshold = _optional(threshold, "threshold")  # None: no truncation

    def _hinge(self, z, t):
        margin, threshold = self._value(self.margin, z.dtype), self._value(self.threshold, z.dtype)
        hinge = tf.nn.relu(margin - z * t)
        return margin, threshold, hinge if threshold is None else tf.minimum(hinge, threshold)

    def __call__(self, z, t):
        return tf.math.log1p(self._hinge(z, t)[2])

    def derivative(self, z, t):
        margin, threshold, hinge = self._hinge(z, t)
        zt = z * t
        active = zt <= margin
        if threshold is not None:
            active = tf.logical_and(zt > margin - threshold, active)
        return tf.where(active, -t / (1.0 + hinge), tf.zeros([], z.dtype))

    def get_config(self):
        return {"margin": _config_value(self.margin), "threshold": _config_value(self.threshold)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LogLoss(TargetLoss):
    """The logistic loss: L(z, t) = min(log(1 + exp(-z t)), threshold), untruncated by default.

    dL/dz = -t s(-z t) 1[log(1 + exp(-z t)) < threshold], s the sigmoid; with w = |g|:
    grad_x = g s(-t x) (times the indicator). ``truncated_log_loss`` has threshold 2
    (flat where z t < -log(e^2 - 1) = -1.855). The reference has the loss only.
    """

    def __init__(self, threshold=None):
        self.threshold = _optional(threshold, "threshold")  # None: no truncation

    def __call__(self, z, t):
        loss = tf.math.softplus(-z * t)
        threshold = self._value(self.threshold, z.dtype)
        return loss if threshold is None else tf.minimum(loss, threshold)

    def derivative(self, z, t):
        zt = z * t
        grad = -t * tf.sigmoid(-zt)
        threshold = self._value(self.threshold, z.dtype)
        if threshold is None:
            return grad
        return tf.where(tf.math.softplus(-zt) < threshold, grad, tf.zeros([], z.dtype))

    def get_config(self):
        return {"threshold": _config_value(self.threshold)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SquareLoss(TargetLoss):
    """The squared hinge: L(z, t) = min(max(margin - z t, 0)^2, threshold), untruncated by default.

    dL/dz = -2 t max(margin - z t, 0) 1[z t > margin - sqrt(threshold)]; with w = |g|:
    grad_x = 2 g max(1 - t x, 0). ``truncated_square_loss`` has threshold 4: flat
    for z t <= -1, where the truncated hinge is. The reference clips z t at 1
    rather than at the margin (the same for margin 1) and has the loss only.
    """

    def __init__(self, margin=1.0, threshold=None):
        self.margin = _number_or_schedule(margin, "margin")
        self.threshold = _optional(threshold, "threshold")  # None: no truncation

    def __call__(self, z, t):
        margin, threshold = self._value(self.margin, z.dtype), self._value(self.threshold, z.dtype)
        loss = tf.square(tf.nn.relu(margin - z * t))
        return loss if threshold is None else tf.minimum(loss, threshold)

    def derivative(self, z, t):
        margin, threshold = self._value(self.margin, z.dtype), self._value(self.threshold, z.dtype)
        zt = z * t
        grad = -2.0 * t * tf.nn.relu(margin - zt)
        if threshold is None:
            return grad
        return tf.where(zt > margin - _sqrt(threshold), grad, tf.zeros([], z.dtype))

    def get_config(self):
        return {"margin": _config_value(self.margin), "threshold": _config_value(self.threshold)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Sigmoid(_Scaled):
    """L(z, t) = yscale sigmoid(-xscale z t); with w = |g|: grad_x = g yscale xscale s (1 - s), s = sigmoid(xscale x).

    ``sigmoid`` is xscale 2, ``sigmoid2_2`` xscale 2 and yscale 2, ``sigmoid3_2``
    xscale 3 and yscale 2, as in the reference.
    """

    def __init__(self, xscale=2.0, yscale=1.0):
        super().__init__(xscale, yscale)

    def __call__(self, z, t):
        xscale, yscale = self._scales(z.dtype)
        return yscale * tf.sigmoid(-xscale * z * t)

    def derivative(self, z, t):
        xscale, yscale = self._scales(z.dtype)
        s = tf.sigmoid(-xscale * z * t)
        return -t * (xscale * yscale) * s * (1.0 - s)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if not scale_by_grad:
            return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)
        xscale, yscale = self._scales(x.dtype)
        s = tf.sigmoid(xscale * x)
        return g * ((xscale * yscale) * s * (1.0 - s))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LogSigmoid(TargetLoss):
    """L(z, t) = log sigmoid(-xscale z t) (xscale 2), the reference's log-sigmoid loss.

    dL/dz = -t xscale sigmoid(xscale z t); with w = |g|: grad_x = g xscale sigmoid(xscale t x).
    Unlike the others it does not saturate where the target is met (the
    gradient tends to xscale there) and vanishes where it is badly missed.
    The reference has the loss only.
    """

    def __init__(self, xscale=2.0):
        self.xscale = _number_or_schedule(xscale, "xscale")

    def __call__(self, z, t):
        return -tf.math.softplus(self._value(self.xscale, z.dtype) * z * t)

    def derivative(self, z, t):
        xscale = self._value(self.xscale, z.dtype)
        return -t * xscale * tf.sigmoid(xscale * z * t)

    def get_config(self):
        return {"xscale": _config_value(self.xscale)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ApproxSign(TargetLoss):
    """Bi-Real Net's ApproxSign (Liu et al., 2018): L(z, t) = 1 - F(z t), F(v) = sign(v) (1 - max(1 - |v|, 0)^2).

    F'(v) = 2 - 2|v| for |v| <= 1, else 0; dL/dz = -t F'(z t); with w = |g|:
    grad_x = g 2 max(1 - |x|, 0).
    """

    def __call__(self, z, t):
        v = z * t  # F(v) = clip(v, -1, 1) (2 - min(|v|, 1)), differentiable through 0
        return 1.0 - tf.clip_by_value(v, -1.0, 1.0) * (2.0 - tf.minimum(tf.abs(v), 1.0))

    def derivative(self, z, t):
        return -t * 2.0 * tf.nn.relu(1.0 - tf.abs(z * t))

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if not scale_by_grad:
            return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)
        return g * (2.0 * tf.nn.relu(1.0 - tf.abs(x)))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SwishSign(TargetLoss):
    """BNN+'s SwishSign (Darabi et al., 2018): L(z, t) = 1 - F(z t), F(v) = 2 s(b v) (1 + b v (1 - s(b v))) - 1.

    F'(v) = b (2 - b v tanh(b v / 2)) / (1 + cosh(b v)) = b (1 - h tanh h) sech^2 h, h = b v / 2,
    computed from e = exp(-2|h|) (tanh|h| = (1 - e) / (1 + e), sech^2 h = 4 e / (1 + e)^2)
    without overflow or the cancellation of 1 - tanh^2; dL/dz = -t F'(z t); with
    w = |g|: grad_x = g F'(x). ``beta`` b is 5 by default, as in larq.
    """

    def __init__(self, beta=5.0):
        self.beta = _number_or_schedule(beta, "beta")

    def __call__(self, z, t):
        bv = self._value(self.beta, z.dtype) * z * t
        s = tf.sigmoid(bv)
        return 2.0 - 2.0 * s * (1.0 + bv * (1.0 - s))

    def _slope(self, v):
        """F'(v)."""
        beta = self._value(self.beta, v.dtype)
        h = tf.abs((beta / 2.0) * v)
        e = tf.exp(-2.0 * h)
        return (beta * (1.0 - h * (1.0 - e) / (1.0 + e))) * (4.0 * e / tf.square(1.0 + e))

    def derivative(self, z, t):
        return -t * self._slope(z * t)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        if not scale_by_grad:
            return super().input_gradient(x, g, scale_by_grad=False, batch_size=batch_size)
        return g * self._slope(x)

    def get_config(self):
        return {"beta": _config_value(self.beta)}


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
    """SSTE: grad_x = g * 1[|x| <= limit] (limit 1; ``sste_v2``: sqrt(3), the reference's second version).

    The same window for both output ranges of a step (the reference's {0, 1}
    step passes 1[0 <= x <= limit] instead).
    """

    def __init__(self, limit=1.0):
        self.limit = _number_or_schedule(limit, "limit")

    def in_window(self, x):
        return tf.abs(x) <= self._value(self.limit, x.dtype)

    def get_config(self):
        return {"limit": _config_value(self.limit)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Ramp(DirectEstimator):
    """The reference's ramp: grad_x = g r(x), r(x) = clip(2 - |x|, 0, 1) (1 on [-1, 1], 0 beyond +-2).

    A {0, 1} step uses the reference's {0, 1} form (``zero_one``, chosen by the step itself):
    r(x) = clip(1.5 - |x - 1/2|, 0, 1), 1 on [0, 1], 0 outside (-1, 2).
    A staircase uses the first on its centred unit; the {0, 1} form there is an error.
    """

    def __init__(self, zero_one=False):
        self.zero_one = bool(zero_one)

    def _ramp(self, x):
        if self.zero_one:
            return tf.clip_by_value(1.5 - tf.abs(x - 0.5), 0.0, 1.0)
        return tf.clip_by_value(2.0 - tf.abs(x), 0.0, 1.0)

    def in_window(self, x):
        return self._ramp(x) > 0

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        return g * self._ramp(x)

    def for_output_range(self, zero_one):
        if self.zero_one and not zero_one:
            raise ValueError(
                "Ramp(zero_one=True) is the ramp of a {0, 1} step; a {-1, +1} step or a staircase "
                "takes Ramp() ('ramp'), which becomes the {0, 1} form on a zero_one step by itself."
            )
        return Ramp(zero_one=zero_one)

    def get_config(self):
        return {"zero_one": self.zero_one}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class STE(DirectEstimator):
    """Straight-through estimator: grad_x = g (every unit is in the window)."""

    def in_window(self, x):
        return tf.ones_like(x, dtype=tf.bool)

    def input_gradient(self, x, g, *, scale_by_grad, batch_size):
        return g


_BUILTINS = {  # name: the factory of its default instance
    "soft_hinge": SoftHinge,
    "truncated_hinge": TruncatedHinge,
    "linear": Linear,
    "sigmoid": Sigmoid,
    "lecun_tanh": LeCunTanh,
    "sste": SaturatedSTE,
    "ste": STE,
    "hinge": Hinge,
    "perceptron": functools.partial(Hinge, margin=0.0),
    "adaline": Adaline,
    "ramp": Ramp,
    "log_hinge": LogHinge,
    "truncated_log_hinge": functools.partial(LogHinge, threshold=2.0),
    "log_loss": LogLoss,
    "truncated_log_loss": functools.partial(LogLoss, threshold=2.0),
    "square_loss": SquareLoss,
    "truncated_square_loss": functools.partial(SquareLoss, threshold=4.0),
    "log_sigmoid": LogSigmoid,
    "sste_v2": functools.partial(SaturatedSTE, limit=math.sqrt(3.0)),
    "soft_hinge2": functools.partial(SoftHinge, xscale=2.0),
    "sigmoid2_2": functools.partial(Sigmoid, xscale=2.0, yscale=2.0),
    "sigmoid3_2": functools.partial(Sigmoid, xscale=3.0, yscale=2.0),
    "approx_sign": ApproxSign,
    "swish_sign": SwishSign,
    "ede": EDE,
}


def names():
    """The names of the built-in target losses, as accepted by [`get`][keras_ftprop.target_losses.get]."""
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
    for name, factory in _BUILTINS.items():
        if loss == factory():
            return name
    return keras.saving.serialize_keras_object(loss)
