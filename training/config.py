"""The settings of a ``train.py`` run, declared once.

Each field of ``Config`` (and of ``recipes.TrainingRecipe``, whose flags
override the recipe) carries its flag (``training.options``): ``train.py``
defines the flags from ``flag_declarations()``, ``from_flags`` builds the
``Config``, ``settings`` writes the fields marked ``saved`` to settings.json,
and ``SAME_RUN_KEYS`` are the settings a checkpoint depends on (resuming with
others is refused).
"""

from __future__ import annotations

import dataclasses

import models
from keras_ftprop import target_losses
from training import distribute, recipes, serving
from training.errors import UsageError
from training.options import check_bounds, declarations, names, option, values

DEFAULT_SEED = 468412397  # the reference's seed


def _joined(devices):
    return ",".join(devices) or None


@dataclasses.dataclass
class Config:
    """Everything ``train`` needs, as parsed from the command line (one flag a field)."""

    # Model.
    model: str = option("enum", "Network to train (the paper's: convnet4, convnet8, alexnet, "
                        "resnet18).", "resnet18", enum_values=models.MODEL_NAMES, same_run=True)
    activation: str = option("enum", "Hidden activation: step (sign, -1/+1), staircase (quantized "
                             "ReLU), relu, saturated_relu (min(max(x, 0), 1)).", "step",
                             enum_values=models.ACTIVATION_NAMES, same_run=True)
    target_loss: str = option(
        "string", "Per-unit target loss of step/staircase, i.e. their backward pass: "
        f"{', '.join(target_losses.names())}. soft_hinge is the paper's FTP-SH, sste its "
        "saturated straight-through baseline.", "soft_hinge", same_run=True)
    staircase_steps: int | None = option(
        "integer", "Staircase steps (levels - 1); default: the paper's, 3 (2-bit) for the CIFAR "
        "nets and AlexNet, 5 for ResNet-18.", None, lower_bound=1, same_run=True)
    stem: str = option(
        "enum", "Layers before the first stage of resnet18, resnet34 and bireal_resnet18: imagenet (the "
        "paper's 7x7 /2 convolution and 3x3 /2 max pool), cifar (3x3 /1 convolution, no pool) or auto: "
        "cifar for images below 64 pixels, except on the digits demo (imagenet: minutes, not an hour). "
        "The resolved stem is printed and saved in settings.json.", "auto",
        enum_values=models.STEMS)
    scale_by_grad: bool = option(
        "boolean", "Weight each unit's target loss by 1/batch_size instead of by the size of its "
        "upstream gradient (the reference's --no-tp-grad-scale).", True,
        flag="no_scale_by_grad", inverted=True, same_run=True)

    # Recipe; its settings are recipes.TrainingRecipe's flags, gathered in ``overrides``.
    recipe: str = option(
        "enum", "paper: optimiser, learning rate, batch size, epochs, LR decay and weight decay "
        "from the paper's table for --model and --activation (on the digits demo set: Adam 1e-3, "
        "batch 64, 5 epochs); none: Adam 1e-3, batch 64, 10 epochs. Explicit flags below override "
        "either.", "paper", enum_values=recipes.RECIPE_NAMES, saved=True)
    overrides: dict = dataclasses.field(default_factory=dict)  # the recipe flags given

    # Data.
    dataset: str = option(
        "string", "digits (scikit-learn's handwritten digits, bundled), any tensorflow-datasets "
        "image-classification name (cifar10, imagenet2012, ...), folder:PATH (PATH/train/<class>/"
        "*.jpg and PATH/val/<class>/*.jpg) or idx:DIR (MNIST-format files).", "digits",
        same_run=True)
    data_dir: str | None = option("string", "tensorflow-datasets data directory.", None)
    manual_dir: str | None = option("string", "Directory holding manually downloaded files (the "
                                    "ILSVRC2012 tars for imagenet2012).", None)
    image_size: int | None = option(
        "integer", "Side of the (square) training images; default: small images (digits, idx:, CIFAR, "
        "MNIST) their own, at least the model's minimal input (digits and MNIST are resized to 32, 60 for "
        "alexnet); large ones (folder:, ImageNet) are cropped to the network's own input (32 for the "
        "convnets, 224 for alexnet and the resnets).", None, lower_bound=1)
    steps_per_epoch: int | None = option("integer", "Batches per epoch (default: one pass over the "
                                         "training split).", None, lower_bound=1)
    eval_steps: int | None = option("integer", "Evaluate on this many batches only (default: the "
                                    "whole evaluation split).", None, lower_bound=1, saved=True)

    # Execution.
    seed: int = option("integer", "Random seed (the reference's by default).", DEFAULT_SEED,
                       saved=True)
    mixed_precision: bool = option("boolean", "Compute in float16 (GPU) or bfloat16 (CPU), keep "
                                   "variables and the logits in float32.", False, same_run=True)
    jit_compile: bool = option("boolean", "Compile the training step with XLA.", False, saved=True)
    deterministic: bool = option(
        "boolean", "Deterministic ops (tf.config.experimental.enable_op_determinism): a run killed "
        "and resumed ends with the weights and metrics.csv of the uninterrupted run. Slower on GPU.",
        False, saved=True)
    strategy: str = option(
        "enum", "auto: MirroredStrategy over all GPUs when there are several, else one device; "
        "default: one device; mirrored: MirroredStrategy over --devices or all GPUs; "
        "multi_worker: MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment "
        "variable.", "auto", enum_values=distribute.STRATEGY_NAMES)
    devices: str | None = option("list", "Devices to mirror over, e.g. /gpu:0,/gpu:1; /cpu:0,/cpu:1 "
                                 "splits the CPU into that many logical devices.", None, parse=_joined)

    # Output.
    model_dir: str | None = option(
        "string", "Run directory: checkpoints, TensorBoard logs, metrics.csv, settings, final and "
        "best models and their SavedModel exports. Rerunning with the same --model_dir resumes. "
        "Default: runs/<model>-<activation>-<loss>-<time>.", None)
    save_every_steps: int = option(
        "integer", "Also checkpoint every this many batches within an epoch (0: only at the end of "
        "each epoch), bounding the work lost to a kill.", 500, lower_bound=0, saved=True)
    export_tflite: str = option(
        "enum", "After training, also write export/model_int8.tflite (full-integer, calibrated on "
        "500 training images) and/or export/model_float.tflite, and print their top-1 agreement "
        "with Keras on the evaluation split.", "none", enum_values=["none", "int8", "float", "both"])
    qat_epochs: int = option(
        "integer", "After training, fine-tune the quantization-aware copy of the network (kernels, input, "
        "threshold inputs rounded as in its int8 TFLite model) for this many epochs at the final learning "
        "rate, save it as qat.keras and, with --export_tflite=int8 or both, export it to "
        "export/model_qat_int8.tflite; prints int8 agreement and accuracy before and after. 0: off.",
        0, lower_bound=0)
    exact_input_staircases: bool = option(
        "boolean", "int8 exports and the quantization-aware copy: decide a staircase on the image on its "
        "convolution's exact accumulator, as that convolution's own requantization placed to round alike on "
        "every TFLite runtime (a channel it cannot place: one copy of the convolution per threshold); "
        "--noexact_input_staircases requantizes, then compares.", True)
    diagnostics: int = option(
        "integer", "Log target statistics of every step/staircase layer (no-target, satisfied and "
        "active fractions, target loss, output flips, pre-activation histograms) every this many "
        "steps to TensorBoard; 0: off.", 0, lower_bound=0)
    verbose: str = option("enum", "Keras progress output: 1 progress bar, 2 one line per epoch, 0 "
                          "silent, auto (1, or 2 when not on a terminal under some launchers).",
                          "auto", enum_values=["auto", "0", "1", "2"])
    flags_text: str = ""  # every flag's value, for flags.txt

    def __post_init__(self):
        check_bounds(self, error=UsageError)


def flag_declarations():
    """``(kind, name, default, help, flag_args)`` of every flag of ``train.py``."""
    return declarations(Config) + declarations(recipes.TrainingRecipe, overrides_only=True)


def from_flags(flag_values, flags_text=""):
    """The ``Config`` of parsed flags (defined from ``flag_declarations()``)."""
    return Config(**values(Config, flag_values), flags_text=flags_text,
                  overrides=values(recipes.TrainingRecipe, flag_values, given_only=True))


# Settings a run computes (not flags) that its checkpoint depends on too.
_DERIVED_SAME_RUN = ("image_shape", "num_classes", "optimizer", "stem")
SAME_RUN_KEYS = names(Config, "same_run") + _DERIVED_SAME_RUN
# settings.json keys of earlier versions -> today's (their records stay readable).
RENAMED_SETTINGS = {"steps": "staircase_steps"}


def settings(config, resolved, info, strategy_text, steps_per_epoch, stem=None):
    """The run's settings.json: the saved flags, the resolved recipe, data, strategy and the
    evaluation transform its SavedModels serve (``training.serving``).

    ``stem``: the resolved stem of a network that has one ("imagenet" or "cifar"), else None.
    """
    out = {name: getattr(config, name) for name in names(Config, "saved")}
    out.update(
        stem=stem,
        optimizer=resolved.recipe.optimizer,
        resolved=resolved.as_dict(),
        sources=dict(resolved.sources),
        image_shape=list(info.image_shape),
        num_classes=info.num_classes,
        train_examples=info.train_examples,
        eval_examples=info.eval_examples,
        skipped_files=info.skipped_files,
        steps_per_epoch=steps_per_epoch,
        strategy=strategy_text,
        preprocessing=serving.preprocessing_settings(info.recipe),
    )
    return out


def upgrade_settings(saved):
    """A settings dict read from any version's settings.json, with today's keys."""
    return {RENAMED_SETTINGS.get(key, key): value for key, value in saved.items()}

