"""benchmarks/deployment.py: both conversions, interleaved timing, the table."""

from benchmarks import deployment


def test_untrained_model_is_converted_timed_and_tabulated(capsys):
    (row,) = deployment.main(["--models=convnet4", "--rounds=1", "--invokes=1", "--threads=1",
                              "--batch_size=2", "--calibration=4"])
    assert row["size_int8"] < row["size_float"] / 3  # int8 weights: about a quarter
    # conv1 reads the image: its step is a 1x1 depthwise requantization; conv2 and fc1 compute their steps as
    # their requantization
    assert row["ops_int8"]["CONV_2D INT8"] == 2 and row["ops_int8"]["DEPTHWISE_CONV_2D INT8"] == 1
    assert "SELECT_V2 INT8" not in row["ops_int8"]
    for key in ("latency_ms_int8_t1", "latency_ms_float_t1", "throughput_int8_t1", "throughput_float_t1"):
        assert row[key] > 0
    assert row["latency_ratio_t1"] == row["latency_ms_float_t1"] / row["latency_ms_int8_t1"]
    assert "agreement_int8" not in row  # untrained: speed and size only
    out = capsys.readouterr().out
    assert "| convnet4 step (untrained, 32x32) | 1 |" in out


def test_flip_rates_of_an_exact_export_are_small(capsys):
    import numpy as np

    import models

    model = models.get_model("convnet4", activation="step", input_shape=(32, 32, 3), classes=10)
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    flatbuffer = deployment.deploy.to_tflite(model, images, quantize="int8")
    rates = deployment.flip_rates(model, flatbuffer, images)
    assert list(rates) == ["conv1_act", "conv2_act", "fc1_act"]
    # Untrained, so many units sit near 0: the first layer sees only input and weight rounding
    # (measured 0.17%), later ones also inherit its flips (2% and 9%).
    assert 0 < rates["conv1_act"] < 0.01, rates
    assert all(0 <= rate < 0.2 for rate in rates.values()), rates


def test_flip_rates_name_the_thresholds_of_batch_norm_thresholds():
    import numpy as np

    import models

    model = models.get_model("convnet8", activation="step", input_shape=(32, 32, 3), classes=10)
    assert isinstance(model.get_layer("conv1_bn"), deployment.BatchNormThreshold)
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    rates = deployment.flip_rates(model, deployment.deploy.to_tflite(model, images, quantize="int8"), images)
    assert list(rates) == [f"conv{i}_act" for i in range(7)]
    assert 0 <= rates["conv0_act"] < 0.01 and 0 < rates["conv1_act"] < 0.2, rates  # fused: compared, not missing


def test_profile_attributes_each_layer_its_ops():
    args = deployment.parse_args(["--models=convnet4", "--profile=int8", "--rounds=1", "--invokes=1",
                                  "--image_size=16"])
    text = deployment.profile("convnet4", args)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1] for line in text.splitlines()[3:]}
    assert list(rows) == ["conv1_pad", "conv1", "conv1_pool", "conv1_act", "conv2", "conv2_pool", "conv2_act",
                          "flatten", "fc1", "fc1_act", "predictions"]
    assert rows["conv1"] == "CONV_2D" and rows["fc1"] == "FULLY_CONNECTED"
    assert rows["conv1_act"] == "DEPTHWISE_CONV_2D"
    assert rows["conv2_act"] == rows["fc1_act"] == ""  # fused: nothing beyond their convolution's ops


def test_micro_targets_are_checked_at_their_bounds_and_tabulated():
    from keras_ftprop.deploy import ExportReport

    def report(size, arena, note=""):
        return ExportReport(quantize="int8", size_bytes=size, ops={("CONV_2D", "INT8"): 4, ("MEAN", "INT8"): 1},
                            rewritten={}, folded={}, arena_bytes=arena, arena_note=note)

    assert deployment.missed_micro_targets(report(256 * 1024, 64 * 1024)) == []
    missed = deployment.missed_micro_targets(report(256 * 1024 + 1, 64 * 1024 + 1))
    assert missed == ["flatbuffer 262,145 bytes > 262,144", "TFLite Micro arena 65,537 bytes > 65,536"]
    note = "not measured: the tflite-micro package is not installed"
    assert deployment.missed_micro_targets(report(1000, None, note)) == [f"TFLite Micro arena {note}"]

    accuracy = {"float": 0.9756, "quantization-aware": 0.98, "int8 TFLite Micro": 0.9778, "int8 XNNPACK": 0.98}
    table = deployment.micro_table({"report": report(111_536, 37_776), "test_images": 450, "accuracy": accuracy,
                                    "agreement": {"TFLite Micro": 0.9956, "XNNPACK": 1.0}, "identical_logits": 0.553})
    assert "| flatbuffer (flash) | 111,536 bytes | 256 KB |" in table
    assert "| TFLite Micro arena | 37,776 bytes | 64 KB |" in table
    assert "| test top-1: int8 under TFLite Micro / on XNNPACK | 97.78% / 98.00% | |" in table
    assert "copy: TFLite Micro / XNNPACK | 99.6% / 100.0% | |" in table and "ops: CONV_2D x4, MEAN x1" in table


def test_runtime_agreement_counts_identical_codes_on_the_three_runtimes():
    import keras
    import numpy as np

    from keras_ftprop import HardThreshold

    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 1), name="x")
    h = HardThreshold(name="act1")(keras.layers.MaxPooling2D(name="pool")(keras.layers.Conv2D(4, 3, name="conv1")(x)))
    h = HardThreshold(name="act2")(keras.layers.Conv2D(4, 1, name="conv2")(h))
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    images = np.random.default_rng(0).uniform(0, 1, size=(12, 6, 6, 1)).astype(np.float32)
    labels = np.zeros(12, int)
    row = deployment.runtime_agreement("tiny", model, images, images, labels, examples=10)
    assert row["examples"] == 10 and row["threshold_units"] == 10 * (2 * 2 * 4 + 2 * 2 * 4)
    assert row["threshold_units_identical_xnnpack_reference"] == 1.0  # every decision the same
    assert 0.9 <= row["logit_units_identical"] <= 1.0 and 0.7 <= row["rows_identical"] <= 1.0
    for runtime in ("xnnpack", "reference", "tflite_micro"):
        assert 0.7 <= row[f"agreement_{runtime}"] <= 1.0
