"""benchmarks/weight_norms.py: per-weight RMS of saved models, side by side."""

import importlib.util
import os

import keras
import numpy as np
import pytest

from keras_ftprop import BatchNormThreshold, HardThreshold

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("weight_norms", os.path.join(ROOT, "benchmarks", "weight_norms.py"))
weight_norms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weight_norms)


def _model(scale):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, use_bias=False, name="fc")(inputs)
    x = BatchNormThreshold(HardThreshold(), name="fc_bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    rng = np.random.default_rng(0)
    model.get_layer("fc").set_weights([scale * rng.normal(size=(4, 3))])
    return model


def test_rms_of_saved_models_and_run_directories(tmp_path, capsys):
    small, large = _model(0.01), _model(2.0)
    small.save(tmp_path / "small.keras")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    large.save(run_dir / "final.keras")
    weight_norms.main([str(tmp_path / "small.keras"), str(run_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| weight | small.keras | run |"
    fc = [line for line in lines if line.startswith("| fc/kernel |")]
    expected = [np.sqrt(np.mean(np.square(m.get_layer("fc").get_weights()[0]))) for m in (small, large)]
    assert fc == [f"| fc/kernel | {expected[0]:.3g} | {expected[1]:.3g} |"]
    gamma = [line for line in lines if line.startswith("| fc_bn/gamma |")]
    assert gamma == ["| fc_bn/gamma | 1 | 1 |"]  # initial gamma = 1


def test_table_keeps_weights_missing_from_a_model_blank():
    text = weight_norms.format_table(["a", "b"], [{"x": 1.0, "y": 0.5}, {"y": 0.25}])
    assert text.splitlines()[2:] == ["| x | 1 |  |", "| y | 0.5 | 0.25 |"]


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model"):
        weight_norms.model_path(str(tmp_path))
