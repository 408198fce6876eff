"""``train.py --qat_epochs=N``: fine-tune the quantization-aware copy of the final network.

After the main schedule, ``fine_tune`` makes ``keras_ftprop.deploy.quantization_aware(model)``
(ranges calibrated on the first ``tflite_export.REPRESENTATIVE_EXAMPLES`` training images), trains it
``N`` epochs at the recipe's final learning rate, and writes::

    qat/model.keras      the copy after each epoch (weights, optimizer state, ranges): resume point
    qat/metrics.csv      one row per fine-tune epoch
    qat.keras            the fine-tuned copy (no optimizer state)
    export/model_qat_int8.tflite   its int8 export (with --export_tflite=int8 or both)

It prints the top-1 agreement of Keras and the int8 model and their accuracies on the evaluation split
before (the float network and its int8 export) and after (the fine-tuned copy and its export). A run
stopped during the fine-tune resumes, with the same command, from the last finished fine-tune epoch.
"""

import os

import keras
import numpy as np

from keras_ftprop import deploy
from training import files, recipes, tflite_export
from training import fit as fit_lib

QAT_DIR = "qat"
QAT_MODEL = "qat.keras"
QAT_EXPORT = "model_qat_int8.tflite"


def fine_tune_learning_rate(recipe):
    """The learning rate of the schedule's last epoch."""
    return recipes.learning_rate_at(recipe, recipe.epochs - 1)


def _compile(model, optimizer):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                           keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])


class _SaveEachEpoch(keras.callbacks.Callback):
    """Saves the copy (with its optimizer state) and the number of finished epochs after each epoch."""

    def __init__(self, path, state_path):
        super().__init__()
        self.path, self.state_path = path, state_path

    def on_epoch_end(self, epoch, logs=None):
        files.atomic_save_model(self.model, self.path)
        files.write_json(self.state_path, {"epochs_done": epoch + 1})


def _agreement(model, flatbuffer, batches):
    """(top-1 agreement of int8 with Keras, Keras accuracy, int8 accuracy) on ``batches``."""
    labels = np.concatenate([y for _, y in batches])
    keras_top1 = np.concatenate([model.predict(x, verbose=0).argmax(axis=1) for x, _ in batches])
    int8_top1 = np.concatenate([tflite_export.predict(flatbuffer, x).argmax(axis=1) for x, _ in batches])
    return (float(np.mean(int8_top1 == keras_top1)), float(np.mean(keras_top1 == labels)),
            float(np.mean(int8_top1 == labels)))


def _line(what, result, count):
    agreement, keras_accuracy, int8_accuracy = result
    return (f"{what}: top-1 agreement of int8 with Keras {agreement:.4f} on {count} eval images; "
            f"accuracy Keras {100 * keras_accuracy:.2f}%, int8 {100 * int8_accuracy:.2f}%")


def fine_tune(config, setup, log=print):
    """Fine-tune the quantization-aware copy of ``setup.model`` ``config.qat_epochs`` epochs; {what: path}."""
    recipe, write_path, model_dir = setup.resolved.recipe, setup.write_dir.path, setup.model_dir
    qat_dir = os.path.join(write_path, QAT_DIR)
    resume_path, state_path = os.path.join(qat_dir, "model.keras"), os.path.join(qat_dir, "state.json")
    representative = tflite_export._first_images(setup.train_ds, tflite_export.REPRESENTATIVE_EXAMPLES)
    batches = [(x.numpy(), y.numpy()) for x, y in setup.eval_ds]
    count = sum(len(y) for _, y in batches)
    chief = setup.write_dir.chief
    if chief:
        before = deploy.to_tflite(setup.model, representative, quantize="int8",
                                  exact_input_staircases=config.exact_input_staircases)
        log(_line("int8 before the quantization-aware fine-tune (the float network)",
                  _agreement(setup.model, before, batches), count))

    learning_rate = fine_tune_learning_rate(recipe)
    done = int((files.read_json(os.path.join(model_dir, QAT_DIR, "state.json")) or {}).get("epochs_done", 0))
    with setup.strategy.scope():
        if done:
            qat = keras.models.load_model(os.path.join(model_dir, QAT_DIR, "model.keras"))
            log(f"resuming the quantization-aware fine-tune after epoch {done} of {config.qat_epochs}")
        else:
            qat = deploy.quantization_aware(setup.model, representative,
                                            exact_input_staircases=config.exact_input_staircases)
            _compile(qat, recipes.optimizer(recipe, learning_rate))
    if done < config.qat_epochs:
        log(f"quantization-aware fine-tune: {config.qat_epochs} epoch(s) at the final learning rate "
            f"{learning_rate:g}")
        os.makedirs(qat_dir, exist_ok=True)
        callbacks = [keras.callbacks.CSVLogger(os.path.join(qat_dir, files.METRICS_FILE), append=bool(done)),
                     _SaveEachEpoch(resume_path, state_path)]
        spe = setup.steps_per_epoch
        # The data stream goes on after the main schedule's last batch, as further epochs would.
        data = setup.train_ds if setup.train_from is None else setup.train_from((recipe.epochs + done) * spe)
        qat.fit(data, initial_epoch=done, epochs=config.qat_epochs,
                steps_per_epoch=setup.steps_per_epoch, validation_data=setup.eval_ds, callbacks=callbacks,
                verbose=fit_lib.fit_verbosity(config.verbose), shuffle=False)
    files.atomic_save_model(qat, os.path.join(write_path, QAT_MODEL), include_optimizer=False)
    out = {"QAT model": os.path.join(model_dir, QAT_MODEL)}
    if chief:
        path = os.path.join(model_dir, files.EXPORT_DIR, QAT_EXPORT) if config.export_tflite in ("int8", "both") \
            else None
        after = deploy.to_tflite(qat, representative, quantize="int8", path=path)
        log(_line(f"int8 after {config.qat_epochs} quantization-aware epoch(s) (the fine-tuned copy)",
                  _agreement(qat, after, batches), count))
        if path:
            out["TFLite QAT int8"] = path
    return out
