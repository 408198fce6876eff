"""training.report: the files a run leaves, and the model it leaves in memory."""

import os
import types

import keras
import numpy as np

from training import files, report


def test_save_outputs_leaves_the_final_weights_in_the_model_after_exporting_the_best(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    final = [w.copy() for w in model.get_weights()]
    best = keras.models.clone_model(model)
    best.set_weights([w + 1.0 for w in final])
    best_path = str(tmp_path / "best.keras")
    best.save(best_path)
    setup = types.SimpleNamespace(
        model=model, model_dir=str(tmp_path), write_dir=types.SimpleNamespace(path=str(tmp_path), chief=True),
        resolved=types.SimpleNamespace(recipe=types.SimpleNamespace(epochs=3)))
    config = types.SimpleNamespace(export_tflite="none")
    outputs = report.save_outputs(config, setup, types.SimpleNamespace(best_epoch=2, saved_this_run=True,
                                                                       path=best_path))
    for got, want in zip(model.get_weights(), final):  # not the best epoch's weights it exported
        np.testing.assert_array_equal(got, want)
    saved_best = keras.models.load_model(outputs["best model"])
    np.testing.assert_array_equal(saved_best.get_weights()[0], final[0] + 1.0)
    assert os.path.isdir(os.path.join(str(tmp_path), files.EXPORT_DIR, "best"))


class _NoXLA(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, x):
        return x


def test_execution_text_gives_the_policy_and_the_jit_compile_keras_resolved():
    def compiled(jit_compile, *layers):
        model = keras.Sequential([keras.Input((3,)), *layers, keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
        return model

    given = types.SimpleNamespace(jit_compile=True)
    assert report.execution_text(given, compiled(True)) == "execution: dtype policy float32, jit_compile=True"
    assert report.execution_text(types.SimpleNamespace(jit_compile=False), compiled(False)) == (
        "execution: dtype policy float32, jit_compile=False")
    # Keras turns XLA off for a layer that does not support it: said, not hidden.
    text = report.execution_text(given, compiled(True, _NoXLA()))
    assert text.startswith("execution: dtype policy float32, jit_compile=False (--jit_compile was given, but Keras ")
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = compiled(True)
    finally:
        keras.config.set_dtype_policy(policy)
    assert report.execution_text(given, model) == "execution: dtype policy mixed_bfloat16, jit_compile=True"
