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


def test_op_times_sum_the_traced_ops_by_type():
    models, images, labels = activation_overhead.warm_models("convnet4", image_size=32, batch_size=2,
                                                             warmup=0, configs=("relu", "step-ftp_sh"))
    relu = activation_overhead.op_times(models["relu"], images, labels, steps=1)
    step = activation_overhead.op_times(models["step-ftp_sh"], images, labels, steps=1)
    assert any("Conv2D" in kind for kind in relu) and all(ms >= 0 for ms in relu.values())
    assert "ReluGrad" in relu and "ReluGrad" not in step  # every ReLU of convnet4 is a step in the other
    assert "TanhGrad" in step and "Tanh" in step and "TanhGrad" not in relu


def test_profile_table_orders_op_types_by_their_difference_from_relu():
    profiles = {"relu": {"Conv2D": 10.0, "ReluGrad": 1.0}, "step-ftp_sh": {"Conv2D": 10.5, "TanhGrad": 2.0}}
    rows = activation_overhead.profile_table(profiles).splitlines()
    assert rows[1] == "step-ftp_sh vs relu: all ops 12.5 vs 11.0 ms/step (+1.5)"
    assert rows[5:] == ["| TanhGrad | 0.00 | 2.00 | +2.00 |", "| ReluGrad | 1.00 | 0.00 | -1.00 |",
                        "| Conv2D | 10.00 | 10.50 | +0.50 |"]


def test_op_type_of_tensorflow_and_xla_events():
    assert activation_overhead._op_type("model/conv/Conv2D:_MklNativeConv2D") == "_MklNativeConv2D"
    assert activation_overhead._op_type("multiply_subtract_fusion.3") == "multiply_subtract_fusion"
    for scope in ("ExecutorState::Process", "__inference_one_step_on_data_820", "EagerLocalExecute: __inference_f_1"):
        assert activation_overhead._op_type(scope) is None


def test_a_site_is_batch_norm_and_its_activation_as_the_builders_make_it():
    from keras_ftprop import BatchNormThreshold, HardThreshold

    def kinds(config):
        model = activation_overhead.site_model((2, 4, 4, 3), **activation_overhead.CONFIGS[config])
        return [type(layer).__name__ for layer in model.layers[1:]]

    assert kinds("relu") == ["BatchNormalization", "ReLU"]
    assert kinds("step-ftp_sh") == [BatchNormThreshold.__name__]
    assert kinds("step-ftp_sh-unfused") == ["BatchNormalization", HardThreshold.__name__]


def test_times_every_site_in_rounds():
    times = activation_overhead.time_sites((2, 4, 4, 3), rounds=2, steps=1, configs=("relu", "staircase-ftp_sh"))
    assert list(times) == ["relu", "staircase-ftp_sh"]
    assert all(len(samples) == 2 and min(samples) > 0 for samples in times.values())
