"""SIGTERM/SIGINT during training: the signal handling, and the stop with its checkpoint, on a tiny model.

Signals are real: ``os.kill`` to this process, handled by the handlers under test.
"""

import contextlib
import os
import signal
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.test_callbacks import STEPS, checkpoint_numbers, dataset, tiny_model
from training import callbacks, preemption


def send(signum):
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # Python runs the handler in the main thread, at its next check after this call


class Aborted(Exception):
    """Raised by the stand-in for a signal's previous handler: where the process would have ended."""


@contextlib.contextmanager
def previous_handlers(handler):
    """SIGTERM and SIGINT handled by ``handler`` (the handlers before training), then as before."""
    saved = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
    for s in saved:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_the_first_signal_is_recorded_and_the_previous_handlers_come_back():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    with previous_handlers(previous):
        with pytest.raises(RuntimeError, match="training failed"):
            with preemption.SignalCatcher() as catcher:
                assert catcher.installed and catcher.received is None and not catcher.is_set()
                send(signal.SIGTERM)
                assert catcher.received == "SIGTERM" and catcher.is_set()
                assert calls == []  # recorded, not acted on
                raise RuntimeError("training failed")  # an error ends the run anyway: nothing passed on
        assert all(signal.getsignal(s) is previous for s in preemption.STOP_SIGNALS)
        assert calls == []

        # Training ended normally before acting on the signal: the previous handler gets it on leaving.
        with preemption.SignalCatcher() as catcher:
            send(signal.SIGINT)
            assert catcher.received == "SIGINT" and calls == []
        time.sleep(0.01)
        assert calls == [signal.SIGINT]
        assert all(signal.getsignal(s) is previous for s in preemption.STOP_SIGNALS)


def test_a_second_signal_goes_to_the_previous_handler_at_once():
    def previous(signum, frame):
        raise Aborted(signal.Signals(signum).name)

    with previous_handlers(previous):
        with preemption.SignalCatcher() as catcher:
            send(signal.SIGTERM)
            with pytest.raises(Aborted, match="SIGINT"):
                send(signal.SIGINT)
            assert all(signal.getsignal(s) is previous for s in preemption.STOP_SIGNALS)
            assert catcher.received == "SIGTERM"
        assert all(signal.getsignal(s) is previous for s in preemption.STOP_SIGNALS)


def test_outside_the_main_thread_nothing_is_installed():
    before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
    seen = {}

    def run():
        with preemption.SignalCatcher() as catcher:
            seen["installed"] = catcher.installed
            seen["handlers"] = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"installed": False, "handlers": before}


class SendSignal(keras.callbacks.Callback):
    """Sends ``signum`` to this process as training batch ``at`` = (epoch, batch) begins, or, with
    ``evaluation``, as that epoch's evaluation begins: the signal arrives during that step."""

    def __init__(self, signum, at, evaluation=False):
        super().__init__()
        self.signum, self.at, self.evaluation = signum, at, evaluation
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if not self.evaluation and (self.epoch, batch) == self.at:
            send(self.signum)

    def on_test_begin(self, logs=None):
        if self.evaluation and self.epoch == self.at[0]:
            send(self.signum)


class CountSaves:
    """Counts ``tf.train.CheckpointManager.save`` calls by checkpoint number (the real save runs)."""

    def __init__(self, monkeypatch, during=None):
        self.numbers = []
        original = tf.train.CheckpointManager.save

        def save(manager, checkpoint_number=None, check_interval=True, options=None):
            self.numbers.append(checkpoint_number)
            if during is not None and checkpoint_number in during:
                # Runs once the checkpoint's files are written, before the index names it.
                options = tf.train.CheckpointOptions(experimental_write_callbacks=[during[checkpoint_number]])
            return original(manager, checkpoint_number, check_interval, options)

        monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def fit_with_signal(directory, sender, every_steps=0, cluster_resolver=None, extra=()):
    """Trains 3 epochs of STEPS batches with the stop callback last; returns (model, checkpoint)
    and the ``Stopped`` it raised (None if it ran through)."""
    model = tiny_model()
    checkpoint = callbacks.TrainingCheckpoint(directory, directory, every_steps=every_steps)
    checkpoint.restore(model)
    with preemption.SignalCatcher() as catcher:
        stop = preemption.StopOnSignal(catcher, checkpoint, cluster_resolver=cluster_resolver)
        try:
            model.fit(dataset(), epochs=3, steps_per_epoch=STEPS, validation_data=dataset(), validation_steps=2,
                      verbose=0, shuffle=False, callbacks=[sender, checkpoint, *extra, stop])
        except preemption.Stopped as stopped:
            return model, checkpoint, stopped
    stop.close()
    return model, checkpoint, None


def restored(directory):
    fresh = tiny_model()
    position = callbacks.TrainingCheckpoint(directory, directory).restore(fresh)
    return fresh, position


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_finishes_that_step_saves_it_and_stops(tmp_path, signum):
    directory = str(tmp_path / "checkpoints")
    model, _, stopped = fit_with_signal(directory, SendSignal(signum, at=(1, 2)))
    name = signal.Signals(signum).name
    assert (stopped.signal, stopped.epoch, stopped.batch, stopped.step, stopped.cluster) == (name, 2, 3, 8, False)
    assert str(stopped) == f"stopped by {name} at epoch 2, batch 3 (step 8)"
    assert int(model.optimizer.iterations.numpy()) == STEPS + 3  # the step in progress ran, no other
    assert checkpoint_numbers(directory) == [STEPS + 3]  # saved at that step; one checkpoint kept at rest
    fresh, position = restored(directory)
    assert position == (1, 3)
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("evaluation", [False, True], ids=["last step", "evaluation"])
def test_a_signal_in_the_last_step_or_the_evaluation_stops_at_the_epochs_end(tmp_path, monkeypatch, evaluation):
    """The epoch-end checkpoint is the one: no state 'every batch done, not evaluated' is written."""
    directory = str(tmp_path / "checkpoints")
    saves = CountSaves(monkeypatch)
    model, _, stopped = fit_with_signal(directory, SendSignal(signal.SIGTERM, at=(1, STEPS - 1), evaluation=evaluation))
    assert (stopped.epoch, stopped.batch, stopped.step) == (2, None, 2 * STEPS)
    assert str(stopped) == f"stopped by SIGTERM at the end of epoch 2 (step {2 * STEPS})"
    assert saves.numbers == [STEPS, 2 * STEPS]
    assert restored(directory)[1] == (2, 0)


def test_a_signal_in_a_step_just_saved_does_not_save_it_again(tmp_path, monkeypatch):
    directory = str(tmp_path / "checkpoints")
    saves = CountSaves(monkeypatch)
    _, _, stopped = fit_with_signal(directory, SendSignal(signal.SIGTERM, at=(0, 1)), every_steps=2)
    assert (stopped.epoch, stopped.batch, stopped.step) == (1, 2, 2)
    assert saves.numbers == [2]
    assert restored(directory)[1] == (0, 2)


class Weights(keras.callbacks.Callback):
    """The weights after each step, by optimizer step."""

    def __init__(self):
        super().__init__()
        self.at = {}

    def on_train_batch_end(self, batch, logs=None):
        self.at[int(self.model.optimizer.iterations.numpy())] = [w.numpy() for w in self.model.weights]


def test_a_second_signal_during_the_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """SIGTERM in step 3 starts the save of step 3; a SIGINT arrives once that checkpoint's files are
    written but before the index names it, and goes to the handler from before training (it would end
    the process): the save is cut there, and step 2's checkpoint is the latest, whole and loadable."""
    directory = str(tmp_path / "checkpoints")
    CountSaves(monkeypatch, during={3: lambda: send(signal.SIGINT)})
    weights = Weights()

    def previous(signum, frame):
        raise Aborted(signal.Signals(signum).name)

    with previous_handlers(previous):
        with pytest.raises(Aborted, match="SIGINT"):
            fit_with_signal(directory, SendSignal(signal.SIGTERM, at=(0, 2)), every_steps=2, extra=[weights])
        assert all(signal.getsignal(s) is previous for s in preemption.STOP_SIGNALS)
    assert os.path.exists(os.path.join(directory, "ckpt-3.index"))  # cut after step 3's files were written
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-2")
    fresh, position = restored(directory)
    assert position == (0, 2) and int(fresh.optimizer.iterations.numpy()) == 2
    for a, b in zip(fresh.weights, weights.at[2]):
        np.testing.assert_array_equal(a.numpy(), b)


def test_the_multi_worker_path_stops_where_tensorflows_handler_says(tmp_path):
    """TensorFlow's PreemptionCheckpointHandler, here on a one-process cluster, sees the signal (it polls
    once a second), names the step after the one it saw it in, and there the state is saved, in the
    run's format, and training stops: the signal came in step 3 (index 2) of epoch 1, seen after it."""
    directory = str(tmp_path / "checkpoints")

    class SendAndWait(SendSignal):
        def on_train_batch_begin(self, batch, logs=None):
            super().on_train_batch_begin(batch, logs)
            if (self.epoch, batch) == self.at:
                time.sleep(1.5)  # the handler's watcher polls once a second

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(tf.train.ClusterSpec({}))
    model, checkpoint, stopped = fit_with_signal(directory, SendAndWait(signal.SIGTERM, at=(0, 2)),
                                                 cluster_resolver=resolver)
    assert (stopped.signal, stopped.epoch, stopped.batch, stopped.step, stopped.cluster) == ("SIGTERM", 1, 4, 4, True)
    assert checkpoint_numbers(directory) == [4]
    # The handler's own run count (its variable "checkpointed_runs") stays out: the run's format is unchanged.
    assert not [name for name, _ in tf.train.list_variables(directory) if "checkpointed_runs" in name]
    fresh, position = restored(directory)
    assert position == (0, 4)
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
