"""Schedules of target-loss parameters over training steps.

Any numeric parameter of a [target_losses][keras_ftprop.target_losses] class accepts a
``keras.optimizers.schedules.LearningRateSchedule`` (Keras's own, e.g.
``PolynomialDecay`` or ``CosineDecay``, or [Geometric][keras_ftprop.schedules.Geometric] below) in place
of a number; the loss then computes the parameter from the training step it is
bound to (see [keras_ftprop.callbacks.TargetLossSchedule][]).
"""

import keras
import tensorflow as tf

__all__ = ["Geometric"]


@keras.saving.register_keras_serializable(package="keras_ftprop")
class Geometric(keras.optimizers.schedules.LearningRateSchedule):
    """v(step) = start (end / start)^p,  p = min(step / steps, 1); held at ``end`` after ``steps``.

    Equivalently start 10^(p log10(end / start)), the annealing of IR-Net's
    error decay estimator (``target_losses.EDE``).
    """

    def __init__(self, start, end, steps):
        start, end = float(start), float(end)
        if not (start > 0 and end > 0):
            raise ValueError(f"Geometric needs start > 0 and end > 0; got start={start}, end={end}.")
        if not _positive_integer(steps):
            raise ValueError(f"Geometric needs steps, an integer >= 1; got {steps!r}.")
        self.start, self.end, self.steps = start, end, int(steps)

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / float(self.steps), 1.0)
        return self.start * tf.pow(self.end / self.start, progress)

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


def _positive_integer(value):
    try:
        return not isinstance(value, bool) and float(value).is_integer() and value >= 1
    except (TypeError, ValueError):
        return False
