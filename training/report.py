"""Outputs and report of a run: the header, the saved models and exports, the summary."""

from __future__ import annotations

import dataclasses
import os
import shutil

import keras

import keras_ftprop
import models
from training import files, recipes, serving, tflite_export
from training.callbacks import BEST_MODEL


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


IMAGENET_SIDE = 224  # the input side of the paper's ImageNet networks


def log(message=""):
    print(message, flush=True)


def print_header(config, setup):
    """What is about to run: network, settings and their sources, data, strategy, model."""
    recipe, info, chief = setup.resolved.recipe, setup.info, setup.write_dir.chief
    what = config.activation
    if config.activation in ("step", "staircase"):
        what += f" ({config.target_loss}{'' if config.scale_by_grad else ', no grad scaling'})"
    log(f"train.py: {config.model}, {what}, on {info.name}")
    if config.dataset == recipes.DIGITS_DATASET:
        if "epochs" not in config.overrides:
            log(f"digits is a small demo set: {recipe.epochs} epochs instead of the recipe's "
                "(override with --epochs)")
        log(paper_data_command(config))
    log(f"settings (--recipe={config.recipe}):")
    for line in setup.resolved.lines():
        log("  " + line)
    shape = "x".join(str(d) for d in info.image_shape)
    log(f"data: {info.train_examples} train / {info.eval_examples} eval examples, "
        f"{info.num_classes} classes, images {shape}; "
        f"{setup.steps_per_epoch or 'all'} steps per epoch")
    for note in setup.data_notes:
        log(note)
    if setup.stem_reason:
        log(f"stem: {setup.settings['stem']} ({setup.stem_reason})")
    log(f"strategy: {setup.strategy_text}")
    log(execution_text(config, setup.model))
    log(f"model: {setup.model.name}")  # its parameters: the summary's "Params" line
    keras_ftprop.summary(setup.model, print_fn=log)
    log(f"model_dir: {setup.model_dir}"
        + ("" if chief else " (this worker writes to a temporary directory)"))
    if setup.epochs_done or setup.batches_done:
        where = f"after epoch {setup.epochs_done}"
        if setup.batches_done:
            where += f" and {setup.batches_done} batches of epoch {setup.epochs_done + 1}"
        log(f"resuming from the checkpoint saved {where}")


def paper_data_command(config):
    """The command that trains ``config``'s network on the paper's data for it: ImageNet for the networks of
    224x224 inputs, CIFAR-10 for the others."""
    network = f"--model={config.model} --activation={config.activation}"
    if config.activation in ("step", "staircase") and config.target_loss != "soft_hinge":
        network += f" --target_loss={config.target_loss}"
    if models.get_spec(config.model).input_shape[0] >= IMAGENET_SIDE:
        return (f"on ImageNet: python train.py {network} --dataset=imagenet2012 --manual_dir=DIR "
                "(DIR holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)")
    return f"on CIFAR-10, the paper's data for {config.model}: python train.py {network} --dataset=cifar10"


def execution_text(config, model):
    """One line: the dtype policy ``model`` computes in and the ``jit_compile`` its ``compile`` resolved.

    ``train.py`` passes ``--jit_compile`` to ``compile`` as True or False, never
    Keras's "auto" (which turns XLA off under every tf.distribute strategy); Keras
    still turns a True off when op determinism is on or a layer does not support XLA.
    """
    text = f"execution: dtype policy {model.dtype_policy.name}, jit_compile={model.jit_compile}"
    if config.jit_compile and not model.jit_compile:
        text += (" (--jit_compile was given, but Keras compiles without XLA under --deterministic "
                 "or for a layer that does not support it)")
    return text


def save_outputs(config, setup, best):
    """final.keras, best.keras when the best epoch is not the last, export/final, TFLite; every worker writes,
    the chief keeps.

    The models hold no optimizer state (the checkpoint keeps it, without the weights once final.keras has
    them: ``TrainingCheckpoint.finish``). A best epoch that is the last one is stored once, as final.keras,
    which best.json names. The SavedModel serves raw images (``training.serving``). Every branch depends only
    on what all workers share (the synchronised metrics), so all workers save the same way. Returns {what: path}.
    """
    model, model_dir, write_path = setup.model, setup.model_dir, setup.write_dir.path
    final_model = os.path.join(write_path, files.FINAL_MODEL)
    best_is_final = best.best_epoch == setup.resolved.recipe.epochs
    if best.best_epoch is not None and not best_is_final:
        best.apart_from_final(os.path.join(model_dir, files.FINAL_MODEL))  # before final.keras is replaced
    if best_is_final and best.saved_this_run:
        os.replace(best.path, final_model)  # the same weights, saved moments ago
    else:
        files.atomic_save_model(model, final_model, include_optimizer=False)
    if best_is_final:
        best.same_as_final()
    setup.checkpoint.finish()
    files.atomic_export(serving.ServingModel(model, setup.info), os.path.join(write_path, files.EXPORT_DIR, "final"))
    shutil.rmtree(os.path.join(write_path, files.EXPORT_DIR, "best"), ignore_errors=True)  # earlier versions'
    out = {
        "final model": os.path.join(model_dir, files.FINAL_MODEL),
        "final SavedModel": os.path.join(model_dir, files.EXPORT_DIR, "final"),
    }
    if best.best_epoch is not None:
        out["best model"] = os.path.join(model_dir, files.FINAL_MODEL if best_is_final else BEST_MODEL)
    out["metrics"] = os.path.join(model_dir, files.METRICS_FILE)
    out["checkpoints"] = os.path.join(model_dir, files.CHECKPOINT_DIR)
    if os.path.isdir(os.path.join(write_path, files.TENSORBOARD_DIR)):
        out["TensorBoard"] = os.path.join(model_dir, files.TENSORBOARD_DIR)
    if config.export_tflite != "none" and setup.write_dir.chief:
        exported = keras.models.load_model(out["final model"])
        out.update(tflite_export.export(exported, config.export_tflite, setup.train_ds, setup.eval_ds, model_dir,
                                        log=log, exact_input_staircases=config.exact_input_staircases))
    return out


def summarize(setup, outputs, elapsed):
    """The ``Summary`` of a finished run, from its metrics.csv."""
    rows = files.read_metrics(os.path.join(setup.write_dir.path, files.METRICS_FILE))
    return Summary(
        model_dir=setup.model_dir,
        epochs=setup.resolved.recipe.epochs,
        rows=rows,
        best_top1=_best(rows, "val_top1"),
        best_top5=_best(rows, "val_top5"),
        final=rows[-1] if rows else None,
        resumed_from=(setup.epochs_done, setup.batches_done),
        files=outputs,
        chief=setup.write_dir.chief,
        elapsed=elapsed,
    )


def _best(rows, key):
    scored = [(row[key], row["epoch"] + 1) for row in rows if key in row]
    if not scored:
        return None
    # Highest value; the earliest epoch among equals.
    return max(scored, key=lambda item: (item[0], -item[1]))


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
        same = name == "best model" and path == summary.files.get("final model")
        log(f"  {name + ':':<18}{path}" + (" (the last epoch is the best)" if same else ""))
    for line in usage_lines(summary.files, config.model):
        log(line)


def usage_lines(outputs, model_name):
    """One line each: how to view the curves, load the .keras file, serve the SavedModel, run the TFLite file."""
    lines = []
    if "TensorBoard" in outputs:
        lines.append(f"view the curves: tensorboard --logdir {outputs['TensorBoard']}")
    lines.append("load the model (Python): import keras, keras_ftprop; "
                 f"model = keras.saving.load_model({outputs['final model']!r})")
    lines.append(f"serve the SavedModel (TensorFlow Serving): docker run -p 8501:8501 -v "
                 f"{os.path.abspath(outputs['final SavedModel'])}:/models/{model_name}/1 -e MODEL_NAME={model_name} "
                 "tensorflow/serving")
    tflite = next((path for name, path in outputs.items() if name.startswith("TFLite")), None)
    if tflite:
        lines.append("run the TFLite model (Python): from ai_edge_litert.interpreter import Interpreter; "
                     f"interpreter = Interpreter(model_path={tflite!r})")
    return lines
