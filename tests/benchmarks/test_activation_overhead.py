"""benchmarks/activation_overhead.py: the timing loop and its table."""

import statistics

from benchmarks import activation_overhead


def test_times_every_configuration_in_rounds():
    times = activation_overhead.time_configs(
        "convnet4", image_size=32, batch_size=2, rounds=2, steps=1, warmup=0,
        configs=("relu", "step-ftp_sh", "staircase-sste"))
    assert list(times) == ["relu", "step-ftp_sh", "staircase-sste"]
    assert all(len(samples) == 2 and min(samples) > 0 for samples in times.values())


def test_table_ratios_are_medians_over_the_relu_median():
    times = {"relu": [0.010, 0.020, 0.030], "step-ftp_sh": [0.044, 0.022, 0.011]}
    rows = activation_overhead.table(times).splitlines()
    assert rows[2] == "| relu | 20.0 | 1.000 |"
    assert rows[3] == f"| step-ftp_sh | 22.0 | {statistics.median([44, 22, 11]) / 20:.3f} |"
