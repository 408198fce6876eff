"""``model.fit`` of a run with its callbacks, from the restored position to the last epoch.

A run restored at ``(epochs_done, batches_done)`` trains in at most two
``fit`` calls (``resume_plan``): the rest of the interrupted epoch, then
the epochs after it. Each call trains on the data stream from the global
batch it starts at, ``epochs_done * steps_per_epoch + batches_done``
(``DatasetInfo.train_from``), so a resumed run sees the batches the
uninterrupted run would have seen, in the same order and augmentation.

``fit`` raises ``training.callbacks.NonFiniteLossError`` when the loss becomes
NaN/inf (nothing is saved after the last good checkpoint; the error says
which checkpoint that is), ``training.distribute.WorkerLostError`` when
another worker of a multi-worker run stops, and ``training.preemption.Stopped``
when SIGTERM or SIGINT stopped training, its state saved at the step it had
reached (in a multi-worker run, on every worker at the same step).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import warnings

import keras

from training import callbacks as callbacks_lib
from training import distribute, files, preemption
from training.report import log


@dataclasses.dataclass(frozen=True)
class Segment:
    """One ``model.fit`` call: epochs ``initial_epoch`` to ``last_epoch`` (0-based, inclusive)
    of ``steps_per_epoch`` batches, the first of which starts ``batch_offset`` batches in;
    its data starts at global batch ``start_batch`` (None: the stream cannot seek)."""

    initial_epoch: int
    last_epoch: int
    steps_per_epoch: int | None
    batch_offset: int
    start_batch: int | None


def resume_plan(epochs, steps_per_epoch, epochs_done, batches_done):
    """The ``Segment``s that train from ``(epochs_done, batches_done)`` through epoch ``epochs``.

    With a known ``steps_per_epoch`` s and b = ``batches_done`` in (0, s): first the
    s - b batches left of epoch e = ``epochs_done`` (offset b, data from batch e s + b),
    then epochs e + 1 ... (data from batch (e + 1) s). Without s, whole epochs from e.
    """
    if epochs_done >= epochs:
        return []
    if not steps_per_epoch:
        return [Segment(epochs_done, epochs - 1, None, 0, None)]
    plan = []
    if 0 < batches_done < steps_per_epoch:
        plan.append(Segment(epochs_done, epochs_done, steps_per_epoch - batches_done, batches_done,
                            epochs_done * steps_per_epoch + batches_done))
        epochs_done += 1
    if epochs_done < epochs:
        plan.append(Segment(epochs_done, epochs - 1, steps_per_epoch, 0, epochs_done * steps_per_epoch))
    return plan


def fit(config, setup):
    """Train ``setup.model`` through the recipe's last epoch; returns the ``BestModelSaver``."""
    recipe = setup.resolved.recipe
    model_dir, write_path, chief = setup.model_dir, setup.write_dir.path, setup.write_dir.chief
    metrics_path = os.path.join(write_path, files.METRICS_FILE)
    if chief:
        files.write_json(os.path.join(model_dir, files.SETTINGS_FILE), setup.settings)
        if config.flags_text:
            files.atomic_write_text(os.path.join(model_dir, files.FLAGS_FILE), config.flags_text)
    files.trim_metrics(metrics_path, setup.epochs_done)

    checkpoint = setup.checkpoint
    best = callbacks_lib.BestModelSaver(model_dir, write_path)
    epochs, spe = recipe.epochs, setup.steps_per_epoch
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    if not tensorboard:
        log("note: no TensorBoard logs (the tensorboard package is not installed)")
    fit_callbacks = callbacks_lib.fit_callbacks(
        recipe, spe, checkpoint, best, metrics_path,
        log_dir=os.path.join(write_path, files.TENSORBOARD_DIR) if tensorboard else None,
        diagnostics=config.diagnostics,
        probe_data=next(iter(setup.eval_ds.take(1)))[0] if config.diagnostics else None)
    # The pipelines shuffle themselves: shuffle=False only silences Keras's warning.
    fit_args = dict(validation_data=setup.eval_ds, verbose=fit_verbosity(config.verbose), shuffle=False)
    try:
        with warnings.catch_warnings(), preemption.SignalCatcher() as catcher:
            if spe is not None:
                # The training data repeats, so this warning can only come from the end
                # of an evaluation pass over data of unknown length, where it means nothing.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
            stop = preemption.StopOnSignal(catcher, checkpoint, cluster_resolver=(
                setup.strategy.cluster_resolver if config.strategy == "multi_worker" else None))
            fit_args["callbacks"] = fit_callbacks + [stop]  # last: after the checkpoint and the best model
            for segment in resume_plan(epochs, spe, setup.epochs_done, setup.batches_done):
                _fit_segment(setup, segment, epochs, fit_args)
            stop.close()
    except preemption.Stopped as stopped:
        stopped.checkpoint_dir = os.path.join(model_dir, files.CHECKPOINT_DIR)
        raise
    except callbacks_lib.NonFiniteLossError as diverged:
        diverged.last_saved = checkpoint.last_saved
        diverged.checkpoint_dir = os.path.join(model_dir, files.CHECKPOINT_DIR)
        raise
    except distribute.LOST_PEER_ERRORS as error:
        if config.strategy != "multi_worker":
            raise
        saved = checkpoint.last_saved
        raise distribute.WorkerLostError(
            distribute.lost_worker(error, distribute.task(setup.strategy)), saved,
            saved[0] * spe + saved[1] if saved and spe else None,
            os.path.join(model_dir, files.CHECKPOINT_DIR)) from error
    return best


def fit_verbosity(verbose, stream=None):
    """Keras's ``verbose`` for ``--verbose``: ``auto`` is 1 (a progress bar) on a terminal, else 2
    (one line per epoch, no carriage returns in a log file)."""
    if verbose != "auto":
        return int(verbose)
    stream = sys.stdout if stream is None else stream
    return 1 if getattr(stream, "isatty", lambda: False)() else 2


def _fit_segment(setup, segment, epochs, fit_args):
    if segment.batch_offset:
        log(f"finishing epoch {segment.initial_epoch + 1} with its last {segment.steps_per_epoch} batches")
    setup.checkpoint.batch_offset = segment.batch_offset
    data = setup.train_ds if segment.start_batch is None or setup.train_from is None else (
        setup.train_from(segment.start_batch))
    callbacks = fit_args["callbacks"]
    if segment.last_epoch < epochs - 1:  # keeps "Epoch k/epochs" and the callbacks' epoch count true
        callbacks = callbacks + [_StopAfterEpoch(segment.last_epoch)]
    setup.model.fit(data, initial_epoch=segment.initial_epoch, epochs=epochs,
                    steps_per_epoch=segment.steps_per_epoch, **{**fit_args, "callbacks": callbacks})


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ends ``fit`` after (0-based) epoch ``last``."""

    def __init__(self, last):
        super().__init__()
        self.last = last

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.last:
            self.model.stop_training = True
