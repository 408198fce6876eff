"""Time per training step of ``train.py`` (its callbacks and progress output) against a bare ``model.fit``.

Sets a run up as ``train.py`` does (``training.setup``: model,
compiled and checkpoint-restored, data pipeline and strategy) at its default
flags unless told otherwise (ResNet-18, step units, FTP-SH, digits at 32x32,
batch 64, the default strategy, a checkpoint every 500 steps, a progress
bar), then trains that one model on that one pipeline in interleaved rounds
of one epoch per variant (the order alternating from round to round):

* ``train.py``: ``model.fit`` with ``train.py``'s callbacks
  (``training.callbacks.fit_callbacks``: NaN stop, target-loss schedule,
  learning rate, CSV, TensorBoard, checkpoint, best model) and its
  ``verbose``;
* ``bare``: ``model.fit`` with no callback and ``verbose=0``, which lets
  Keras dispatch the batch ends asynchronously.

Both validate on the evaluation set. Per epoch it times the training steps
(from the start of the second step to the start of validation: every
per-batch callback, and the wait for the last step; wall and CPU time) and
the whole epoch (with the first step, validation and ``train.py``'s
epoch-end saving), and prints the medians over rounds and their ratios to
``bare`` (target for the steps: <= 1.03). Needs 2 or more steps per epoch.

    python benchmarks/step_overhead.py [--rounds 7] [--model resnet18] [--steps_per_epoch N]
"""

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as train.py; not on import, where it would leak into child processes
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from training import callbacks, files  # noqa: E402
from training import config as config_lib  # noqa: E402
from training import setup as setup_lib  # noqa: E402

VARIANTS = ("train.py", "bare")
KINDS = ("steps", "cpu", "epoch")  # EpochClock's lists


class EpochClock(keras.callbacks.Callback):
    """Per epoch, seconds per training step from the start of its second step to the start of
    validation (wall, and this process's CPU time), and wall seconds per step of the whole epoch.

    The first step of a ``fit`` also does once-per-``fit`` work (TensorBoard writes the
    graph then), which ``train.py`` does once per run, not once per epoch as this benchmark
    would. No batch-end hook, so Keras's asynchronous batch-end dispatch stays as it is.
    """

    def __init__(self):
        super().__init__()
        self.steps, self.cpu, self.epoch = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._start, self._end = time.perf_counter(), None, None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            self._start = time.perf_counter(), time.process_time()

    def on_test_begin(self, logs=None):
        if self._end is None:
            self._end = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        steps = self.params["steps"] - 1
        self.steps.append((self._end[0] - self._start[0]) / steps)
        self.cpu.append((self._end[1] - self._start[1]) / steps)
        self.epoch.append((end - self._epoch_start) / self.params["steps"])


def train_py_callbacks(config, setup):
    """The callback list and ``verbose`` that ``train.py`` gives ``fit`` for ``config``."""
    write_path = setup.write_dir.path
    log_dir = os.path.join(write_path, files.TENSORBOARD_DIR)
    fit_callbacks = callbacks.fit_callbacks(
        setup.resolved.recipe, setup.steps_per_epoch, setup.checkpoint,
        callbacks.BestModelSaver(setup.model_dir, write_path),
        os.path.join(write_path, files.METRICS_FILE),
        log_dir=log_dir if importlib.util.find_spec("tensorboard") else None)
    verbose = config.verbose if config.verbose == "auto" else int(config.verbose)
    return fit_callbacks, verbose


def time_fits(config, *, rounds=7, warmup=1):
    """{variant: {"steps", "cpu", "epoch": [s per step, one per round]}}, the set-up
    and ``train.py``'s callbacks."""
    setup = setup_lib.setup(config)
    try:
        model, spe = setup.model, setup.steps_per_epoch
        fit_callbacks, verbose = train_py_callbacks(config, setup)
        times = {variant: {kind: [] for kind in KINDS} for variant in VARIANTS}
        for r in range(warmup + rounds):
            for variant in VARIANTS[::1 if r % 2 else -1]:  # who goes first alternates
                clock = EpochClock()
                if variant == "train.py":
                    model.fit(setup.train_ds, initial_epoch=r, epochs=r + 1, steps_per_epoch=spe,
                              validation_data=setup.eval_ds, callbacks=fit_callbacks + [clock],
                              verbose=verbose, shuffle=False)
                else:
                    model.fit(setup.train_ds, epochs=1, steps_per_epoch=spe,
                              validation_data=setup.eval_ds, callbacks=[clock], verbose=0,
                              shuffle=False)
                if r >= warmup:  # the first fits trace the step and the evaluation
                    for kind in KINDS:
                        times[variant][kind].append(getattr(clock, kind)[0])
    finally:
        setup.write_dir.cleanup()
    return times, setup, fit_callbacks


def table(times, baseline="bare"):
    """Markdown rows: variant, then per kind (steps, their CPU time, whole epoch) the median
    ms per step and its ratio to the baseline's median."""
    base = {kind: statistics.median(times[baseline][kind]) for kind in KINDS}
    rows = ["| variant | ms/step, steps | ratio | CPU ms/step, steps | ratio "
            "| ms/step, whole epoch | ratio |", "|---|" + "---:|" * 6]
    for variant, samples in times.items():
        cells = []
        for kind in KINDS:
            median = statistics.median(samples[kind])
            cells += [f"{1000 * median:.1f}", f"{median / base[kind]:.3f}"]
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def round_ratios(times, kind, baseline="bare", variant="train.py"):
    """variant / baseline of each round (the two epochs next to each other in time)."""
    return [a / b for a, b in zip(times[variant][kind], times[baseline][kind])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--model", default=config_lib.Config.model)
    parser.add_argument("--activation", default=config_lib.Config.activation)
    parser.add_argument("--dataset", default=config_lib.Config.dataset)
    parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps_per_epoch", type=int, default=None, help="default: one pass")
    parser.add_argument("--verbose", default=config_lib.Config.verbose, choices=["auto", "0", "1", "2"])
    args = parser.parse_args(argv)
    model_dir = tempfile.mkdtemp(prefix="step_overhead-")
    config = config_lib.Config(
        model=args.model, activation=args.activation, dataset=args.dataset,
        overrides={"batch_size": args.batch_size} if args.batch_size else {},
        steps_per_epoch=args.steps_per_epoch, verbose=args.verbose, model_dir=model_dir)
    try:
        times, setup, fit_callbacks = time_fits(config, rounds=args.rounds, warmup=args.warmup)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    names = ", ".join(type(c).__name__ for c in fit_callbacks)
    print(f"\n{config.model}/{config.activation} on {setup.info.name}, images "
          f"{'x'.join(map(str, setup.info.image_shape))}, batch {setup.resolved.recipe.batch_size}, "
          f"{setup.steps_per_epoch} steps per epoch, strategy {setup.strategy_text}, "
          f"median of {args.rounds} interleaved rounds, {os.cpu_count()} CPUs, "
          f"load average {load:.2f}\ntrain.py callbacks: {names}; verbose={config.verbose}, "
          f"stdout {'a terminal' if sys.stdout.isatty() else 'not a terminal'}\n")
    print(table(times))
    for kind in KINDS:
        ratios = round_ratios(times, kind)
        print(f"\ntrain.py / bare per round, {kind}: " + " ".join(f"{r:.3f}" for r in ratios)
              + f" (median {statistics.median(ratios):.3f})", end="")
    print(flush=True)
    return times


if __name__ == "__main__":
    main()
