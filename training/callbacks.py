"""Keras callbacks of ``train.py``: resumable training state, best model, NaN stop.

``fit_callbacks`` is the list ``train.py`` gives ``model.fit``, in order.

``TrainingCheckpoint`` keeps everything a killed run needs to continue (model
weights and batch-norm statistics, optimiser slots and iteration count, the
number of finished epochs and of finished batches of the current epoch) in
``tf.train`` checkpoints written through a ``tf.train.CheckpointManager``.
A checkpoint becomes visible only once completely written (the ``checkpoint``
index file is replaced atomically after the data files), and the previous
one is kept, so a SIGKILL at any moment leaves the last complete state
readable. It saves at the end of every epoch and, with ``every_steps``, every
that many batches within an epoch.

Keras's own ``BackupAndRestore`` was not used because in Keras 3 it writes its
weight file in place (``double_checkpoint=True`` keeps a copy of the previous
one, but a kill between the weights and its metadata file leaves the two
out of step), does not save at epoch end when saving every N batches,
restarts an interrupted epoch from its first batch, and lets every worker of
a multi-worker run write to the same file. ``ModelCheckpoint(save_best_only=True,
initial_value_threshold=...)`` was not used for ``best.keras`` because it
too writes in place and does not record which epoch it kept (``best.json``).
"""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop.callbacks import TargetDiagnostics, TargetLossSchedule
from training import files, recipes


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch, batch, loss):
        self.epoch, self.batch, self.loss = epoch, batch, loss
        self.last_saved = None  # (epochs_done, batches_done) of the last good checkpoint
        self.checkpoint_dir = None
        super().__init__(
            f"NaN/inf loss: the training loss became {loss} at epoch {epoch + 1}, "
            f"batch {batch + 1}"
        )


class StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN(raise_error=True)`` whose error is a ``NonFiniteLossError`` saying where.

    Raising (rather than setting ``stop_training``) skips every later
    ``on_batch_end``/``on_epoch_end``, so nothing saves the broken weights
    and no NaN row reaches the metrics file. Put it first in the list.
    Keras's check, renamed: its bare RuntimeError tells neither the epoch nor
    ``train.py`` that this, and not another RuntimeError, ended the run.
    """

    def __init__(self):
        super().__init__(raise_error=True)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, logs)
        except RuntimeError:
            raise NonFiniteLossError(self._epoch, batch, float(np.asarray(logs["loss"]))) from None


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves and restores the whole training state (see the module docstring).

    Args:
        read_dir: where to look for the checkpoint to resume from (the chief's).
        write_dir: where this process writes (differs on non-chief workers).
        every_steps: also save every this many batches (0: only at epoch ends).
        batch_offset: batches of the first epoch already done before this
            ``fit`` (a resumed mid-epoch state), to count positions right.
        max_to_keep: complete checkpoints kept on disk.
    """

    def __init__(self, read_dir, write_dir, every_steps=0, max_to_keep=2):
        super().__init__()
        self.read_dir = read_dir
        self.write_dir = write_dir
        self.every_steps = int(every_steps or 0)
        self.max_to_keep = max_to_keep
        self.batch_offset = 0
        self._epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._batches_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        # The running sums of the epoch's metrics (loss, top1, ...) at a mid-epoch save, so that
        # the resumed epoch's row averages all its batches; empty at an epoch end.
        self._metric_state = tf.Variable(tf.zeros([0], tf.float64), shape=tf.TensorShape(None),
                                         trainable=False)
        self._restore_metrics = False
        self._checkpoint = None
        self._manager = None
        self._epoch = 0
        self.last_saved = None  # (epochs_done, batches_done) of the last save

    def restore(self, model):
        """Bind to ``model`` and restore the latest state, if any.

        Call inside the strategy scope, after ``compile``. Returns
        ``(epochs_done, batches_done)``, ``(0, 0)`` for a fresh run.
        Raises ValueError when the checkpoint does not fit the model.
        """
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        state = dict(model=model, optimizer=optimizer, epochs_done=self._epochs_done,
                     batches_done=self._batches_done)
        self._checkpoint = tf.train.Checkpoint(**state, metric_state=self._metric_state)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self.write_dir, max_to_keep=self.max_to_keep
        )
        path = tf.train.latest_checkpoint(self.read_dir)
        if path is None:
            return 0, 0
        # Checkpoints of earlier versions have no metric sums: restore them without.
        has_metrics = any(name.startswith("metric_state/") for name, _ in tf.train.list_variables(path))
        restorer = self._checkpoint if has_metrics else tf.train.Checkpoint(**state)
        try:
            restorer.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"the checkpoint {path} does not fit this model ({first}); "
                "resume with the settings it was written with, or use another --model_dir"
            ) from None
        state = int(self._epochs_done.numpy()), int(self._batches_done.numpy())
        self.last_saved = state
        self._restore_metrics = state[1] > 0
        return state

    def _metric_variables(self):
        """The variables of the model's running-mean metrics (the loss, accuracies: Keras ``Mean``s,
        sums over the epoch's batches). None in a distributed run, whose per-replica sums cannot
        be split back."""
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            return []
        means = [m for metric in self.model.metrics for m in getattr(metric, "metrics", [metric])
                 if isinstance(m, keras.metrics.Mean)]
        return [v for metric in means for v in metric.variables]

    def save(self, epochs_done, batches_done):
        self._epochs_done.assign(epochs_done)
        self._batches_done.assign(batches_done)
        variables = self._metric_variables() if batches_done else []
        self._metric_state.assign(
            tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in variables], 0) if variables
            else tf.zeros([0], tf.float64))
        self._manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))
        self.last_saved = (epochs_done, batches_done)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _add_saved_metric_sums(self):
        """Adds the sums saved mid-epoch to the metrics, which then hold the resumed epoch's first batch."""
        variables = self._metric_variables()
        state = self._metric_state.numpy()
        if not variables or state.size != sum(int(np.prod(v.shape)) for v in variables):
            return  # none saved (a distributed run): the row averages the batches after the resume
        start = 0
        for v in variables:
            size = int(np.prod(v.shape))
            v.assign_add(np.reshape(state[start:start + size], v.shape).astype(v.dtype))
            start += size

    def on_train_batch_end(self, batch, logs=None):
        if self._restore_metrics:  # metrics exist only once the first step has run
            self._restore_metrics = False
            self._add_saved_metric_sums()
        if not self.every_steps:
            return
        done = self.batch_offset + batch + 1
        steps = self.params.get("steps") if self.params else None
        last = steps is not None and batch + 1 >= steps
        if done % self.every_steps == 0 and not last:
            self.save(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        self.save(epoch + 1, 0)


class BestModelSaver(keras.callbacks.Callback):
    """Keeps ``best.keras`` (and ``best.json``) for the best value of ``monitor``.

    Files are written to a temporary name and renamed, so a kill never leaves
    a half-written best model. ``best`` (the value to beat) is read back from
    ``best.json`` in ``read_dir`` when a run resumes.
    """

    def __init__(self, read_dir, write_dir, monitor="val_top1", extra=("val_top5",)):
        super().__init__()
        self.monitor = monitor
        self.extra = tuple(extra)
        self.write_dir = write_dir
        self.path = os.path.join(write_dir, "best.keras")
        self.info_path = os.path.join(write_dir, "best.json")
        self.best = -math.inf
        self.best_epoch = None  # 1-based
        self.saved_this_run = False
        info = read_best_info(read_dir)
        if info is not None and monitor in info:
            self.best = float(info[monitor])
            self.best_epoch = int(info["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not np.isfinite(value) or value <= self.best:
            return
        self.best, self.best_epoch = float(value), epoch + 1
        files.atomic_save_model(self.model, self.path)
        self.saved_this_run = True
        info = {"epoch": epoch + 1, self.monitor: float(value)}
        for key in self.extra:
            if key in logs:
                info[key] = float(logs[key])
        files.atomic_write_text(self.info_path, json.dumps(info, indent=2) + "\n")


def read_best_info(directory):
    """The ``best.json`` of ``directory`` as a dict, or None."""
    path = os.path.join(directory, "best.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class MetricsLogger(keras.callbacks.CSVLogger):
    """Keras's ``CSVLogger`` appending to a run's ``metrics.csv`` under that file's columns.

    CSVLogger takes its columns from the first epoch it logs in a process, so
    a resumed run whose first epoch logs other keys (a partial epoch without a
    diagnostics step, say) would write its values under the wrong header.
    Here the columns are the file's: a key the epoch lacks is written ``NA``,
    and a key the file lacks widens it (earlier rows ``NA`` there).
    """

    def __init__(self, filename):
        super().__init__(filename, append=True)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        header = files.metrics_header(self.filename)
        if header:
            self.keys = header[1:]  # after "epoch"

    def on_epoch_end(self, epoch, logs=None):
        new = sorted(set(logs or {}) - set(self.keys or ()))
        if self.keys is not None and new:
            self.csv_file.close()
            files.widen_metrics(self.filename, new)
            self.csv_file = open(self.filename, "a", newline="")
            self.writer, self.append_header = None, False
            self.keys = self.keys + new
        super().on_epoch_end(epoch, logs)


def fit_callbacks(recipe, steps_per_epoch, checkpoint, best, metrics_path, *, log_dir=None,
                  diagnostics=0, probe_data=None):
    """``train.py``'s ``model.fit`` callbacks, in the order they must run.

    The NaN stop first (it raises before anything saves); the target-loss
    schedule over the run's ``recipe.epochs * steps_per_epoch`` steps (it
    follows the optimizer's step count, which the checkpoint restores); the
    learning rate ``recipes.learning_rate_at(recipe, epoch)``; ``TargetDiagnostics``
    every ``diagnostics`` steps (if > 0) before the CSV row, which then records
    its latest statistics; the CSV logger (``MetricsLogger``); TensorBoard (if ``log_dir``); the
    checkpoint after the CSV row (a resumed run trims the rows it redoes);
    the best model last.
    """
    total_steps = recipe.epochs * steps_per_epoch if steps_per_epoch else None
    out = [
        StopOnNonFiniteLoss(),
        TargetLossSchedule(total_steps=total_steps),
        keras.callbacks.LearningRateScheduler(lambda epoch: recipes.learning_rate_at(recipe, epoch)),
    ]
    if diagnostics:
        out.append(TargetDiagnostics(every=diagnostics, probe_data=probe_data, log_dir=log_dir))
    out.append(MetricsLogger(metrics_path))
    if log_dir is not None:
        out.append(keras.callbacks.TensorBoard(log_dir))
    return out + [checkpoint, best]
