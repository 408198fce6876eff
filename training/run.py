"""One training run of ``train.py``: set-up, ``fit``, outputs and report.

``train(config)`` does everything after the command line is parsed, in three
steps: ``training.setup`` (strategy, recipe, data, model, resume),
``training.fit`` (``model.fit`` with its callbacks) and ``training.report``
(saved models, exports, summary). It raises

* ``training.errors.UsageError`` for input it checked and refused, before any
  training step: ``train.py`` prints it as one line, exit status 2;
* ``training.callbacks.NonFiniteLossError`` when the loss becomes NaN/inf:
  nothing is saved after the last good checkpoint; exit status 1;
* ``training.distribute.WorkerLostError`` on the surviving workers of a
  multi-worker run when another one stopped; exit status 3;
* ``training.preemption.Stopped`` when SIGTERM or SIGINT stopped training,
  the step it was in saved; exit status 75;
* anything else unchanged: a bug (ours, TensorFlow's, Keras's) keeps its
  traceback, exit status 1.

Layout of the run directory (``model_dir``)::

    settings.json        resolved settings (recipe, data, strategy, flags given)
    flags.txt            every flag value, reusable with --flagfile
    metrics.csv          one row per epoch: loss, top1, top5, val_*, learning_rate
                         (and target_loss/<parameter> of a scheduled target loss)
    checkpoints/         the tf.train checkpoint of the training state (resume); once the run is over, without
                         the weights, which are final.keras's (``TrainingCheckpoint.finish``)
    tensorboard/         TensorBoard logs (train/ and validation/)
    best.json            the epoch of the best val_top1 and its file: best.keras, or final.keras when it is
                         the last epoch (stored once)
    best.keras           the model of the best val_top1, when that epoch is not the last
    final.keras          the model after the last epoch
    export/final/        SavedModel of final.keras, serving raw images (``training.serving``)
    export/model_int8.tflite, export/model_float.tflite   with --export_tflite
    qat.keras, qat/      with --qat_epochs: the fine-tuned quantization-aware copy, its resume state and
                         metrics (``training.qat``); export/model_qat_int8.tflite with --export_tflite=int8

The .keras files hold the architecture and weights, not the optimizer state (they load uncompiled), and
load with ``keras_ftprop`` alone.
"""

import time

from training import fit, qat, report
from training import setup as setup_lib


def train(config):
    """Run ``config`` (a ``training.config.Config``) end to end; returns a ``report.Summary``."""
    start = time.time()
    setup = setup_lib.setup(config)
    try:
        report.print_header(config, setup)
        best = fit.fit(config, setup)
        outputs = report.save_outputs(config, setup, best)
        if config.qat_epochs:
            outputs.update(qat.fine_tune(config, setup, log=report.log))
        return report.summarize(setup, outputs, elapsed=time.time() - start)
    finally:
        setup.write_dir.cleanup()
