"""Stopping training at SIGTERM or SIGINT with a checkpoint of the step it was in.

Schedulers (Slurm, Kubernetes, preemptible VMs) stop a job with SIGTERM and
kill it with SIGKILL a grace period later. While ``training.fit`` trains,
``SignalCatcher`` records the first SIGTERM or SIGINT instead of dying, and
``StopOnSignal``, the last ``model.fit`` callback, ends training at the next
step boundary:

* at the end of the training step in progress (batch b of epoch e), it saves
  the state of that step with the run's ``TrainingCheckpoint``, in the format
  of every other save, so the resume is exact (nothing is saved again when a
  periodic save has just written that very step), and raises ``Stopped``;
* if that step was the last of its epoch, or the signal came during the
  epoch's evaluation, the epoch ends first (its row of metrics.csv, its
  end-of-epoch checkpoint, the best model) and ``Stopped`` is raised there.

In a multi-worker run only the worker that got the signal knows of it, yet
every worker must save the same step. TensorFlow's
``tf.distribute.experimental.PreemptionCheckpointHandler`` agrees on the
step: the signalled worker publishes "the step after mine" through the
cluster's coordination service and waits until every worker has read it;
there every worker saves (our ``TrainingCheckpoint`` is the handler's
``save_fn``) and stops. It learns of the signal by polling
``SignalCatcher.is_set`` once a second, so that the handlers stay ours.

A second signal while stopping ends the process at once, as the signal
would without this module: the previous handlers are put back and the signal
is passed on to them (SIGTERM's default ends the process, SIGINT's raises
KeyboardInterrupt); it is also the way out when the workers of a cluster
cannot agree, one of them being gone. The checkpoint being written is then
lost and the previous one intact: ``tf.train.CheckpointManager`` names a checkpoint in its
``checkpoint`` index file, replaced atomically, only once its files are
complete.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading

import keras
import tensorflow as tf

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalCatcher:
    """While active (``with``), the first of ``signals`` is recorded instead of acted on.

    ``received`` names it (``"SIGTERM"``); None until one arrives. A second
    one puts the previous handlers back and is passed on to them. On leaving,
    the previous handlers are back; a signal that was recorded but not acted
    on (``acted_on``: training ended first) is then passed on, unless an
    exception is already ending the run. Handlers can only be installed from
    the main thread: elsewhere this catches nothing.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self._signum = None
        self._event = threading.Event()
        self._previous = {}
        self._dealt_with = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, error, traceback):
        self._restore()
        if kind is None and self._signum is not None and not self._dealt_with:
            self._dealt_with = True
            signal.raise_signal(self._signum)

    @property
    def installed(self):
        return bool(self._previous)

    @property
    def received(self):
        return None if self._signum is None else signal.Signals(self._signum).name

    def is_set(self):
        """Whether a signal was received (thread-safe: TensorFlow's watcher thread asks)."""
        return self._event.is_set()

    def acted_on(self):
        """The signal has been acted on (training stopped): it is not passed on when leaving."""
        self._dealt_with = True

    def _handle(self, signum, frame):
        if self._signum is None:
            self._signum = signum
            self._event.set()
            return
        self._restore()
        self._dealt_with = True
        signal.raise_signal(signum)

    def _restore(self):
        for signum, handler in self._previous.items():
            # None: a handler not set from Python, which cannot be put back; the default then.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


class Stopped(Exception):
    """Training stopped at a signal, its state at ``step`` saved.

    signal: the name of the signal this process received; None when another
    worker received it. epoch: the 1-based epoch it stopped in; batch: the
    batches of that epoch done, None when it stopped at the epoch's end;
    step: the optimizer steps done (the checkpoint's number); cluster:
    whether every worker of a multi-worker run stopped with it.
    ``checkpoint_dir`` is set by ``training.fit``.
    """

    def __init__(self, signal_name, epoch, batch, step, cluster=False):
        self.signal, self.epoch, self.batch, self.step, self.cluster = signal_name, epoch, batch, step, cluster
        self.checkpoint_dir = None
        where = f"the end of epoch {epoch}" if batch is None else f"epoch {epoch}, batch {batch}"
        super().__init__(f"stopped by {signal_name or 'a signal to another worker'} at {where} (step {step})")


class StopOnSignal(keras.callbacks.Callback):
    """Ends ``fit`` at the step boundary after a caught signal, its state saved (module docstring).

    Put it last among the callbacks, after the ``TrainingCheckpoint`` and the
    best-model saver. catcher: the ``SignalCatcher``; checkpoint: the run's
    ``TrainingCheckpoint``; cluster_resolver: the multi-worker strategy's
    (every worker then stops at the same step), None in one process.
    """

    def __init__(self, catcher, checkpoint, cluster_resolver=None):
        super().__init__()
        self.catcher = catcher
        self.checkpoint = checkpoint
        self._epoch = 0
        self._stop = False
        self._handler = None
        if cluster_resolver is not None:
            self._handler = _cluster_handler(cluster_resolver, catcher.is_set, self._save, self._agree)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self.checkpoint.batch_offset + batch + 1
        steps = self.params.get("steps") if self.params else None
        last = steps is not None and batch + 1 >= steps
        if self._handler is not None:
            # At the step the workers agreed on, on every worker: self._save(...), then self._agree().
            self._handler.save_checkpoint_if_preempted(self._epoch, done, last)
        elif self.catcher.received:
            self._save(self._epoch, done, last)
            self._agree()
        if self._stop and not last:
            raise self._stopped(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        # In one process, a signal during the evaluation stops here too.
        if self._stop or (self._handler is None and self.catcher.received):
            raise self._stopped(epoch, None)

    def close(self):
        """Ends TensorFlow's watcher threads; call after a ``fit`` that ended normally."""
        if self._handler is not None:
            # The handler's own clean-up: it tells the peers' watcher threads to stop, then joins its own.
            self._handler.__del__()
            self._handler = None

    def _save(self, epoch, done, last):
        # The last batch of an epoch is saved as the epoch's end (on_epoch_end), as the
        # TrainingCheckpoint does: a state "all batches done, not evaluated" has no resume.
        if not last and self.checkpoint.last_saved != (epoch, done):
            self.checkpoint.save(epoch, done)

    def _agree(self):
        self._stop = True

    def _stopped(self, epoch, done):
        self.catcher.acted_on()
        return Stopped(self.catcher.received, epoch + 1, done, int(self.model.optimizer.iterations.numpy()),
                       cluster=self._handler is not None)


class _WithoutRunCallsDeprecation(logging.Filter):
    """Drops the deprecation warning the handler triggers itself when it saves (it reads its own
    ``total_run_calls``): it concerns TensorFlow's code, not this program's."""

    def filter(self, record):
        return "total_run_calls" not in record.getMessage()


_WITHOUT_RUN_CALLS_DEPRECATION = _WithoutRunCallsDeprecation()


def _cluster_handler(cluster_resolver, signalled, save, stop):
    """TensorFlow's ``PreemptionCheckpointHandler``, saving with ``save`` and stopping with ``stop``.

    The handler counts its calls from the run count stored in the checkpoint
    it is given; every worker must start from the same count, so it gets an
    empty checkpoint (count 0 everywhere) and saves only through ``save``,
    the run's own checkpoint format unchanged.
    """
    tf.get_logger().addFilter(_WITHOUT_RUN_CALLS_DEPRECATION)  # once: the same filter is not added twice
    config = tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=signalled, exit_fn=stop, grace_period=0, save_fn=save)
    with tempfile.TemporaryDirectory() as empty:  # read once, when the handler starts
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(), empty, max_to_keep=1)
        return tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver, manager, termination_config=config)
