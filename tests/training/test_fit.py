"""training.fit: the resume plan, what a resumed run trains on, and a lost worker."""

import os
import types

import pytest
import tensorflow as tf

from training import distribute, fit, recipes
from training.fit import Segment, fit_verbosity, resume_plan


def test_a_fresh_run_is_one_fit_over_every_epoch():
    assert resume_plan(4, 10, 0, 0) == [Segment(0, 3, 10, 0, 0)]


def test_a_run_resumed_at_an_epoch_end_goes_on_from_the_next_epoch():
    assert resume_plan(4, 10, 2, 0) == [Segment(2, 3, 10, 0, 20)]


def test_a_run_resumed_mid_epoch_finishes_that_epoch_with_the_batches_it_had_left():
    # Epoch 3 (0-based 2) stopped after 3 of its 10 batches: 7 batches from global batch 23,
    # then epoch 4 from batch 30; the first fit's saves count from batch 3 of the epoch.
    assert resume_plan(4, 10, 2, 3) == [Segment(2, 2, 7, 3, 23), Segment(3, 3, 10, 0, 30)]
    assert resume_plan(3, 10, 2, 9) == [Segment(2, 2, 1, 9, 29)]


def test_a_finished_run_has_nothing_left():
    assert resume_plan(4, 10, 4, 0) == []


def test_without_a_known_epoch_length_whole_epochs_are_rerun():
    assert resume_plan(4, None, 1, 0) == [Segment(1, 3, None, 0, None)]


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("verbose, tty, expected", [("auto", True, 1), ("auto", False, 2), ("1", False, 1),
                                                    ("0", True, 0), ("2", True, 2)])
def test_progress_bars_only_on_a_terminal(verbose, tty, expected):
    assert fit_verbosity(verbose, _Stream(tty)) == expected


# --------------------------------------------------------------------------
# a lost worker: what fit raises when a collective fails
# --------------------------------------------------------------------------

# What a collective raises on worker 0 when worker 1 stops (its heartbeats, then the collective itself).
LOST_PEER_MESSAGE = ("Collective ops is aborted by: Error reported from /job:worker/replica:0/task:0: The following "
                     "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n")


class _LostPeerModel:
    """A model whose ``fit`` fails as a collective does when a peer is gone."""

    def __init__(self, error):
        self.error = error

    def fit(self, data, **kwargs):
        raise self.error


def lost_peer_fit(tmp_path, error, last_saved, steps_per_epoch=10, strategy="multi_worker"):
    """``fit`` of worker 0 of a 4-epoch run whose checkpoint was saved at ``last_saved``, failing with ``error``."""
    model_dir = str(tmp_path)
    recipe = recipes.TrainingRecipe(optimizer="adam", learning_rate=1e-3, batch_size=8, epochs=4)
    epochs_done, batches_done = last_saved or (0, 0)
    setup = types.SimpleNamespace(
        resolved=types.SimpleNamespace(recipe=recipe), model_dir=model_dir,
        write_dir=distribute.WriteDir(model_dir), settings={}, steps_per_epoch=steps_per_epoch,
        checkpoint=types.SimpleNamespace(last_saved=last_saved, batch_offset=0), eval_ds=None,
        epochs_done=epochs_done, batches_done=batches_done, model=_LostPeerModel(error), train_ds=None,
        train_from=None, strategy=types.SimpleNamespace(cluster_resolver=None))
    config = types.SimpleNamespace(flags_text="", diagnostics=0, verbose="0", strategy=strategy)
    return fit.fit(config, setup)


@pytest.fixture
def worker_0(monkeypatch):
    monkeypatch.setattr(distribute, "task", lambda strategy: ("worker", 0))


@pytest.mark.parametrize("error_type", [tf.errors.UnavailableError, tf.errors.DeadlineExceededError])
@pytest.mark.parametrize("last_saved, step", [(None, None), ((2, 0), 20), ((2, 5), 25), ((0, 1), 1)])
def test_a_lost_peer_ends_fit_naming_the_worker_and_the_step_of_the_last_checkpoint(
        tmp_path, worker_0, error_type, last_saved, step):
    # The step is the checkpoint's: epochs_done * steps_per_epoch + batches_done optimizer steps.
    error = error_type(None, None, LOST_PEER_MESSAGE)
    with pytest.raises(distribute.WorkerLostError) as lost:
        lost_peer_fit(tmp_path, error, last_saved)
    assert lost.value.worker == "worker 1"
    assert lost.value.last_saved == last_saved and lost.value.last_step == step
    assert lost.value.checkpoint_dir == os.path.join(str(tmp_path), "checkpoints")
    assert lost.value.__cause__ is error


def test_a_lost_peer_whose_error_names_no_task_and_an_epoch_of_unknown_length(tmp_path, worker_0):
    error = tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    with pytest.raises(distribute.WorkerLostError) as lost:
        lost_peer_fit(tmp_path, error, (1, 0), steps_per_epoch=None)
    assert (lost.value.worker, lost.value.last_saved, lost.value.last_step) == ("a worker", (1, 0), None)


@pytest.mark.parametrize("strategy, error", [
    ("mirrored", tf.errors.UnavailableError(None, None, LOST_PEER_MESSAGE)),  # no peers: not a lost worker
    ("default", tf.errors.DeadlineExceededError(None, None, LOST_PEER_MESSAGE)),
    ("multi_worker", tf.errors.InternalError(None, None, "a bug")),  # not what a lost peer raises
])
def test_other_errors_and_other_strategies_propagate_unchanged(tmp_path, worker_0, strategy, error):
    with pytest.raises(type(error)) as raised:
        lost_peer_fit(tmp_path, error, (2, 5), strategy=strategy)
    assert raised.value is error
