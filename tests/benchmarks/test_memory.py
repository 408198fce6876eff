"""benchmarks/memory.py: peak RSS of child processes, medians and the table."""

import pytest

from benchmarks import memory


def test_measures_every_variant_in_its_own_process():
    rows = memory.main(["--model=convnet4", "--image-size=32", "--batch-size=2", "--classes=10",
                        "--steps=1", "--repeats=1", "--variants=relu,step"])
    assert list(rows) == ["relu", "step"]
    for row in rows.values():
        assert 0 < row["built_mib"] <= row["peak_mib"] and 0 < row["first_step_mib"] <= row["peak_mib"]
        assert row["working_set_mib"] == pytest.approx(row["peak_mib"] - row["built_mib"])
        assert row["working_set_mib"] > 0
        # convnet4 at 32x32: activations of 17x17x32, 8x8x64 and 1024 units.
        assert row["activation_sites"] == 3
        assert row["activation_mib"] == pytest.approx(2 * (17 * 17 * 32 + 8 * 8 * 64 + 1024) * 4 / 2**20)
    assert rows["relu"]["peak_ratio"] == rows["relu"]["working_set_ratio"] == 1.0
    assert rows["step"]["peak_ratio"] > 0 and rows["step"]["working_set_ratio"] > 0


def test_allocator_reports_the_tensor_peak_of_the_last_step():
    rows = memory.main(["--model=convnet4", "--image-size=32", "--batch-size=64", "--classes=10",
                        "--steps=1", "--repeats=1", "--variants=relu", "--allocator"])
    relu = rows["relu"]
    # at least the weights (4.26 M float32: 16 MiB) and their gradients; less than the whole process
    assert 2 * 4_259_274 * 4 / 2**20 < relu["tensor_peak_mib"] < relu["peak_mib"]
    assert relu["tensor_peak_ratio"] == 1.0
    assert memory.table(rows).splitlines()[0].endswith("| tensor peak (MiB) | vs ReLU |")


def test_medians_ratios_and_table():
    mib = 2**20

    def reading(built, peak):
        return {"rss_built": built * mib, "rss_first_step": peak * mib, "peak": peak * mib,
                "activation_sites": 17, "activation_elements": 1000}

    samples = {"relu": [reading(100, 300), reading(100, 500), reading(100, 400)],
               "step": [reading(110, 560), reading(90, 450), reading(100, 700)]}
    rows = memory.summarize(samples, batch_size=4)
    assert rows["relu"]["peak_mib"] == 400 and rows["relu"]["working_set_mib"] == 300
    assert rows["step"]["peak_mib"] == 560 and rows["step"]["working_set_mib"] == 450
    assert rows["step"]["peak_ratio"] == pytest.approx(1.4)
    assert rows["step"]["working_set_ratio"] == pytest.approx(1.5)
    assert rows["step"]["activation_mib"] == pytest.approx(4 * 1000 * 4 / mib)
    lines = memory.table(rows).splitlines()
    assert lines[2] == "| relu | 400 | 1.000 | 300 | 1.000 |"
    assert lines[3] == "| step (soft_hinge) | 560 | 1.400 | 450 | 1.500 |"
    assert memory.summarize({"step": samples["step"]}, batch_size=4)["step"]["peak_ratio"] is None


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        memory.parse_args(["--variants=relu,sign"])


def test_unfused_variants_build_batch_norm_and_threshold_as_two_layers():
    import keras

    import keras_ftprop
    from benchmarks.activation_overhead import build

    def kinds(variant):
        model = build("convnet8", 32, 10, False, **memory.VARIANTS[variant][1])
        return [type(layer) for layer in model.layers]

    fused, unfused = kinds("step"), kinds("step_unfused")
    assert fused.count(keras_ftprop.BatchNormThreshold) == 5 and unfused.count(keras_ftprop.BatchNormThreshold) == 0
    assert unfused.count(keras.layers.BatchNormalization) == 6 and unfused.count(keras_ftprop.HardThreshold) == 7
    assert kinds("staircase_unfused").count(keras_ftprop.Staircase) == 7
