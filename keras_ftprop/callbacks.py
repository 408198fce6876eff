"""Keras callbacks for training hard-threshold networks."""

import importlib.util
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop import target_losses
from keras_ftprop.layers import BatchNormThreshold, HardThreshold, Staircase, leaf_layers

__all__ = ["TargetDiagnostics", "TargetLossSchedule", "bind_target_losses"]


class TargetDiagnostics(keras.callbacks.Callback):
    """Logs what the targets of every HardThreshold/Staircase layer do, every ``every`` steps.

    Steps are counted by the optimizer's iterations (a resumed ``fit`` keeps
    the schedule); the first step of each ``fit`` is logged too, so that every
    epoch's logs hold statistics of that training run.

    A threshold inside a ``BatchNormThreshold`` is logged under its own name.

    Per layer, from the training step's backward pass (summed over replicas):

        target_none       = #[g == 0] / #units
        target_satisfied  = #[sign(u) == t] / #[t != 0]
        target_loss       = sum L(u, t) / #[t != 0]      (target losses, not SSTE/STE)
        target_active     = #[grad_u != 0] / #[t != 0]

    and, when ``probe_data`` (a batch of inputs) is given, on that fixed batch:

        flipped           = fraction of outputs that changed since the previous logged step
        pre-activation histograms

    Values go to TensorBoard under ``log_dir/diagnostics`` (if ``log_dir``), to
    ``self.history`` (a list of ``(step, {name: value})``) and, latest values, to
    the epoch ``logs`` as ``"<layer>/<statistic>"``.

    The statistics are summed by the layers' own backward pass into their
    [`TargetStatistics`][keras_ftprop.diagnostics.TargetStatistics] while its ``recording``
    variable is on: the callback turns it on before a logged step and reads the
    sums at the start of the next one; the training step is the model's own,
    traced once (see [`keras_ftprop.diagnostics`][keras_ftprop.diagnostics]). With
    ``steps_per_execution > 1`` a logged step sums over its whole execution.
    """

    def __init__(self, every=100, log_dir=None, probe_data=None):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every must be a positive number of steps; got {every!r}.")
        if log_dir and importlib.util.find_spec("tensorboard") is None:
            raise ImportError("TargetDiagnostics(log_dir=...) writes TensorBoard summaries, which need the "
                              "tensorboard package: pip install tensorboard, or pass log_dir=None")
        self.every = int(every)
        self.log_dir = log_dir
        self.probe_data = probe_data
        self.history = []
        self._statistics = {}
        self._writer = None
        self._previous_outputs = None
        self._latest = {}
        self._step = 0
        self._recording = False
        self._pending = None  # the logged step whose statistics are still to be read
        self._first = False  # the next step is a fit's first

    def set_model(self, model):
        super().set_model(model)
        # (host, threshold): the layer the model calls and the threshold whose targets are logged.
        sites = [(layer, layer.activation if isinstance(layer, BatchNormThreshold) else layer)
                 for layer in leaf_layers(model) if isinstance(layer, (HardThreshold, Staircase, BatchNormThreshold))]
        self._thresholds = [threshold for _, threshold in sites]
        self._probe_model = None
        if self.probe_data is not None and sites:
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
            self._probe_model = keras.Model(inputs, [[host.input] for host, _ in sites])

            @tf.function
            def probe_fn(data):
                """Pre-activations and outputs of every threshold on the probe batch."""
                host_inputs = [x for (x,) in self._probe_model(data, training=False)]
                pre_activations = [host.pre_activation(x) if host is not threshold else x
                                   for (host, threshold), x in zip(sites, host_inputs)]
                return pre_activations, [host(x) for (host, _), x in zip(sites, host_inputs)]

            self._probe_fn = probe_fn

    def _record(self, on):
        """Statistics on or off in the layers' backward pass, from the next step."""
        if on != self._recording:
            for statistics in self._statistics.values():
                statistics.record(on)
            self._recording = on

    def on_train_begin(self, logs=None):
        self._step = int(self.model.optimizer.iterations.numpy())
        self._first = True
        # The layers are built by now (fit builds the model before calling back).
        self._statistics = {layer.name: layer.target_statistics for layer in self._thresholds}
        self._recording = True
        self._record(False)
        for statistics in self._statistics.values():
            statistics.reset()
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "diagnostics"))

    # No on_train_batch_end: overriding it would make Keras synchronise on every step's logs.
    # A logged step is read at the start of the next one (or at the end of the epoch).
    def on_train_batch_begin(self, batch, logs=None):
        self._flush()
        record = (self._step % self.every == 0 or self._first) and bool(self._statistics)
        self._first = False
        self._record(record)
        if record:
            self._pending = self._step
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        self._flush()
        if logs is not None:
            logs.update(self._latest)

    def on_train_end(self, logs=None):
        self._flush()
        self._record(False)
        if self._writer is not None:
            self._writer.close()

    def _flush(self):
        if self._pending is not None:
            self._log(self._pending)
            self._pending = None

    def _log(self, step):
        values = {}
        for name, statistics in self._statistics.items():
            sums = statistics.read()
            statistics.reset()
            targeted = max(sums["targeted"], 1.0)
            values[f"{name}/target_none"] = sums["none"] / max(sums["units"], 1.0)
            values[f"{name}/target_satisfied"] = sums["satisfied"] / targeted
            values[f"{name}/target_active"] = sums["active"] / targeted
            if statistics.has_loss:
                values[f"{name}/target_loss"] = sums["loss"] / targeted
        histograms = {}
        if self._probe_model is not None:
            pre_activations, outputs = self._probe_fn(self.probe_data)
            outputs = [np.asarray(y) for y in outputs]
            for name, x in zip(self._statistics, pre_activations):
                histograms[f"{name}/pre_activation"] = x
            if self._previous_outputs is not None:
                for name, new, old in zip(self._statistics, outputs, self._previous_outputs):
                    values[f"{name}/flipped"] = float(np.mean(new != old))
            self._previous_outputs = outputs
        self.history.append((step, values))
        self._latest = values
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(key, value)
                for key, value in histograms.items():
                    tf.summary.histogram(key, value)


def bind_target_losses(model, step, total_steps=None):
    """Binds the scheduled target losses of ``model``'s layers to ``step``; returns ``{layer name: loss}``.

    ``step`` is an integer scalar variable (``optimizer.iterations``) or tensor;
    ``total_steps`` the length of training, for losses annealed over it (``EDE``).
    """
    bound = {}
    for layer in leaf_layers(model):
        loss = getattr(layer, "target_loss", None)
        if isinstance(loss, target_losses.TargetLoss) and loss.scheduled:
            bound[layer.name] = loss.bind(step, total_steps=total_steps)
    return bound


class TargetLossSchedule(keras.callbacks.Callback):
    """Drives scheduled target-loss parameters by the optimizer's step count.

    At the start of ``fit`` it binds every scheduled target loss of the model to
    ``model.optimizer.iterations``; the training step computes the parameters
    from that variable, so they change every step without retracing or
    recompiling (XLA, ``tf.distribute`` alike), and since the iteration count
    is part of the optimizer's state, a run restored from a checkpoint goes on
    with the schedule where it stopped. ``total_steps`` (default: epochs x
    steps per epoch of the ``fit``) is the length ``EDE`` anneals over.

    At the end of every epoch the values at the current step go to the
    epoch ``logs`` as ``target_loss/<parameter>`` (``"<layer>/target_loss/<parameter>"``
    when the layers' losses differ), e.g. ``target_loss/t`` for ``EDE``.
    Put it before the loggers (``CSVLogger``, ``TensorBoard``) to have them record these.
    After ``fit`` the losses hold the values of the last step (so that ``model.export`` works).
    """

    def __init__(self, total_steps=None):
        super().__init__()
        self.total_steps = total_steps
        self.bound = {}

    def on_train_begin(self, logs=None):
        total = self.total_steps
        if total is None and self.params:
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            total = epochs * steps if epochs and steps else None
        self.bound = bind_target_losses(self.model, self.model.optimizer.iterations, total_steps=total)

    def on_train_end(self, logs=None):
        # Hold the final values: the optimizer's variable is not part of the model, so a
        # model.export (which saves the gradient functions) could not capture it.
        step = int(self.model.optimizer.iterations.numpy())
        for loss in self.bound.values():
            loss.bind(step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.bound:
            return
        losses = list(self.bound.values())
        shared = all(loss == losses[0] for loss in losses)
        for name, loss in self.bound.items():
            prefix = "target_loss" if shared else f"{name}/target_loss"
            for parameter, value in loss.scheduled_values().items():
                logs[f"{prefix}/{parameter}"] = float(value)
            if shared:
                break
