"""training.report: the files a run leaves, the model it leaves in memory, and the closing lines."""

import json
import os
import types

import keras
import numpy as np

from training import callbacks, data, files, report


def _model(offset=0.0):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.set_weights([w + offset for w in model.get_weights()])
    return model


class _Checkpoint:
    """Records when ``finish`` ran and whether final.keras was there by then."""

    def __init__(self, final_path):
        self.final_path, self.finished_with_final = final_path, None

    def finish(self):
        self.finished_with_final = os.path.exists(self.final_path)


def _setup(tmp_path, model, epochs):
    return types.SimpleNamespace(
        model=model, model_dir=str(tmp_path), write_dir=types.SimpleNamespace(path=str(tmp_path), chief=True),
        resolved=types.SimpleNamespace(recipe=types.SimpleNamespace(epochs=epochs)),
        checkpoint=_Checkpoint(str(tmp_path / files.FINAL_MODEL)),
        info=data.DatasetInfo(name="tiny", num_classes=2, image_shape=(4, 4, 3), train_examples=8,
                              eval_examples=2, recipe=data.small_recipe(4, name="tiny", mean=(0.5,) * 3,
                                                                        std=(0.25,) * 3)))


def _best_saver(tmp_path, best_model, epoch, value=0.5):
    """A BestModelSaver that saved ``best_model`` at 1-based ``epoch`` of this run."""
    saver = callbacks.BestModelSaver(str(tmp_path), str(tmp_path))
    saver.set_model(best_model)
    saver.on_epoch_end(epoch - 1, {"val_top1": value})
    return saver


def _best_info(tmp_path):
    return json.loads((tmp_path / "best.json").read_text())


NONE = types.SimpleNamespace(export_tflite="none")


def test_a_best_epoch_before_the_last_keeps_its_own_file_and_the_model_keeps_the_final_weights(tmp_path):
    model, best_model = _model(), _model(offset=1.0)
    final = [w.copy() for w in model.get_weights()]
    (tmp_path / files.EXPORT_DIR / "best").mkdir(parents=True)  # an earlier version's export of the best
    setup = _setup(tmp_path, model, epochs=3)
    outputs = report.save_outputs(NONE, setup, _best_saver(tmp_path, best_model, epoch=2))
    for got, want in zip(model.get_weights(), final):
        np.testing.assert_array_equal(got, want)
    assert outputs["best model"] == str(tmp_path / "best.keras")
    saved_best = keras.models.load_model(outputs["best model"])
    np.testing.assert_array_equal(saved_best.get_weights()[0], final[0] + 1.0)
    assert not saved_best.compiled and not keras.models.load_model(outputs["final model"]).compiled
    assert _best_info(tmp_path)["file"] == "best.keras"
    assert os.listdir(tmp_path / files.EXPORT_DIR) == ["final"]  # one SavedModel: the final model's
    assert setup.checkpoint.finished_with_final


def test_a_best_epoch_that_is_the_last_is_stored_once_as_the_final_model(tmp_path):
    model = _model()
    setup = _setup(tmp_path, model, epochs=3)
    outputs = report.save_outputs(NONE, setup, _best_saver(tmp_path, model, epoch=3))
    assert outputs["best model"] == outputs["final model"] == str(tmp_path / files.FINAL_MODEL)
    assert not (tmp_path / "best.keras").exists()
    assert _best_info(tmp_path) == {"epoch": 3, "val_top1": 0.5, "file": "final.keras"}
    np.testing.assert_array_equal(keras.models.load_model(outputs["final model"]).get_weights()[0],
                                  model.get_weights()[0])
    assert setup.checkpoint.finished_with_final
    # A resumed BestModelSaver reads the pointer back.
    assert callbacks.BestModelSaver(str(tmp_path), str(tmp_path)).in_final


def test_a_longer_rerun_without_a_better_epoch_gives_the_best_its_own_file_from_the_previous_final(tmp_path):
    first, later = _model(), _model(offset=2.0)
    report.save_outputs(NONE, _setup(tmp_path, first, epochs=3), _best_saver(tmp_path, first, epoch=3))
    resumed = callbacks.BestModelSaver(str(tmp_path), str(tmp_path))  # the rerun with --epochs=5: no better epoch
    outputs = report.save_outputs(NONE, _setup(tmp_path, later, epochs=5), resumed)
    assert outputs["best model"] == str(tmp_path / "best.keras")
    np.testing.assert_array_equal(keras.models.load_model(outputs["best model"]).get_weights()[0],
                                  first.get_weights()[0])
    np.testing.assert_array_equal(keras.models.load_model(outputs["final model"]).get_weights()[0],
                                  later.get_weights()[0])
    assert _best_info(tmp_path) == {"epoch": 3, "val_top1": 0.5, "file": "best.keras"}


def test_closing_lines_say_how_to_load_serve_and_run_each_file(tmp_path):
    outputs = {"final model": "runs/a/final.keras", "final SavedModel": "runs/a/export/final",
               "TensorBoard": "runs/a/tensorboard", "TFLite int8": "runs/a/export/model_int8.tflite"}
    lines = report.usage_lines(outputs, "convnet4")
    assert lines == [
        "view the curves: tensorboard --logdir runs/a/tensorboard",
        "load the model (Python): import keras, keras_ftprop; model = keras.saving.load_model('runs/a/final.keras')",
        "serve the SavedModel (TensorFlow Serving): docker run -p 8501:8501 -v "
        f"{os.path.abspath('runs/a/export/final')}:/models/convnet4/1 -e MODEL_NAME=convnet4 tensorflow/serving",
        "run the TFLite model (Python): from ai_edge_litert.interpreter import Interpreter; "
        "interpreter = Interpreter(model_path='runs/a/export/model_int8.tflite')",
    ]
    assert len(report.usage_lines({k: v for k, v in outputs.items() if k.startswith("final")}, "convnet4")) == 2


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
