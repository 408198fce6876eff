"""Target statistics gathered in the backward pass of hard-threshold layers.

Every ``HardThreshold``/``Staircase`` layer owns a [`TargetStatistics`][keras_ftprop.diagnostics.TargetStatistics]
(created in ``build``). In training (``training=True``) the layer's output
passes through [`TargetStatistics.observe`][keras_ftprop.diagnostics.TargetStatistics.observe], an identity
whose backward sees the upstream gradient ``g`` and, while the ``recording`` variable is on,
adds to per-replica sums (``tf.VariableSynchronization.ON_READ``, aggregated
by ``SUM``, so a read under ``tf.distribute`` totals all replicas). With the
layer's centred unit ``u`` (x for a step, 2x' - 1 for a staircase) and
``t = sign(-g)``:

    none       = #[g == 0]                          units without a target
    satisfied  = #[t != 0 and sign(u) == t]          output already agrees (sign(0) = -1)
    loss       = sum over t != 0 of L(u, t)          (target losses only, not SSTE/STE)
    active     = #[t != 0 and grad_u != 0]          inside the loss's active region
    units      = #units,  targeted = #[t != 0]

The sums sit behind ``tf.cond(recording, ...)`` in the compiled training step
itself: the step is traced once, with or without a
[`TargetDiagnostics`][keras_ftprop.callbacks.TargetDiagnostics], and while ``recording`` is
off the backward adds one branch that does nothing. Inference graphs (and so
``model.export``) do not contain it. The variables are neither weights of the
layer nor part of its checkpoints.
"""

import tensorflow as tf

from keras_ftprop import target_losses

__all__ = ["TargetStatistics", "STATISTICS"]

STATISTICS = ("units", "targeted", "none", "satisfied", "active", "loss")


class TargetStatistics:
    """Sums of target statistics of one threshold layer, added to by its backward pass while recording."""

    def __init__(self, layer):
        self.layer = layer
        with tf.init_scope():  # outside any function being traced; under the current distribution strategy
            self.recording = tf.Variable(
                False,
                trainable=False,
                name=f"{layer.name}_recording",
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.sums = tf.Variable(
                tf.zeros([len(STATISTICS)]),
                trainable=False,
                name=f"{layer.name}_target_statistics",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM,
            )

    @property
    def has_loss(self):
        """Whether the layer's target loss defines L (direct estimators do not)."""
        return not isinstance(self.layer.target_loss, target_losses.DirectEstimator)

    def record(self, on):
        """Turns the accumulation in the backward pass on or off (takes effect from the next step)."""
        self.recording.assign(bool(on))

    def reset(self):
        self.sums.assign(tf.zeros_like(self.sums))

    def read(self):
        """Totals over replicas since the last reset, as Python floats."""
        return dict(zip(STATISTICS, (float(v) for v in self.sums.read_value().numpy())))

    def observe(self, inputs, outputs):
        """Identity on ``outputs``; while recording, its backward adds the statistics of the layer's unit
        (``layer.target_unit(inputs)``) against the gradient of ``outputs`` to the sums.

        ``inputs``: the layer's input, or a zero-argument function computing it, called only while
        recording (inside the branch); a fused layer recomputes its input so, and an XLA-compiled step
        then does not write the input out on every step to hand it to the branch.
        """

        @tf.custom_gradient
        def _observe(y):
            def grad(g):
                # A side effect, kept by automatic control dependencies; nothing reads it in the step.
                tf.cond(self.recording, lambda: self._accumulate(inputs() if callable(inputs) else inputs, g),
                        lambda: None)
                return g

            return tf.identity(y), grad

        return _observe(outputs)

    def _accumulate(self, inputs, g):
        layer = self.layer
        unit = tf.cast(layer.target_unit(inputs), tf.float32)
        g = tf.cast(g, tf.float32)
        t = -tf.sign(g)
        targeted = tf.not_equal(t, 0.0)
        sign = tf.where(unit > 0, 1.0, -1.0)
        loss = layer.target_loss.for_output_range(getattr(layer, "zero_one", False))
        grad_unit = loss.input_gradient(
            unit, g, scale_by_grad=layer.scale_by_grad, batch_size=tf.shape(g)[0] if g.shape.rank else 1
        )
        count = lambda mask: tf.reduce_sum(tf.cast(mask, tf.float32))  # noqa: E731
        if self.has_loss:
            loss_sum = tf.reduce_sum(tf.where(targeted, tf.cast(layer.target_loss(unit, t), tf.float32), 0.0))
        else:
            loss_sum = tf.constant(0.0)
        updates = {
            "units": tf.cast(tf.size(g), tf.float32),
            "targeted": count(targeted),
            "none": count(tf.logical_not(targeted)),
            "satisfied": count(tf.logical_and(targeted, tf.equal(sign, t))),
            "active": count(tf.logical_and(targeted, tf.not_equal(grad_unit, 0.0))),
            "loss": loss_sum,
        }
        self.sums.assign_add(tf.stack([updates[name] for name in STATISTICS]))
