"""``model.fit`` of a run with its callbacks, from the restored position to the last epoch.

``fit`` raises ``training.callbacks.NonFiniteLossError`` when the loss becomes
NaN/inf (nothing is saved after the last good checkpoint; the error says
which checkpoint that is).
"""

import importlib.util
import os
import warnings

import keras

from training import callbacks as callbacks_lib
from training import files
from training.report import log


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
    verbose = config.verbose if config.verbose == "auto" else int(config.verbose)
    # The pipelines shuffle themselves: shuffle=False only silences Keras's warning.
    fit_args = dict(validation_data=setup.eval_ds, callbacks=fit_callbacks, verbose=verbose,
                    shuffle=False)
    try:
        with warnings.catch_warnings():
            if spe is not None:
                # The training data repeats, so this warning can only come from the end
                # of an evaluation pass over data of unknown length, where it means nothing.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
            _fit_epochs(setup, fit_args, epochs, spe)
    except callbacks_lib.NonFiniteLossError as diverged:
        diverged.last_saved = checkpoint.last_saved
        diverged.checkpoint_dir = os.path.join(model_dir, files.CHECKPOINT_DIR)
        raise
    return best


def _fit_epochs(setup, fit_args, epochs, spe):
    """``model.fit`` from the restored position through the last epoch."""
    checkpoint, epochs_done, batches_done = setup.checkpoint, setup.epochs_done, setup.batches_done
    if epochs_done < epochs and batches_done and spe and batches_done < spe:
        # Finish the interrupted epoch with the batches it had left, then go on.
        log(f"finishing epoch {epochs_done + 1} with its last {spe - batches_done} batches")
        checkpoint.batch_offset = batches_done
        setup.model.fit(setup.train_ds, initial_epoch=epochs_done, epochs=epochs,
                        steps_per_epoch=spe - batches_done,
                        **{**fit_args, "callbacks": fit_args["callbacks"] + [_StopAfterEpoch()]})
        epochs_done += 1
    if epochs_done < epochs:
        setup.model.fit(setup.train_ds, initial_epoch=epochs_done, epochs=epochs,
                        steps_per_epoch=spe, **fit_args)


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ends ``fit`` after its first epoch (the short one that completes an interrupted epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True
