"""benchmarks/activation_overhead.py: the timing loop and its table."""

import statistics

from benchmarks import activation_overhead


def test_times_every_configuration_in_rounds():
    times = activation_overhead.time_configs(
        "convnet4", image_size=32, batch_size=2, rounds=2, steps=1, warmup=0,
        configs=("relu", "step-ftp_sh", "staircase-sste"))
    assert list(times) == ["relu", "step-ftp_sh", "staircase-sste"]
    assert all(len(samples) == 2 and min(samples) > 0 for samples in times.values())


def test_times_by_the_given_clock():
    ticks = iter(range(100))
    times = activation_overhead.time_configs(
        "convnet4", image_size=32, batch_size=2, rounds=2, steps=2, warmup=0,
        configs=("relu", "step-ftp_sh"), clock=lambda: 3.0 * next(ticks))
    assert times == {"relu": [1.5, 1.5], "step-ftp_sh": [1.5, 1.5]}  # one tick (3 s) per 2 steps


def test_table_ratios_are_medians_over_the_relu_median():
    times = {"relu": [0.010, 0.020, 0.030], "step-ftp_sh": [0.044, 0.022, 0.011]}
    rows = activation_overhead.table(times).splitlines()
    assert rows[2] == "| relu | 20.0 | 1.000 |"
    assert rows[3] == f"| step-ftp_sh | 22.0 | {statistics.median([44, 22, 11]) / 20:.3f} |"


def test_each_configuration_builds_its_activation():
    import keras_ftprop
    from keras_ftprop.layers import leaf_layers

    def activations(config):
        model = activation_overhead.build("convnet4", 32, 10, False, **activation_overhead.CONFIGS[config])
        return [(type(layer).__name__, layer.get_config().get("target_loss"))
                for layer in leaf_layers(model)
                if isinstance(layer, (keras_ftprop.HardThreshold, keras_ftprop.Staircase))]

    assert activations("step-sste") == [("HardThreshold", "sste")] * 3  # convnet4: 3 activation sites
    assert activations("staircase-ftp_sh") == [("Staircase", "soft_hinge")] * 3
    assert activations("relu") == []
