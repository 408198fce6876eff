"""Keras callbacks of ``train.py``: resumable training state, best model, NaN stop.

``fit_callbacks`` is the list ``train.py`` gives ``model.fit``, in order.

``TrainingCheckpoint`` keeps everything a killed run needs to continue (model
weights and batch-norm statistics, optimiser slots and iteration count, the
number of finished epochs and of finished batches of the current epoch) in
``tf.train`` checkpoints written through a ``tf.train.CheckpointManager``.
A checkpoint becomes visible only once completely written (the ``checkpoint``
index file is replaced atomically after the data files), and the previous
one is deleted only after that, so a SIGKILL at any moment leaves the last
complete state readable while the directory holds one checkpoint at rest. It
saves at the end of every epoch and, with ``every_steps``, every that many
batches within an epoch. Once the run has written its final model,
``finish`` replaces the last checkpoint by one without the weights
(``final-<step>``: optimiser slots and counters), which a rerun with a larger
``--epochs`` restores together with the final model's weights.

Keras's own ``BackupAndRestore`` was not used because in Keras 3 it writes its
weight file in place (``double_checkpoint=True`` keeps a copy of the previous
one, but a kill between the weights and its metadata file leaves the two
out of step), does not save at epoch end when saving every N batches,
restarts an interrupted epoch from its first batch, and lets every worker of
a multi-worker run write to the same file. ``ModelCheckpoint(save_best_only=True,
initial_value_threshold=...)`` was not used for ``best.keras`` because it
too writes in place and does not record which epoch it kept (``best.json``).

``BestModelSaver`` writes ``best.keras`` without optimizer state. Once the run
is over, a best epoch that is the last one is stored once: ``best.keras`` goes
and ``best.json`` says ``"file": "final.keras"``.
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

BEST_MODEL = "best.keras"
_FINISHED = "final"  # the name of ``TrainingCheckpoint.finish``'s checkpoints: final-<step>
_OPTIMIZER_STATE = "optimizer_state"


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
        final_model: the ``.keras`` file whose weights a finished run's checkpoint
            (``finish``) leaves out: restored from there (the chief's).
        max_to_keep: complete checkpoints kept on disk at rest.

    ``batch_offset`` (set before a ``fit``): batches of its first epoch already
    done (a resumed mid-epoch state), to count positions right.
    """

    def __init__(self, read_dir, write_dir, every_steps=0, final_model=None, max_to_keep=1):
        super().__init__()
        self.read_dir = read_dir
        self.write_dir = write_dir
        self.every_steps = int(every_steps or 0)
        self.final_model = final_model
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
        self._optimizer = optimizer
        state = dict(model=model, optimizer=optimizer, epochs_done=self._epochs_done,
                     batches_done=self._batches_done)
        self._checkpoint = tf.train.Checkpoint(**state, metric_state=self._metric_state)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self.write_dir, max_to_keep=self.max_to_keep
        )
        path = tf.train.latest_checkpoint(self.read_dir)
        if path is None:
            return 0, 0
        names = [name for name, _ in tf.train.list_variables(path)]
        finished = any(name.startswith(f"{_OPTIMIZER_STATE}/") for name in names)  # written by ``finish``
        if finished and not (self.final_model and os.path.exists(self.final_model)):
            raise ValueError(f"the checkpoint {path} holds no weights: they are in the final model "
                             f"{self.final_model}, which is missing; use another --model_dir")
        try:
            if finished:
                model.load_weights(self.final_model)
                restorer = self._without_weights()
            else:
                # Checkpoints of earlier versions have no metric sums: restore them without.
                has_metrics = any(name.startswith("metric_state/") for name in names)
                restorer = self._checkpoint if has_metrics else tf.train.Checkpoint(**state)
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

    def _without_weights(self):
        """The checkpoint of ``finish``: the optimizer's variables (slots, iteration count) and the counters."""
        return tf.train.Checkpoint(**{_OPTIMIZER_STATE: list(self._optimizer.variables)},
                                   epochs_done=self._epochs_done, batches_done=self._batches_done,
                                   metric_state=self._metric_state)

    def finish(self):
        """Replace the last checkpoint by one without the model's weights, once ``final_model`` holds them.

        Call after the last epoch, the final model written: a rerun with a larger ``--epochs`` restores the
        weights from ``final_model`` and the optimizer's state and counters from here. Nothing to do when the
        last checkpoint is already one of these (or there is none).
        """
        latest = tf.train.latest_checkpoint(self.write_dir)
        if latest is None or os.path.basename(latest).startswith(f"{_FINISHED}-"):
            return
        self._metric_state.assign(tf.zeros([0], tf.float64))
        manager = tf.train.CheckpointManager(self._without_weights(), self.write_dir, max_to_keep=1,
                                             checkpoint_name=_FINISHED)
        # Saved under another name than the full one it replaces (same step), which is deleted once it is complete.
        manager.save(checkpoint_number=int(self._optimizer.iterations.numpy()))

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
    """Keeps ``best.keras`` (no optimizer state) and ``best.json`` for the best value of ``monitor``.

    Files are written to a temporary name and renamed, so a kill never leaves
    a half-written best model. ``best`` (the value to beat) is read back from
    ``best.json`` in ``read_dir`` when a run resumes. ``best.json`` holds the
    epoch, the values and ``file``: ``best.keras``, or ``final.keras`` once
    ``same_as_final`` has found the best epoch to be the last.
    """

    def __init__(self, read_dir, write_dir, monitor="val_top1", extra=("val_top5",)):
        super().__init__()
        self.monitor = monitor
        self.extra = tuple(extra)
        self.write_dir = write_dir
        self.path = os.path.join(write_dir, BEST_MODEL)
        self.info_path = os.path.join(write_dir, "best.json")
        self.best = -math.inf
        self.best_epoch = None  # 1-based
        self.saved_this_run = False
        self.info = read_best_info(read_dir) or {}
        if monitor in self.info:
            self.best = float(self.info[monitor])
            self.best_epoch = int(self.info["epoch"])
        else:
            self.info = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not np.isfinite(value) or value <= self.best:
            return
        self.best, self.best_epoch = float(value), epoch + 1
        files.atomic_save_model(self.model, self.path, include_optimizer=False)
        self.saved_this_run = True
        info = {"epoch": epoch + 1, self.monitor: float(value)}
        for key in self.extra:
            if key in logs:
                info[key] = float(logs[key])
        self._write_info({**info, "file": BEST_MODEL})

    def _write_info(self, info):
        self.info = info
        files.atomic_write_text(self.info_path, json.dumps(info, indent=2) + "\n")

    @property
    def in_final(self):
        """Whether ``best.json`` says the best model is the final one (no ``best.keras`` of its own)."""
        return self.info.get("file") == files.FINAL_MODEL

    def same_as_final(self):
        """The best epoch is the last: ``best.json`` points to ``final.keras`` and ``best.keras`` goes.

        Call once ``final.keras`` holds the best epoch's weights."""
        if not self.in_final:
            self._write_info({**self.info, "file": files.FINAL_MODEL})
        if os.path.exists(self.path):
            os.remove(self.path)

    def apart_from_final(self, previous_final):
        """A best epoch that is no longer the last gets its own ``best.keras``: copied from ``previous_final``
        (the final model it was, before this run overwrites it) when ``best.json`` points there."""
        if self.in_final:
            files.atomic_copy(previous_final, self.path)
            self._write_info({**self.info, "file": BEST_MODEL})


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
