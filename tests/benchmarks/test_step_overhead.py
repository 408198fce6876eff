"""benchmarks/step_overhead.py: train.py's set-up and callbacks against a bare fit, and its table."""

import os
import statistics

import keras
import pytest

from benchmarks import step_overhead
from training import callbacks
from training.config import Config


def test_times_both_variants_with_train_py_callbacks(tmp_path):
    config = Config(model="convnet4", overrides={"batch_size": 8}, steps_per_epoch=2,
                        verbose="0", model_dir=str(tmp_path / "run"))
    times, setup, fit_callbacks = step_overhead.time_fits(config, rounds=2, warmup=1)
    assert list(times) == ["train.py", "bare"]
    for samples in times.values():
        assert [len(samples[kind]) for kind in ("steps", "cpu", "epoch")] == [2, 2, 2]
        assert all(0 < s <= e for s, e in zip(samples["steps"], samples["epoch"]))
        assert min(samples["cpu"]) > 0
    kinds = [type(c) for c in fit_callbacks]
    assert kinds[0] is callbacks.StopOnNonFiniteLoss and callbacks.TrainingCheckpoint in kinds
    assert callbacks.MetricsLogger in kinds
    # train.py's callbacks ran in its 3 fits only: one checkpoint and one CSV row per epoch.
    assert setup.checkpoint.last_saved == (3, 0)
    with open(os.path.join(tmp_path, "run", "metrics.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 3
    assert int(setup.model.optimizer.iterations.numpy()) == 2 * 3 * 2  # both variants trained


def test_clock_has_no_batch_hook():
    clock = step_overhead.EpochClock()
    assert type(clock).on_train_batch_end is keras.callbacks.Callback.on_train_batch_end
    assert type(clock).on_batch_end is keras.callbacks.Callback.on_batch_end


def test_table_ratios_are_medians_over_the_bare_medians():
    times = {"train.py": {"steps": [0.011, 0.022, 0.033], "cpu": [0.001, 0.003, 0.002],
                          "epoch": [0.05, 0.04, 0.03]},
             "bare": {"steps": [0.010, 0.020, 0.030], "cpu": [0.004, 0.004, 0.004],
                      "epoch": [0.02, 0.03, 0.04]}}
    rows = step_overhead.table(times).splitlines()
    assert rows[2] == "| train.py | 22.0 | 1.100 | 2.0 | 0.500 | 40.0 | 1.333 |"
    median = statistics.median([0.01, 0.02, 0.03])
    assert rows[3] == f"| bare | {1000 * median:.1f} | 1.000 | 4.0 | 1.000 | 30.0 | 1.000 |"
    assert step_overhead.round_ratios(times, "cpu") == pytest.approx([0.25, 0.75, 0.5])
