"""Target statistics gathered in the backward pass of hard-threshold layers.

A :class:`TargetProbe` is an identity on the layer's output whose backward
sees the upstream gradient ``g`` and, on the steps it is asked to record,
adds to per-replica sums (``tf.VariableSynchronization.ON_READ``, aggregated
by ``SUM``, so a read under ``tf.distribute`` totals all replicas). With the
layer's centred unit ``u`` (x for a step, 2x' - 1 for a staircase) and
``t = sign(-g)``:

    none       = #[g == 0]                          units without a target
    satisfied  = #[t != 0 and sign(u) == t]          output already agrees (sign(0) = -1)
    loss       = sum over t != 0 of L(u, t)          (target losses only, not SSTE/STE)
    active     = #[t != 0 and grad_u != 0]          inside the loss's active region
    units      = #units,  targeted = #[t != 0]

A layer without a probe adds nothing to the graph: the callback keeps two
compiled training steps, one traced with the probes attached, used on the
logged steps only, and the plain one.
"""

import tensorflow as tf

from keras_ftprop import target_losses

__all__ = ["TargetProbe", "STATISTICS"]

STATISTICS = ("units", "targeted", "none", "satisfied", "active", "loss")


class TargetProbe:
    """Per-layer sums of target statistics; created under the model's distribution strategy."""

    def __init__(self, layer):
        self.layer = layer
        on_read = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )
        self.sums = {name: tf.Variable(0.0, name=f"{layer.name}_{name}", **on_read) for name in STATISTICS}
        loss = layer.target_loss
        self.has_loss = not isinstance(loss, target_losses.DirectEstimator)

    def reset(self):
        for variable in self.sums.values():
            variable.assign(0.0)

    def read(self):
        """Totals over replicas since the last reset, as Python floats."""
        return {name: float(variable.read_value()) for name, variable in self.sums.items()}

    def __call__(self, unit, y):
        """Identity on ``y``; adds the statistics of ``unit`` against the gradient of ``y`` to the sums."""

        @tf.custom_gradient
        def _observe(y):
            def grad(g):
                # The sums are side effects, kept by automatic control dependencies.
                self._accumulate(unit, g)
                return g

            return tf.identity(y), grad

        return _observe(y)

    def _accumulate(self, unit, g):
        unit = tf.cast(unit, tf.float32)
        g = tf.cast(g, tf.float32)
        t = -tf.sign(g)
        targeted = tf.not_equal(t, 0.0)
        sign = tf.where(unit > 0, 1.0, -1.0)
        layer = self.layer
        loss = layer.target_loss.for_output_range(getattr(layer, "zero_one", False))
        grad_unit = loss.input_gradient(
            unit, g, scale_by_grad=layer.scale_by_grad, batch_size=tf.shape(g)[0] if g.shape.rank else 1
        )
        count = lambda mask: tf.reduce_sum(tf.cast(mask, tf.float32))  # noqa: E731
        updates = {
            "units": tf.cast(tf.size(g), tf.float32),
            "targeted": count(targeted),
            "none": count(tf.logical_not(targeted)),
            "satisfied": count(tf.logical_and(targeted, tf.equal(sign, t))),
            "active": count(tf.logical_and(targeted, tf.not_equal(grad_unit, 0.0))),
        }
        if self.has_loss:
            per_unit = layer.target_loss(unit, t)
            updates["loss"] = tf.reduce_sum(tf.where(targeted, per_unit, 0.0))
        for name, value in updates.items():
            self.sums[name].assign_add(value)
