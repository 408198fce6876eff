"""``train.py --qat_epochs``: the quantization-aware fine-tune after the schedule, resumed, saved, exported."""

import csv
import os
import re

import keras
import numpy as np
import pytest

from keras_ftprop import quantization
from tests.test_train import run_main
from training import qat, recipes

QUICK = ["--model=convnet4", "--activation=step", "--epochs=2", "--lr_decay_epochs=2", "--learning_rate=0.01",
         "--steps_per_epoch=4", "--eval_steps=3", "--batch_size=16", "--verbose=2", "--export_tflite=int8"]
LINE = (r"int8 {what}: top-1 agreement of int8 with Keras ([\d.]+) on 48 eval images; "
        r"accuracy Keras ([\d.]+)%, int8 ([\d.]+)%")


def test_fine_tune_learning_rate_is_the_schedules_last():
    recipe = recipes.TrainingRecipe(optimizer="sgd", learning_rate=0.1, batch_size=8, epochs=12,
                                    lr_decay_epochs=(9, 11))
    assert qat.fine_tune_learning_rate(recipe) == 0.1 * 0.1 * 0.1


@pytest.mark.slow
def test_qat_epochs_fine_tunes_saves_exports_and_resumes(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, *QUICK, "--qat_epochs=1", f"--model_dir={model_dir}")
    assert status == 0, err
    assert "quantization-aware fine-tune: 1 epoch(s) at the final learning rate 0.001" in out, out
    assert re.search(LINE.format(what=r"before the quantization-aware fine-tune \(the float network\)"), out), out
    after = re.search(LINE.format(what=r"after 1 quantization-aware epoch\(s\) \(the fine-tuned copy\)"), out)
    assert after and float(after.group(1)) == 1.0, out  # the int8 model is the fine-tuned copy
    export = os.path.join(model_dir, "export", qat.QAT_EXPORT)
    assert os.path.getsize(export) > 0 and export in out
    saved = keras.models.load_model(os.path.join(model_dir, qat.QAT_MODEL))
    assert quantization.is_quantization_aware(saved)
    final = keras.models.load_model(os.path.join(model_dir, "final.keras"))
    assert not quantization.is_quantization_aware(final)  # the float network is kept as it was trained
    changed = [not np.array_equal(saved.get_layer(n).kernel, final.get_layer(n).kernel) for n in ("conv1", "fc1")]
    assert all(changed)  # fine-tuned

    # Asked for one more epoch with the same model_dir: resumes from the saved copy and its optimizer.
    status, out, err = run_main(capsys, *QUICK, "--qat_epochs=2", f"--model_dir={model_dir}")
    assert status == 0, err
    assert "resuming the quantization-aware fine-tune after epoch 1 of 2" in out, out
    with open(os.path.join(model_dir, qat.QAT_DIR, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert re.search(LINE.format(what=r"after 2 quantization-aware epoch\(s\) \(the fine-tuned copy\)"), out), out
