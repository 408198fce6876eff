"""training.report: the files a run leaves, and the model it leaves in memory."""

import os
import types

import keras
import numpy as np

from training import data, files, report


def test_save_outputs_leaves_the_final_weights_in_the_model_after_exporting_the_best(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    final = [w.copy() for w in model.get_weights()]
    best = keras.models.clone_model(model)
    best.set_weights([w + 1.0 for w in final])
    best_path = str(tmp_path / "best.keras")
    best.save(best_path)
    setup = types.SimpleNamespace(
        model=model, model_dir=str(tmp_path), write_dir=types.SimpleNamespace(path=str(tmp_path), chief=True),
        resolved=types.SimpleNamespace(recipe=types.SimpleNamespace(epochs=3)),
        info=data.DatasetInfo(name="tiny", num_classes=2, image_shape=(4, 4, 3), train_examples=8,
                              eval_examples=2, recipe=data.small_recipe(4, name="tiny", mean=(0.5,) * 3,
                                                                        std=(0.25,) * 3)))
    config = types.SimpleNamespace(export_tflite="none")
    outputs = report.save_outputs(config, setup, types.SimpleNamespace(best_epoch=2, saved_this_run=True,
                                                                       path=best_path))
    for got, want in zip(model.get_weights(), final):  # not the best epoch's weights it exported
        np.testing.assert_array_equal(got, want)
    saved_best = keras.models.load_model(outputs["best model"])
    np.testing.assert_array_equal(saved_best.get_weights()[0], final[0] + 1.0)
    assert os.path.isdir(os.path.join(str(tmp_path), files.EXPORT_DIR, "best"))
