"""One training run of ``train.py``: data, model, ``fit`` with callbacks, export, summary.

``train(config)`` does everything after the command line is parsed. It raises

* ``UsageError`` for bad input (any ValueError of the set-up, including
  ``training.data.DatasetError``), before any training step: ``train.py``
  prints it as one line, exit status 2;
* ``training.callbacks.NonFiniteLossError`` when the loss becomes NaN/inf:
  nothing is saved after the last good checkpoint; exit code 1.

Layout of the run directory (``model_dir``)::

    settings.json        resolved settings (recipe, data, strategy, flags given)
    flags.txt            every flag value, reusable with --flagfile
    metrics.csv          one row per epoch: loss, top1, top5, val_*, learning_rate
                         (and target_loss/<parameter> of a scheduled target loss)
    checkpoints/         tf.train checkpoints of the full training state (resume)
    tensorboard/         TensorBoard logs (train/ and validation/)
    best.keras           the model of the best val_top1 so far (best.json: which epoch)
    final.keras          the model after the last epoch
    export/final/        SavedModel of final.keras (``model.export``)
    export/best/         SavedModel of best.keras
    export/model_int8.tflite, export/model_float.tflite   with --export_tflite
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import os
import time
import warnings

import keras
import tensorflow as tf

import keras_ftprop
from training import callbacks as callbacks_lib
from training import distribute, files, recipes, tflite_export

# The side digits (8x8) are resized to, per model: the CIFAR side, or the
# smallest input AlexNet's conv/pool tower accepts.
MIN_IMAGE_SIDE = {
    "convnet4": 32,
    "convnet8": 32,
    "resnet18": 32,
    "resnet34": 32,
    "alexnet": 60,
}
DEFAULT_SEED = 468412397  # the reference's seed
# The settings a checkpoint depends on: resuming with others is refused.
_ARCHITECTURE_KEYS = ("model", "activation", "target_loss", "steps", "scale_by_grad",
                      "dataset", "image_shape", "num_classes", "mixed_precision", "optimizer")


@dataclasses.dataclass
class Config:
    """Everything ``train`` needs, as parsed from the command line."""

    model: str = "resnet18"
    activation: str = "step"
    target_loss: str = "soft_hinge"
    steps: int | None = None
    scale_by_grad: bool = True
    recipe: str = "paper"
    overrides: dict = dataclasses.field(default_factory=dict)  # explicit recipe flags
    dataset: str = "digits"
    data_dir: str | None = None
    manual_dir: str | None = None
    image_size: int | None = None
    steps_per_epoch: int | None = None
    eval_steps: int | None = None
    seed: int = DEFAULT_SEED
    mixed_precision: bool = False
    jit_compile: bool = False
    strategy: str = "auto"
    devices: str | None = None
    model_dir: str | None = None
    save_every_steps: int = 500
    verbose: str = "auto"
    diagnostics: int = 0  # log target statistics every this many steps (0: off)
    flags_text: str = ""  # for flags.txt
    export_tflite: str = "none"  # also write export/model_{int8,float}.tflite (training.tflite_export)


@dataclasses.dataclass
class Summary:
    model_dir: str
    epochs: int
    rows: list
    best_top1: tuple | None  # (value, 1-based epoch)
    best_top5: tuple | None
    final: dict | None
    resumed_from: tuple  # (epochs_done, batches_done) at start
    files: dict
    chief: bool = True
    elapsed: float = 0.0


def log(message=""):
    print(message, flush=True)


def default_model_dir(config, now=None):
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    loss = config.target_loss if config.activation in ("step", "staircase") else "bp"
    return os.path.join("runs", f"{config.model}-{config.activation}-{loss}-{stamp}")


def _check_config(config):
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise ValueError(f"--steps_per_epoch must be >= 1, got {config.steps_per_epoch}")
    if config.eval_steps is not None and config.eval_steps < 1:
        raise ValueError(f"--eval_steps must be >= 1, got {config.eval_steps}")
    if config.image_size is not None and config.image_size < 1:
        raise ValueError(f"--image_size must be >= 1, got {config.image_size}")
    if config.save_every_steps < 0:
        raise ValueError(f"--save_every_steps must be >= 0, got {config.save_every_steps}")
    if config.strategy == "multi_worker" and not config.model_dir:
        raise ValueError("--strategy=multi_worker needs an explicit --model_dir, the same "
                         "for every worker, on a file system they share")


def _optimizer(recipe):
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=recipe.learning_rate, momentum=recipe.momentum)
    return keras.optimizers.Adam(learning_rate=recipe.learning_rate)


def build_model(config, recipe, info, fuse_batch_norm=True):
    """The network from ``models.get_model``, float32 logits under mixed precision."""
    import models  # the checkout's top-level package

    model = models.get_model(
        config.model,
        activation=config.activation,
        target_loss=config.target_loss,
        steps=config.steps,
        scale_by_grad=config.scale_by_grad,
        weight_decay=recipe.weight_decay,
        input_shape=tuple(info.image_shape),
        classes=info.num_classes,
        fuse_batch_norm=fuse_batch_norm,
    )
    if config.mixed_precision:
        # Softmax cross-entropy in float32: cast the logits of the last layer.
        logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(
            model.outputs[0]
        )
        model = keras.Model(model.inputs, logits, name=model.name)
    return model


def _settings(config, resolved, info, strategy_text, steps_per_epoch, eval_steps):
    return {
        "model": config.model,
        "activation": config.activation,
        "target_loss": config.target_loss,
        "steps": config.steps,
        "scale_by_grad": config.scale_by_grad,
        "recipe": config.recipe,
        "optimizer": resolved.recipe.optimizer,
        "resolved": resolved.as_dict(),
        "sources": dict(resolved.sources),
        "dataset": config.dataset,
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "train_examples": info.train_examples,
        "eval_examples": info.eval_examples,
        "skipped_files": info.skipped_files,
        "steps_per_epoch": steps_per_epoch,
        "eval_steps": eval_steps,
        "seed": config.seed,
        "mixed_precision": config.mixed_precision,
        "jit_compile": config.jit_compile,
        "strategy": strategy_text,
        "save_every_steps": config.save_every_steps,
    }


def _check_same_run(model_dir, settings):
    """Refuse to resume a checkpoint written for another network or data set."""
    if tf.train.latest_checkpoint(os.path.join(model_dir, files.CHECKPOINT_DIR)) is None:
        return
    previous = files.read_json(os.path.join(model_dir, files.SETTINGS_FILE))
    if not previous:
        return
    for key in _ARCHITECTURE_KEYS:
        if key in previous and previous[key] != settings[key]:
            raise ValueError(
                f"--model_dir {model_dir} holds a run with {key}={previous[key]!r}, "
                f"this command has {key}={settings[key]!r}; resume with the same "
                "settings or pass another --model_dir"
            )


class UsageError(ValueError):
    """Bad input found before training started: one line for the user."""


@dataclasses.dataclass
class _Setup:
    strategy: object
    strategy_text: str
    resolved: recipes.Resolved
    info: object
    train_ds: object
    eval_ds: object
    steps_per_epoch: int | None
    model_dir: str
    write_dir: distribute.WriteDir
    model: object
    checkpoint: callbacks_lib.TrainingCheckpoint
    epochs_done: int
    batches_done: int
    settings: dict


def train(config):
    """Run ``config`` end to end; returns a ``Summary``. See the module docstring.

    Raises ``UsageError`` for bad input (any ValueError raised while setting
    up: flags, data set, model, strategy, model_dir) and
    ``NonFiniteLossError`` if the loss diverges.
    """
    start = time.time()
    try:
        setup = _setup(config)
    except ValueError as error:
        raise UsageError(str(error)) from error
    try:
        return _fit(config, setup, start)
    finally:
        setup.write_dir.cleanup()


def _setup(config):
    from training import data  # imports tensorflow-datasets only when training

    _check_config(config)
    # Devices and strategy first: both must exist before TensorFlow initialises.
    devices = distribute.parse_devices(config.devices)
    distribute.configure_devices(devices)
    strategy = distribute.make_strategy(config.strategy, devices)

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    resolved = recipes.resolve(config.recipe, config.model, config.activation,
                               config.dataset, config.overrides)
    recipe = resolved.recipe
    if "momentum" in config.overrides and recipe.optimizer != "sgd":
        log(f"note: --momentum is used by --optimizer=sgd only (this run uses {recipe.optimizer})")

    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        raise ValueError(
            f"--batch_size {recipe.batch_size} (global) is not divisible by the "
            f"{replicas} replicas of this run"
        )

    model_dir = config.model_dir or default_model_dir(config)
    train_ds, eval_ds, info = data.load(
        config.dataset,
        batch_size=recipe.batch_size,
        image_size=config.image_size,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        seed=config.seed,
        min_image_size=MIN_IMAGE_SIDE.get(config.model),
    )
    if info.skipped_files:
        log(f"skipped {info.skipped_files} unreadable image file(s) in {config.dataset}")

    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch is None and info.train_examples is not None:
        steps_per_epoch = info.train_examples // recipe.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {info.train_examples} examples, fewer than "
                f"one batch of {recipe.batch_size}; lower --batch_size"
            )
    if steps_per_epoch is not None:
        # Epochs of exactly steps_per_epoch batches, the data cycling on.
        train_ds = train_ds.repeat()
    if config.eval_steps is not None:
        eval_ds = eval_ds.take(config.eval_steps)

    strategy_text = distribute.describe(strategy)
    settings = _settings(config, resolved, info, strategy_text, steps_per_epoch, config.eval_steps)
    write_dir = distribute.WriteDir.for_strategy(model_dir, strategy)
    try:
        if write_dir.chief:
            _check_same_run(model_dir, settings)
        model, checkpoint, epochs_done, batches_done = _build(
            config, recipe, info, strategy, model_dir, write_dir)
    except BaseException:
        write_dir.cleanup()
        raise
    return _Setup(strategy, strategy_text, resolved, info, train_ds, eval_ds, steps_per_epoch,
                  model_dir, write_dir, model, checkpoint, epochs_done, batches_done, settings)


def _build(config, recipe, info, strategy, model_dir, write_dir):
    """Model, compiled, with its training state restored from the last checkpoint."""
    policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy(
            "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
        )
    try:
        with strategy.scope():
            model = build_model(config, recipe, info)
            model.compile(
                optimizer=_optimizer(recipe),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[
                    keras.metrics.SparseCategoricalAccuracy(name="top1"),
                    keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
                ],
                jit_compile=config.jit_compile,
            )
            checkpoint = callbacks_lib.TrainingCheckpoint(
                read_dir=os.path.join(model_dir, files.CHECKPOINT_DIR),
                write_dir=os.path.join(write_dir.path, files.CHECKPOINT_DIR),
                every_steps=config.save_every_steps,
            )
            epochs_done, batches_done = checkpoint.restore(model)
    finally:
        keras.config.set_dtype_policy(policy)
    return model, checkpoint, epochs_done, batches_done


def _fit(config, setup, start):
    recipe = setup.resolved.recipe
    model_dir, write_path, chief = setup.model_dir, setup.write_dir.path, setup.write_dir.chief
    epochs_done = setup.epochs_done
    _print_header(config, setup, chief)

    metrics_path = os.path.join(write_path, files.METRICS_FILE)
    if chief:
        files.write_json(os.path.join(model_dir, files.SETTINGS_FILE), setup.settings)
        if config.flags_text:
            files.atomic_write_text(os.path.join(model_dir, files.FLAGS_FILE), config.flags_text)
    files.trim_metrics(metrics_path, epochs_done)

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
    fit = dict(validation_data=setup.eval_ds, callbacks=fit_callbacks, verbose=verbose,
               shuffle=False)
    try:
        with warnings.catch_warnings():
            if spe is not None:
                # The training data repeats, so this warning can only come from the end
                # of an evaluation pass over data of unknown length, where it means nothing.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
            _fit_epochs(setup, fit, fit_callbacks, epochs_done, epochs, spe)
    except callbacks_lib.NonFiniteLossError as diverged:
        diverged.last_saved = checkpoint.last_saved
        diverged.checkpoint_dir = os.path.join(model_dir, files.CHECKPOINT_DIR)
        raise

    outputs = _save_outputs(setup.model, model_dir, write_path, best, final_epoch=epochs)
    if config.export_tflite != "none" and chief:
        # The export converts batch norm and threshold as two layers: the same network, unfused.
        final_model = build_model(config, recipe, setup.info, fuse_batch_norm=False)
        trained = keras.models.load_model(outputs["final model"])
        for layer in trained.layers:
            if layer.weights:
                final_model.get_layer(layer.name).set_weights(layer.get_weights())
        outputs.update(tflite_export.export(final_model, config.export_tflite, setup.train_ds,
                                            setup.eval_ds, model_dir, log=log))
    rows = files.read_metrics(metrics_path)
    return Summary(
        model_dir=model_dir,
        epochs=epochs,
        rows=rows,
        best_top1=_best(rows, "val_top1"),
        best_top5=_best(rows, "val_top5"),
        final=rows[-1] if rows else None,
        resumed_from=(setup.epochs_done, setup.batches_done),
        files=outputs,
        chief=chief,
        elapsed=time.time() - start,
    )


def _fit_epochs(setup, fit, fit_callbacks, epochs_done, epochs, spe):
    """``model.fit`` from the restored position through the last epoch."""
    checkpoint, batches_done = setup.checkpoint, setup.batches_done
    if epochs_done < epochs and batches_done and spe and batches_done < spe:
        # Finish the interrupted epoch with the batches it had left, then go on.
        log(f"finishing epoch {epochs_done + 1} with its last {spe - batches_done} batches")
        checkpoint.batch_offset = batches_done
        setup.model.fit(setup.train_ds, initial_epoch=epochs_done, epochs=epochs,
                        steps_per_epoch=spe - batches_done,
                        **{**fit, "callbacks": fit_callbacks + [_StopAfterEpoch()]})
        epochs_done += 1
    if epochs_done < epochs:
        setup.model.fit(setup.train_ds, initial_epoch=epochs_done, epochs=epochs,
                        steps_per_epoch=spe, **fit)


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ends ``fit`` after its first epoch (the short one that completes an interrupted epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _save_outputs(model, model_dir, write_path, best, final_epoch):
    """final.keras, export/final and export/best (every worker writes, the chief keeps).

    When the best epoch is the last one, the best files are copies of the
    final ones. Every branch depends only on what all workers share (the
    synchronised metrics), so all workers save the same way.
    """
    final_model = os.path.join(write_path, files.FINAL_MODEL)
    final_export = os.path.join(write_path, files.EXPORT_DIR, "final")
    best_export = os.path.join(write_path, files.EXPORT_DIR, "best")
    best_is_final = best.best_epoch == final_epoch
    if best_is_final and best.saved_this_run:
        files.atomic_copy(best.path, final_model)  # the same weights, saved moments ago
    else:
        files.atomic_save_model(model, final_model)
    files.atomic_export(model, final_export)
    out = {
        "final model": os.path.join(model_dir, files.FINAL_MODEL),
        "final SavedModel": os.path.join(model_dir, files.EXPORT_DIR, "final"),
    }
    if best.best_epoch is not None:
        if best_is_final:
            files.atomic_copytree(final_export, best_export)
        else:
            # The chief's file when the best epoch is from an earlier run of this model_dir.
            source = best.path if best.saved_this_run else os.path.join(model_dir, "best.keras")
            model.load_weights(source)
            files.atomic_export(model, best_export)
        out["best model"] = os.path.join(model_dir, "best.keras")
        out["best SavedModel"] = os.path.join(model_dir, files.EXPORT_DIR, "best")
    out["metrics"] = os.path.join(model_dir, files.METRICS_FILE)
    out["checkpoints"] = os.path.join(model_dir, files.CHECKPOINT_DIR)
    if os.path.isdir(os.path.join(write_path, files.TENSORBOARD_DIR)):
        out["TensorBoard"] = os.path.join(model_dir, files.TENSORBOARD_DIR)
    return out


def _best(rows, key):
    scored = [(row[key], row["epoch"] + 1) for row in rows if key in row]
    if not scored:
        return None
    # Highest value; the earliest epoch among equals.
    return max(scored, key=lambda item: (item[0], -item[1]))


def _print_header(config, setup, chief):
    recipe, info = setup.resolved.recipe, setup.info
    what = config.activation
    if config.activation in ("step", "staircase"):
        what += f" ({config.target_loss}{'' if config.scale_by_grad else ', no grad scaling'})"
    log(f"train.py: {config.model}, {what}, on {info.name}")
    if config.dataset == recipes.DIGITS_DATASET and "epochs" not in config.overrides:
        log(f"digits is a small demo set: {recipe.epochs} epochs instead of the recipe's "
            "(override with --epochs)")
    log(f"settings (--recipe={config.recipe}):")
    for line in setup.resolved.lines():
        log("  " + line)
    shape = "x".join(str(d) for d in info.image_shape)
    log(f"data: {info.train_examples} train / {info.eval_examples} eval examples, "
        f"{info.num_classes} classes, images {shape}; "
        f"{setup.steps_per_epoch or 'all'} steps per epoch")
    log(f"strategy: {setup.strategy_text}")
    log(f"model: {setup.model.name}, {setup.model.count_params():,} parameters")
    keras_ftprop.summary(setup.model, print_fn=log)
    log(f"model_dir: {setup.model_dir}"
        + ("" if chief else " (this worker writes to a temporary directory)"))
    if setup.epochs_done or setup.batches_done:
        where = f"after epoch {setup.epochs_done}"
        if setup.batches_done:
            where += f" and {setup.batches_done} batches of epoch {setup.epochs_done + 1}"
        log(f"resuming from the checkpoint saved {where}")


def _format(value_epoch):
    if value_epoch is None:
        return "-"
    value, epoch = value_epoch
    return f"{100 * value:6.2f}% (epoch {epoch})"


def print_summary(summary, config):
    """The end-of-run report: best and final top-1/top-5, and where the files are."""
    minutes, seconds = divmod(int(round(summary.elapsed)), 60)
    log()
    log(f"Summary: {config.model}/{config.activation} on {config.dataset}, "
        f"{summary.epochs} epoch{'s' if summary.epochs != 1 else ''} "
        f"({minutes}m{seconds:02d}s in this process)")
    if not summary.chief:
        log("  (this worker is not the chief: the chief keeps the files and metrics)")
        return
    final = summary.final
    final_top1 = (final["val_top1"], final["epoch"] + 1) if final and "val_top1" in final else None
    final_top5 = (final["val_top5"], final["epoch"] + 1) if final and "val_top5" in final else None
    log(f"  {'eval':<6}{'top-1':<22}top-5")
    log(f"  {'best':<6}{_format(summary.best_top1):<22}{_format(summary.best_top5)}")
    log(f"  {'final':<6}{_format(final_top1):<22}{_format(final_top5)}")
    log(f"files in {summary.model_dir}:")
    for name, path in summary.files.items():
        log(f"  {name + ':':<18}{path}")
    if "TensorBoard" in summary.files:
        log(f"view the curves: tensorboard --logdir {summary.files['TensorBoard']}")
