#!/usr/bin/env python3
"""Train the networks of Friesen & Domingos (ICLR 2018) with hard-threshold or
quantized activations, by feasible target propagation (FTPROP-MB).

    python train.py                                   # ResNet-18, step, FTP-SH on digits
    python train.py --model=convnet4 --dataset=cifar10 --activation=staircase
    python train.py --model=resnet18 --dataset=imagenet2012 --manual_dir=/data/ilsvrc

``--recipe=paper`` (the default) takes the optimiser, learning rate, batch
size, epochs, decay epochs and weight decay of the chosen model and activation
from the paper's table; any of these flags given explicitly wins. Rerun the
same command with the same ``--model_dir`` to resume a run that was stopped.
``python train.py --helpfull`` lists every flag.

Exit status: 0 on success, 2 for bad input (one line on stderr), 1 when the
loss diverged (NaN/inf).
"""

import os
import sys

if __name__ == "__main__":  # as a program, not when imported (by tests, say)
    # Before TensorFlow loads. Keep its C++ INFO/WARNING lines quiet, and use the
    # oneDNN CPU kernels: several times faster convolution gradients on x86 CPUs,
    # where this TensorFlow build leaves them off (TF_ENABLE_ONEDNN_OPTS=0 opts out).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app, flags, logging  # noqa: E402

import models  # noqa: E402
from keras_ftprop import target_losses  # noqa: E402
from training import callbacks, distribute, recipes, run  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "train.py"

# Model.
flags.DEFINE_enum("model", "resnet18", models.MODEL_NAMES,
                  "Network to train (the paper's: convnet4, convnet8, alexnet, resnet18).")
flags.DEFINE_enum("activation", "step", models.ACTIVATION_NAMES,
                  "Hidden activation: step (sign, -1/+1), staircase (quantized ReLU), "
                  "relu, saturated_relu (min(max(x, 0), 1)).")
flags.DEFINE_string("target_loss", "soft_hinge",
                    "Per-unit target loss of step/staircase, i.e. their backward pass: "
                    f"{', '.join(target_losses.names())}. soft_hinge is the paper's FTP-SH, "
                    "sste its saturated straight-through baseline.")
flags.DEFINE_integer("steps", None, "Staircase steps (levels - 1); default: the paper's, "
                     "3 (2-bit) for the CIFAR nets and AlexNet, 5 for ResNet-18.", lower_bound=1)
flags.DEFINE_boolean("no_scale_by_grad", False,
                     "Weight each unit's target loss by 1/batch_size instead of by the size "
                     "of its upstream gradient (the reference's --no-tp-grad-scale).")

# Recipe and optimisation.
flags.DEFINE_enum("recipe", "paper", recipes.RECIPE_NAMES,
                  "paper: optimiser, learning rate, batch size, epochs, LR decay and weight "
                  "decay from the paper's table for --model and --activation (on the digits "
                  "demo set: Adam 1e-3, batch 64, 5 epochs); none: Adam 1e-3, batch 64, "
                  "10 epochs. Explicit flags below override either.")
flags.DEFINE_integer("epochs", None, "Epochs to train (default: from --recipe).")
flags.DEFINE_integer("batch_size", None,
                     "Global batch size, split over all replicas (default: from --recipe).")
flags.DEFINE_enum("optimizer", None, recipes.OPTIMIZERS, "Optimiser (default: from --recipe).")
flags.DEFINE_float("learning_rate", None, "Initial learning rate (default: from --recipe).")
flags.DEFINE_float("momentum", None, "SGD momentum (default: from --recipe, 0.9).")
flags.DEFINE_float("weight_decay", None,
                   "Coupled L2 weight decay, as PyTorch's weight_decay (default: from --recipe).")
flags.DEFINE_float("lr_decay", None,
                   "Factor applied to the learning rate at each --lr_decay_epochs (default 0.1).")
flags.DEFINE_list("lr_decay_epochs", None,
                  "Comma-separated 1-based epochs from which the learning rate is multiplied "
                  "by --lr_decay once more, e.g. 30,60 (default: from --recipe; empty: none).")

# Data.
flags.DEFINE_string("dataset", "digits",
                    "digits (scikit-learn's handwritten digits, bundled), any "
                    "tensorflow-datasets image-classification name (cifar10, imagenet2012, "
                    "...), folder:PATH (PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg) "
                    "or idx:DIR (MNIST-format files).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
flags.DEFINE_string("manual_dir", None,
                    "Directory holding manually downloaded files (the ILSVRC2012 tars for "
                    "imagenet2012).")
flags.DEFINE_integer("image_size", None,
                     "Side of the (square) training images; default: the data set's own "
                     "(CIFAR 32, ImageNet crops 224), at least the model's minimal input "
                     "(digits are resized to 32, 60 for alexnet).", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", None,
                     "Batches per epoch (default: one pass over the training split).",
                     lower_bound=1)
flags.DEFINE_integer("eval_steps", None,
                     "Evaluate on this many batches only (default: the whole evaluation split).",
                     lower_bound=1)

# Execution.
flags.DEFINE_integer("seed", run.DEFAULT_SEED, "Random seed (the reference's by default).")
flags.DEFINE_boolean("mixed_precision", False,
                     "Compute in float16 (GPU) or bfloat16 (CPU), keep variables and the "
                     "logits in float32.")
flags.DEFINE_boolean("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGY_NAMES,
                  "auto: MirroredStrategy over all GPUs when there are several, else one "
                  "device; default: one device; mirrored: MirroredStrategy over --devices or "
                  "all GPUs; multi_worker: MultiWorkerMirroredStrategy over the cluster in the "
                  "TF_CONFIG environment variable.")
flags.DEFINE_list("devices", None,
                  "Devices to mirror over, e.g. /gpu:0,/gpu:1; /cpu:0,/cpu:1 splits the CPU "
                  "into that many logical devices.")

# Output.
flags.DEFINE_string("model_dir", None,
                    "Run directory: checkpoints, TensorBoard logs, metrics.csv, settings, "
                    "final and best models and their SavedModel exports. Rerunning with the "
                    "same --model_dir resumes. Default: runs/<model>-<activation>-<loss>-<time>.")
flags.DEFINE_integer("save_every_steps", 500,
                     "Also checkpoint every this many batches within an epoch (0: only at "
                     "the end of each epoch), bounding the work lost to a kill.", lower_bound=0)
flags.DEFINE_enum("export_tflite", "none", ["none", "int8", "float", "both"],
                  "After training, also write export/model_int8.tflite (full-integer, calibrated on "
                  "500 training images) and/or export/model_float.tflite, and print their top-1 "
                  "agreement with Keras on the evaluation split.")
flags.DEFINE_integer("diagnostics", 0,
                     "Log target statistics of every step/staircase layer (no-target, satisfied "
                     "and active fractions, target loss, output flips, pre-activation "
                     "histograms) every this many steps to TensorBoard; 0: off.", lower_bound=0)
flags.DEFINE_enum("verbose", "auto", ["auto", "0", "1", "2"],
                  "Keras progress output: 1 progress bar, 2 one line per epoch, 0 silent, "
                  "auto (1, or 2 when not on a terminal under some launchers).")


@flags.validator("target_loss", message="unknown target loss")
def _known_target_loss(name):
    try:
        target_losses.get(name)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return True


@flags.validator("lr_decay_epochs")
def _integer_epochs(values):
    for value in values or ():
        try:
            int(value)
        except ValueError:
            raise flags.ValidationError(f"not an epoch number: {value!r}") from None
    return True


_RECIPE_FLAGS = ("optimizer", "learning_rate", "momentum", "batch_size", "epochs",
                 "lr_decay", "lr_decay_epochs", "weight_decay")


def _flags_text():
    """The values of this program's flags, one ``--name=value`` a line (a --flagfile)."""
    module_flags = FLAGS.get_flags_for_module(sys.modules[__name__])
    lines = [flag.serialize() for flag in sorted(module_flags, key=lambda f: f.name)
             if flag.value is not None]
    return "\n".join(line for line in lines if line) + "\n"


def config_from_flags():
    """A ``training.run.Config`` from the parsed flags."""
    overrides = {}
    for name in _RECIPE_FLAGS:
        value = FLAGS[name].value
        if value is not None:
            overrides[name] = [int(v) for v in value] if name == "lr_decay_epochs" else value
    return run.Config(
        model=FLAGS.model,
        activation=FLAGS.activation,
        target_loss=FLAGS.target_loss,
        steps=FLAGS.steps,
        scale_by_grad=not FLAGS.no_scale_by_grad,
        recipe=FLAGS.recipe,
        overrides=overrides,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        image_size=FLAGS.image_size,
        steps_per_epoch=FLAGS.steps_per_epoch,
        eval_steps=FLAGS.eval_steps,
        seed=FLAGS.seed,
        mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile,
        strategy=FLAGS.strategy,
        devices=",".join(FLAGS.devices) if FLAGS.devices else None,
        model_dir=FLAGS.model_dir,
        save_every_steps=FLAGS.save_every_steps,
        verbose=FLAGS.verbose,
        diagnostics=FLAGS.diagnostics,
        export_tflite=FLAGS.export_tflite,
        flags_text=_flags_text(),
    )


def error(message, code=2):
    """Print ``train.py: error: message`` on stderr; returns ``code``."""
    sys.stdout.flush()
    print(f"{PROGRAM}: error: {message}", file=sys.stderr, flush=True)
    return code


def execute():
    """Train with the parsed flags. Returns the exit status."""
    config = config_from_flags()
    try:
        summary = run.train(config)
    except run.UsageError as bad_input:
        return error(bad_input)
    except callbacks.NonFiniteLossError as diverged:
        print(flush=True)  # end a progress bar line
        if diverged.last_saved:
            epochs_done, batches_done = diverged.last_saved
            state = f"after epoch {epochs_done}" + (
                f" and {batches_done} batches of epoch {epochs_done + 1}" if batches_done else "")
            where = (f"the last good checkpoint, saved {state}, is intact in "
                     f"{diverged.checkpoint_dir}: rerun with the same --model_dir to resume "
                     "from it, with a lower --learning_rate")
        else:
            where = "no checkpoint had been saved yet; try a lower --learning_rate"
        return error(f"{diverged}; training stopped: {where}", code=1)
    run.print_summary(summary, config)
    return 0


def parse(argv):
    """Parse ``argv`` (program name first) into FLAGS; bad flags end the process with status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as bad_flag:
        sys.exit(error(bad_flag))


def main(argv):
    """Run as from the command line: ``main(["train.py", "--epochs=1", ...])`` -> exit status.

    Parses ``argv`` afresh (flags of an earlier call are reset), so tests can
    call it repeatedly in one process.
    """
    FLAGS.unparse_flags()
    try:
        extra = FLAGS(list(argv))
    except flags.Error as bad_flag:
        return error(bad_flag)
    if len(extra) > 1:
        return error(f"unexpected arguments: {' '.join(extra[1:])}")
    return execute()


def _app_main(argv):
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines on saving; -v 0 shows them
    if len(argv) > 1:
        sys.exit(error(f"unexpected arguments: {' '.join(argv[1:])}"))
    sys.exit(execute())


if __name__ == "__main__":
    app.run(_app_main, flags_parser=parse)
