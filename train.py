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

Exit status: 0 on success (and for ``--help``/``--helpfull``, which absl
would end with 1); 2 for input it checked and refused (one line on stderr);
1 when the loss diverged (NaN/inf, one line) or for an unexpected error (a
bug: its traceback); 3 on the surviving workers of a multi-worker run when
another worker stopped (one line naming it and the last checkpoint; the
traceback is logged at INFO, shown by ``--verbosity=0``): rerun the same
command on every worker to resume; 75 (sysexits' EX_TEMPFAIL: try again) when SIGTERM
or SIGINT stopped training, after the step it was in, with a checkpoint of that step
(one line saying where): rerun the same command to resume. A second signal ends the
process at once, as without this handling. On a terminal Keras draws progress bars;
otherwise (a log file, a pipe) it prints one line per epoch (``--verbose=auto``).
"""

import os
import sys
import traceback

if __name__ == "__main__":  # as a program, not when imported (by tests, say)
    # Before TensorFlow loads. Keep its C++ INFO/WARNING lines quiet, and use the
    # oneDNN CPU kernels: several times faster convolution gradients on x86 CPUs,
    # where this TensorFlow build leaves them off (TF_ENABLE_ONEDNN_OPTS=0 opts out).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from training.console import once_each_on_stderr

    with once_each_on_stderr():  # two of TensorFlow's libraries log the same start-up lines
        import tensorflow  # noqa: F401

from absl import app, flags, logging  # noqa: E402

from keras_ftprop import target_losses  # noqa: E402
from training import callbacks, config, run  # noqa: E402
from training.distribute import WorkerLostError  # noqa: E402
from training.errors import UsageError  # noqa: E402
from training.preemption import Stopped  # noqa: E402
from training.report import print_summary  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "train.py"
LOST_WORKER_STATUS = 3
STOPPED_STATUS = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the same command should be run again


def _define_flags():
    """One flag per field of ``training.config.Config`` and of the recipe, declared there."""
    for kind, name, default, help_text, args in config.flag_declarations():
        getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help_text, **args)


_define_flags()


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


def _flags_text():
    """The values of this program's flags, one ``--name=value`` a line (a --flagfile)."""
    module_flags = FLAGS.get_flags_for_module(sys.modules[__name__])
    lines = [flag.serialize() for flag in sorted(module_flags, key=lambda f: f.name)
             if flag.value is not None]
    return "\n".join(line for line in lines if line) + "\n"


def error(message, code=2):
    """Print ``train.py: error: message`` on stderr; returns ``code``."""
    sys.stdout.flush()
    print(f"{PROGRAM}: error: {message}", file=sys.stderr, flush=True)
    return code


def _saved_after(last_saved):
    """``saved after epoch 2 and 5 batches of epoch 3`` for (2, 5); ``none saved yet`` for None."""
    if not last_saved:
        return "none saved yet"
    epochs_done, batches_done = last_saved
    return f"saved after epoch {epochs_done}" + (
        f" and {batches_done} batches of epoch {epochs_done + 1}" if batches_done else "")


def execute():
    """Train with the parsed flags. Returns the exit status."""
    try:
        run_config = config.from_flags(FLAGS, flags_text=_flags_text())
        summary = run.train(run_config)
    except UsageError as bad_input:
        return error(bad_input)
    except callbacks.NonFiniteLossError as diverged:
        print(flush=True)  # end a progress bar line
        if diverged.last_saved:
            where = (f"the last good checkpoint, {_saved_after(diverged.last_saved)}, is intact in "
                     f"{diverged.checkpoint_dir}: rerun with the same --model_dir to resume "
                     "from it, with a lower --learning_rate")
        else:
            where = "no checkpoint had been saved yet; try a lower --learning_rate"
        return error(f"{diverged}; training stopped: {where}", code=1)
    except WorkerLostError as lost:
        logging.info("the error that stopped training:\n%s", "".join(traceback.format_exception(lost.__cause__)))
        step = f" (step {lost.last_step})" if lost.last_step is not None else ""
        return error(f"lost {lost.worker}; the last checkpoint, {_saved_after(lost.last_saved)}{step}, is in "
                     f"{lost.checkpoint_dir}: rerun the same command on every worker to resume",
                     code=LOST_WORKER_STATUS)
    except Stopped as stopped:
        print(flush=True)  # end a progress bar line
        every = " on every worker" if stopped.cluster else ""
        print(f"{PROGRAM}: {stopped}; checkpoint saved in {stopped.checkpoint_dir}: rerun the same command{every} "
              "to resume", file=sys.stderr, flush=True)
        return STOPPED_STATUS
    print_summary(summary, run_config)
    return 0


HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull",
              "--helpxml", "-helpxml")


def parse(argv):
    """Parse ``argv`` (program name first) into FLAGS; bad flags end the process with status 2.

    absl's help flags print the help and exit 1; asked for, help is a success here: status 0.
    """
    try:
        return FLAGS(argv)
    except flags.Error as bad_flag:
        sys.exit(error(bad_flag))
    except SystemExit as stop:
        asked = any(arg in HELP_FLAGS for arg in argv[1:argv.index("--") if "--" in argv else None])
        if stop.code == 1 and asked:
            sys.exit(0)
        raise


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
