"""training.fit: the resume plan, and what a resumed run trains on."""

import pytest

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
