"""Set-up of a run: strategy, recipe, data, model, and the training state to resume.

``setup(config)`` raises ``UsageError`` for input it checked and refused
(flags, data set, image size, strategy, a ``model_dir`` of another run),
before any training step; any other exception is not caught here.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import keras
import tensorflow as tf

import models
from keras_ftprop import BatchNormThreshold
from training import callbacks as callbacks_lib
from training import config as config_lib
from training import distribute, files, recipes
from training.errors import UsageError
from training.report import log

# Images smaller than CIFAR's (digits 8x8, MNIST 28x28) are resized up to this
# side, or to the model's minimum input side if that is larger.
SMALL_IMAGE_SIDE = 32
# Source images enlarged more than this many times get a warning.
UPSAMPLING_WARNING = 2.0


@dataclasses.dataclass
class Setup:
    """What ``setup`` prepared for ``fit``."""

    strategy: object
    strategy_text: str
    resolved: recipes.Resolved
    info: object
    train_ds: object  # the training stream from its first batch
    eval_ds: object
    steps_per_epoch: int | None
    model_dir: str
    write_dir: distribute.WriteDir
    model: object
    checkpoint: callbacks_lib.TrainingCheckpoint
    epochs_done: int
    batches_done: int
    settings: dict
    train_from: object = None  # global batch -> the training stream from it (None: cannot seek)
    stem_reason: str | None = None  # why the network has its stem (None: it has no stem option)
    data_notes: tuple = ()  # lines printed after the data's: where the image size came from, upsampling


def default_model_dir(config, now=None):
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    loss = config.target_loss if config.activation in ("step", "staircase") else "bp"
    return os.path.join("runs", f"{config.model}-{config.activation}-{loss}-{stamp}")


def min_image_side(model):
    """The side train.py resizes smaller images up to for ``model``."""
    return max(SMALL_IMAGE_SIDE, models.get_spec(model).min_input_side)


def resolve_stem(config, image_shape):
    """(stem, why) of a network that takes ``stem``: ``--stem``, with "auto" resolved for ``image_shape``;
    (None, None) for one that has no stem option. UsageError for --stem on such a network."""
    if not models.get_spec(config.model).has_stem:
        if config.stem != "auto":
            with_stem = ", ".join(name for name, spec in models.MODELS.items() if spec.has_stem)
            raise UsageError(f"--stem applies to {with_stem}, not to --model={config.model}")
        return None, None
    if config.stem != "auto":
        stem, why = config.stem, "--stem"
    elif config.dataset == recipes.DIGITS_DATASET:
        stem, why = "imagenet", "digits adaptation: the CIFAR stem would cost 16x the compute of the demo"
    else:
        stem = models.resnet.resolve_stem("auto", image_shape)
        why = f"--stem=auto, images {'below' if stem == 'cifar' else 'of at least'} " \
              f"{models.resnet.SMALL_INPUT_SIDE} pixels"
    if stem == "cifar":
        why += "; a deviation from the paper's ImageNet layout"
    return stem, why


def model_image_side(model):
    """The side large images (a folder, ImageNet) are cropped to for ``model`` by default: its own input's."""
    return models.get_spec(model).input_shape[0]


def image_size_notes(config, info):
    """One line when the image side is the model's input side, one warning when the images are enlarged more
    than ``UPSAMPLING_WARNING`` times (not for the digits demo, enlarged by design)."""
    from training import data

    side, notes = info.image_shape[0], []
    if info.size_from_model:
        notes.append(f"image size {side}x{side}: {config.model}'s input size (--image_size=N for another)")
    factor = data.upsampling(info)
    if factor and factor > UPSAMPLING_WARNING and config.dataset != recipes.DIGITS_DATASET:
        notes.append(f"warning: the images are upsampled {factor:.1f}x (shorter side {info.native_side} to "
                     f"{info.recipe.resize} pixels): more time and memory, no more detail; --image_size=N sets "
                     "another side")
    return tuple(notes)


def _check_image_shape(model, image_shape):
    side = models.get_spec(model).min_input_side
    if min(image_shape[:2]) < side:
        raise UsageError(f"--model={model} needs images of at least {side}x{side}, got "
                         f"{'x'.join(str(d) for d in image_shape[:2])} (--image_size)")


def build_model(config, recipe, info, stem=None):
    """The network from ``models.get_model``, float32 logits under mixed precision.

    ``stem``: "imagenet" or "cifar" for a network that takes one (see ``resolve_stem``).
    """
    model = models.get_model(
        config.model,
        activation=config.activation,
        target_loss=config.target_loss,
        steps=config.staircase_steps,
        scale_by_grad=config.scale_by_grad,
        weight_decay=recipe.weight_decay,
        batch_norm_weight_decay=recipe.batch_norm_weight_decay,
        input_shape=tuple(info.image_shape),
        classes=info.num_classes,
        **({} if stem is None else {"stem": stem}),
    )
    if config.mixed_precision:
        # Softmax cross-entropy in float32: cast the logits of the last layer.
        logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(
            model.outputs[0]
        )
        model = keras.Model(model.inputs, logits, name=model.name)
    return model


def check_same_run(model_dir, settings):
    """Refuse to resume a checkpoint written for another network or data set."""
    if tf.train.latest_checkpoint(os.path.join(model_dir, files.CHECKPOINT_DIR)) is None:
        return
    previous = files.read_json(os.path.join(model_dir, files.SETTINGS_FILE))
    if not previous:
        return
    previous = config_lib.upgrade_settings(previous)
    for key in config_lib.SAME_RUN_KEYS:
        if key in previous and previous[key] != settings[key]:
            raise UsageError(
                f"--model_dir {model_dir} holds a run with {key}={previous[key]!r}, "
                f"this command has {key}={settings[key]!r}; resume with the same "
                "settings or pass another --model_dir"
            )


def setup(config):
    """Everything ``fit`` needs, the training state restored; see the module docstring."""
    from training import data  # imports tensorflow-datasets only when training

    if config.strategy == "multi_worker" and not config.model_dir:
        raise UsageError("--strategy=multi_worker needs an explicit --model_dir, the same "
                         "for every worker, on a file system they share")
    # Devices and strategy first: both must exist before TensorFlow initialises.
    devices = distribute.parse_devices(config.devices)
    distribute.configure_devices(devices)
    strategy = distribute.make_strategy(config.strategy, devices)
    distribute.check_jit_compile(strategy, config.jit_compile)

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    resolved = recipes.resolve(config.recipe, config.model, config.activation,
                               config.dataset, config.overrides)
    recipe = resolved.recipe
    if "momentum" in config.overrides and recipe.optimizer != "sgd":
        log(f"note: --momentum is used by --optimizer=sgd only (this run uses {recipe.optimizer})")

    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        raise UsageError(
            f"--batch_size {recipe.batch_size} (global) is not divisible by the "
            f"{replicas} replicas of this run"
        )

    model_dir = config.model_dir or default_model_dir(config)
    try:
        train_ds, eval_ds, info = data.load(
            config.dataset, batch_size=recipe.batch_size, image_size=config.image_size,
            data_dir=config.data_dir, manual_dir=config.manual_dir, seed=config.seed,
            min_image_size=min_image_side(config.model), model_image_size=model_image_side(config.model))
    except data.DatasetError as error:
        raise UsageError(str(error)) from error
    if info.skipped_files:
        log(f"skipped {info.skipped_files} unreadable image file(s) in {config.dataset}")
    _check_image_shape(config.model, info.image_shape)

    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch is None and info.train_examples is not None:
        steps_per_epoch = info.train_examples // recipe.batch_size
        if steps_per_epoch < 1:
            raise UsageError(
                f"the training split has {info.train_examples} examples, fewer than "
                f"one batch of {recipe.batch_size}; lower --batch_size"
            )
    train_from = info.train_from if steps_per_epoch is not None else None
    if train_from is not None:
        # Epochs of exactly steps_per_epoch batches, the data cycling on, seekable for resume.
        train_ds = train_from(0)
    elif steps_per_epoch is not None:
        log("note: this data set's size is unknown: a resumed run will not replay its data order")
        train_ds = train_ds.repeat()
    if config.eval_steps is not None:
        eval_ds = eval_ds.take(config.eval_steps)

    stem, stem_reason = resolve_stem(config, info.image_shape)
    strategy_text = distribute.describe(strategy)
    settings = config_lib.settings(config, resolved, info, strategy_text, steps_per_epoch, stem)
    write_dir = distribute.WriteDir.for_strategy(model_dir, strategy)
    try:
        if write_dir.chief:
            check_same_run(model_dir, settings)
        model, checkpoint, epochs_done, batches_done = _build(
            config, recipe, info, strategy, model_dir, write_dir, stem)
    except BaseException:
        write_dir.cleanup()
        raise
    warning = recipes.batch_norm_decay_warning(resolved, config.activation, any(
        isinstance(layer, (keras.layers.BatchNormalization, BatchNormThreshold)) for layer in model.layers))
    if warning:
        log(warning)
    return Setup(strategy, strategy_text, resolved, info, train_ds, eval_ds, steps_per_epoch,
                 model_dir, write_dir, model, checkpoint, epochs_done, batches_done, settings, train_from,
                 stem_reason, image_size_notes(config, info))


def _build(config, recipe, info, strategy, model_dir, write_dir, stem=None):
    """Model, compiled, with its training state restored from the last checkpoint."""
    policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy(
            "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
        )
    try:
        with strategy.scope():
            model = build_model(config, recipe, info, stem)
            model.compile(
                optimizer=recipes.optimizer(recipe),
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
                final_model=os.path.join(model_dir, files.FINAL_MODEL),
            )
            try:
                epochs_done, batches_done = checkpoint.restore(model)
            except ValueError as error:  # the checkpoint does not fit this model
                raise UsageError(str(error)) from error
    finally:
        keras.config.set_dtype_policy(policy)
    return model, checkpoint, epochs_done, batches_done
