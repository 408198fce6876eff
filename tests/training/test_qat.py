"""``train.py --qat_epochs``: the quantization-aware fine-tune after the schedule, resumed, saved, exported."""

import csv
import os
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import HardThreshold, Staircase, quantization
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


def stream_batch(index):
    """Global batch ``index`` of the training stream: 8 examples that depend on the index alone."""
    seed = tf.stack([tf.cast(index, tf.int32), 0])
    x = tf.random.stateless_normal([8, 6], seed)
    y = tf.random.stateless_uniform([8], seed + [0, 1], maxval=3, dtype=tf.int32)
    return x, y


def step_body(x):
    return HardThreshold(name="act")(keras.layers.Dense(16, name="fc")(x))


def fine_tune_setup(model_dir, starts, epochs=2, steps=3, body=step_body):
    """A run's set-up after its ``epochs`` epochs of ``steps`` batches; ``starts`` records the global batches
    the fine-tune asks the stream for. Not the chief (no int8 exports: the slow test above checks them), but
    writing to ``model_dir``, where a resumed fine-tune looks."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(body(x)))

    def train_from(start):
        starts.append(start)
        return tf.data.Dataset.range(start, 2**62).map(stream_batch)

    recipe = recipes.TrainingRecipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=8, epochs=epochs,
                                    lr_decay_epochs=(2,))
    return types.SimpleNamespace(
        resolved=types.SimpleNamespace(recipe=recipe), model=model, model_dir=model_dir,
        write_dir=types.SimpleNamespace(path=model_dir, chief=False), strategy=tf.distribute.get_strategy(),
        train_ds=tf.data.Dataset.range(2).map(stream_batch), eval_ds=tf.data.Dataset.range(2).map(stream_batch),
        steps_per_epoch=steps, train_from=train_from)


def fine_tuned_weights(model_dir, qat_epochs, starts):
    config = types.SimpleNamespace(qat_epochs=qat_epochs, verbose="0", export_tflite="none",
                                   exact_input_staircases=True)
    lines = []
    qat.fine_tune(config, fine_tune_setup(model_dir, starts), log=lines.append)
    return keras.models.load_model(os.path.join(model_dir, qat.QAT_MODEL)).get_weights(), lines


@pytest.mark.parametrize("exact", [True, False])
def test_exact_input_staircases_decides_how_the_copy_rounds_a_staircase_on_the_input(tmp_path, exact):
    """``--exact_input_staircases`` (default) makes the copy decide a staircase whose producer reads the input on
    that producer's exact accumulator (``ExactStaircaseConv2D``, as the export's placed requantization);
    ``--noexact_input_staircases`` rounds its input first, as the export's requantize-then-compare."""
    config = types.SimpleNamespace(qat_epochs=1, verbose="0", export_tflite="none", exact_input_staircases=exact)
    def staircase_body(x):  # a 1x1 convolution of the input, then a staircase
        h = keras.layers.Conv2D(16, 1, name="fc")(keras.layers.Reshape((1, 1, 6))(x))
        return keras.layers.Flatten()(Staircase(3, name="act")(h))

    setup = fine_tune_setup(str(tmp_path), [], body=staircase_body)
    qat.fine_tune(config, setup, log=lambda line: None)
    copy = keras.models.load_model(os.path.join(str(tmp_path), qat.QAT_MODEL))
    assert copy.get_layer("act").fused is exact
    assert isinstance(copy.get_layer("fc"), quantization.ExactStaircaseConv2D) is exact  # sums integer codes
    assert exact or copy.get_layer("fc").input_unit is None


def test_a_resumed_fine_tune_reads_the_batches_the_uninterrupted_one_would(tmp_path):
    """Fine-tune epochs of 3 batches after a 2-epoch schedule: the stream goes on from batch 2 x 3 = 6. Stopped
    after its first epoch and resumed, the fine-tune reads batches 9, 10, 11 and ends as the one that was not."""
    whole_starts, starts = [], []
    whole, _ = fine_tuned_weights(str(tmp_path / "whole"), 2, whole_starts)
    resumed_dir = str(tmp_path / "resumed")
    first, _ = fine_tuned_weights(resumed_dir, 1, starts)
    resumed, lines = fine_tuned_weights(resumed_dir, 2, starts)
    assert "resuming the quantization-aware fine-tune after epoch 1 of 2" in lines
    assert any(not np.allclose(a, b) for a, b in zip(first, resumed))  # the second epoch trained
    for a, b in zip(resumed, whole):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert whole_starts == [6] and starts == [6, 9]  # after the schedule's 6 batches; after the first epoch's
    again, _ = fine_tuned_weights(resumed_dir, 2, starts)  # every epoch done: nothing more to read
    assert starts == [6, 9]
    for a, b in zip(again, resumed):
        np.testing.assert_array_equal(a, b)
