"""benchmarks/gradient_reach.py: per-stage gradient norms of the thresholded convolutions."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import HardThreshold

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("gradient_reach", os.path.join(ROOT, "benchmarks", "gradient_reach.py"))
gradient_reach = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gradient_reach)


def _staged_model():
    """stem, two stages and what must not count: a 1x1 shortcut and the classifier."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    h = HardThreshold(name="stage1_block1_act1")(x)
    x = keras.layers.Add()([keras.layers.Conv2D(4, 3, padding="same", name="stage1_block1_conv1")(h), x])
    h = HardThreshold(name="stage4_block1_act1")(x)
    out = keras.layers.Conv2D(6, 3, padding="same", name="stage4_block1_conv1")(h)
    shortcut = keras.layers.Conv2D(6, 1, name="stage4_block1_shortcut_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([out, shortcut]))
    return keras.Model(inputs, keras.layers.Dense(5, name="predictions")(x))


def test_stage_norms_group_the_threshold_convolutions():
    keras.utils.set_random_seed(3)
    model = _staged_model()
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    labels = np.arange(16) % 5
    norms = gradient_reach.stage_gradient_norms(model, images, labels)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, model(images, training=True))
    grads = dict(zip([v.path for v in model.trainable_variables],
                     tape.gradient(loss, model.trainable_variables)))
    expected = {stage: np.linalg.norm(np.asarray(grads[f"{layer}/kernel"]))
                for stage, layer in [("stem", "stem_conv"), ("stage1", "stage1_block1_conv1"),
                                     ("stage4", "stage4_block1_conv1")]}
    assert norms == pytest.approx({"stem": expected["stem"], "stage1": expected["stage1"], "stage2": 0.0,
                                   "stage3": 0.0, "stage4": expected["stage4"]}, rel=1e-5)
    assert min(expected.values()) > 0  # the step's estimator passes a gradient to every stage here


@pytest.mark.parametrize("config, twin", [("step-sste", "step-soft_hinge"), ("staircase-approx_sign",
                                          "staircase-soft_hinge"), ("step-sste-seed2", "step-ftp_sh-seed2"),
                                          ("relu", None), ("relu-seed1", None)])
def test_compared_with_the_ftp_sh_configuration_of_the_same_seed(config, twin):
    assert gradient_reach.ftp_sh_twin(config) == twin


def test_run_directories_on_their_own_data(tmp_path, capsys):
    for name in ("step-ftp_sh-seed1", "step-sste-seed1"):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, name="stem_conv"),
                                  HardThreshold(name="stage1_block1_act1"),
                                  keras.layers.Conv2D(4, 3, name="stage1_block1_conv1"),
                                  HardThreshold(name="stage4_block1_act1"),
                                  keras.layers.Conv2D(4, 3, name="stage4_block1_conv1"),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
        (tmp_path / name).mkdir()
        model.save(tmp_path / name / "final.keras")
        with open(tmp_path / name / "settings.json", "w") as f:
            json.dump({"dataset": "digits", "image_shape": [32, 32, 3], "model": "tiny"}, f)
    results = gradient_reach.main([str(tmp_path / "step-ftp_sh-seed1"), str(tmp_path / "step-sste-seed1"),
                                   "--batch_size=32"])
    assert list(results["tiny"]) == ["step-ftp_sh-seed1", "step-sste-seed1"]
    assert results["tiny"]["step-sste-seed1"]["stage4"] == 1.0
    out = capsys.readouterr().out
    assert "| tiny | step-ftp_sh-seed1 |" in out and out.count("| 1.000 |") == 2  # same weights, same batch
