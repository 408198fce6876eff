"""Deployment: every paper network's SavedModel converts to TFLite and predicts the same classes."""

import numpy as np
import pytest
import tensorflow as tf

import models

try:  # LiteRT, the successor of tf.lite.Interpreter
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover
    Interpreter = tf.lite.Interpreter

SMALL_INPUTS = {"convnet4": 32, "convnet8": 32, "alexnet": 64, "resnet18": 32}


@pytest.mark.parametrize("activation", ["step", "staircase"])
@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_tflite_predicts_like_keras(name, activation, tmp_path):
    side = SMALL_INPUTS[name]
    model = models.get_model(name, activation=activation, input_shape=(side, side, 3), classes=10)
    images = np.random.default_rng(0).normal(size=(8, side, side, 3)).astype(np.float32)
    # Move the batch-norm statistics away from their initial values so that every layer matters.
    model.predict(images, verbose=0)
    for layer in model.layers:
        if "BatchNormalization" in type(layer).__name__:
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.random.default_rng(1).normal(scale=0.1, size=mean.shape).astype(np.float32))
            var.assign(np.random.default_rng(2).uniform(0.5, 2.0, size=var.shape).astype(np.float32))
    expected = model.predict(images, verbose=0)

    export_dir = str(tmp_path / "export")
    model.export(export_dir, verbose=False)
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(export_dir).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner("serving_default")
    (input_name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    got = np.concatenate([next(iter(runner(**{input_name: images[i:i + 1]}).values()))
                          for i in range(len(images))])
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
