"""benchmarks/threshold_inputs.py: statistics of threshold inputs against the layers' own forward."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold, Staircase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("threshold_inputs",
                                               os.path.join(ROOT, "benchmarks", "threshold_inputs.py"))
threshold_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(threshold_inputs)


@pytest.mark.parametrize("layer", [Staircase(steps=3), Staircase(steps=5, low=-1.0, high=2.0), HardThreshold()])
def test_levels_agree_with_the_layer_forward(layer):
    # Points on and around every threshold, and a unit that never changes (column 0).
    x = np.linspace(-1.5, 2.5, 41, dtype=np.float32)
    x = np.stack([np.full_like(x, 5.0), x, x[::-1]], axis=1)  # (41 images, 3 units)
    y = np.asarray(layer(x))
    stats = threshold_inputs.layer_statistics(layer, x)
    if isinstance(layer, Staircase):
        values = [layer.low + (layer.high - layer.low) * k / layer.steps for k in range(layer.steps + 1)]
    else:
        values = [-1.0, 1.0]
    expected = [np.mean(np.isclose(y, v)) for v in values]
    assert list(stats["levels"].values()) == pytest.approx(expected)
    assert stats["constant"] == pytest.approx(1 / 3)
    if isinstance(layer, Staircase):
        scaled = (x - layer.low) / (layer.high - layer.low)
        unit, window = 2 * scaled - 1, (scaled >= 0) & (scaled <= 1)
    else:
        unit, window = x, np.abs(x) <= 1
    assert stats["in_window"] == pytest.approx(np.mean(window))
    assert stats["factor"] == pytest.approx(np.mean(1 - np.tanh(unit.astype(np.float64)) ** 2))


def test_run_directory_on_its_own_data(tmp_path, capsys):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = Staircase(name="conv_act")(x)
    x = keras.layers.Dense(8, name="fc")(keras.layers.Flatten()(x))
    x = HardThreshold(name="fc_act")(x)
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(tmp_path / "final.keras")
    with open(tmp_path / "settings.json", "w") as f:
        json.dump({"dataset": "digits", "image_shape": [32, 32, 3]}, f)
    (run, layers), = threshold_inputs.main([str(tmp_path), "--images=100", f"--output={tmp_path / 't.md'}"])
    assert list(layers) == ["conv_act", "fc_act"] and run == os.path.basename(tmp_path)
    assert sum(layers["conv_act"]["levels"].values()) == pytest.approx(1.0)
    assert "| fc_act |" in open(tmp_path / "t.md").read()
