"""Run-directory files: atomic writes, the metrics CSV after kills and resumes."""

import os
import stat

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import files

HEADER = "epoch,learning_rate,loss,top1,top5,val_loss,val_top1,val_top5\r\n"


def row(epoch, top1=0.5):
    return f"{epoch},0.001,1.5,{top1},0.9,1.4,{top1},0.95\r\n"


def write(path, text):
    with open(path, "w", newline="") as f:
        f.write(text)


def read(path):
    with open(path, newline="") as f:
        return f.read()


def test_trim_keeps_finished_epochs_once_in_order(tmp_path):
    path = str(tmp_path / "metrics.csv")
    # epoch 1 written twice (an epoch redone after a kill) and a line cut short.
    write(path, HEADER + row(0) + row(1, 0.6) + row(1, 0.7) + row(2) + "3,0.001,1.")
    assert files.trim_metrics(path, 2) == 2
    assert read(path) == HEADER + row(0) + row(1, 0.7)
    rows = files.read_metrics(path)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["val_top1"] == 0.7


def test_trim_leaves_a_consistent_file_alone(tmp_path):
    path = str(tmp_path / "metrics.csv")
    write(path, HEADER + row(0) + row(1))
    before = os.stat(path).st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    assert files.trim_metrics(path, 5) == 2
    assert os.stat(path).st_mtime_ns == before - 10**9  # not rewritten
    assert read(path) == HEADER + row(0) + row(1)


def test_trim_to_nothing_empties_the_file_and_missing_file_is_fine(tmp_path):
    path = str(tmp_path / "metrics.csv")
    write(path, HEADER + row(0))
    assert files.trim_metrics(path, 0) == 0
    assert read(path) == ""  # CSVLogger writes a new header into an empty file
    assert files.trim_metrics(str(tmp_path / "none.csv"), 3) == 0
    assert files.read_metrics(str(tmp_path / "none.csv")) == []


def test_read_metrics_skips_truncated_lines(tmp_path):
    path = str(tmp_path / "metrics.csv")
    write(path, HEADER + row(0) + "1,0.001")
    assert [r["epoch"] for r in files.read_metrics(path)] == [0]


def test_atomic_write_text_mode_and_no_leftovers(tmp_path):
    path = str(tmp_path / "sub" / "settings.json")
    files.write_json(path, {"b": 1, "a": [1, 2]})
    files.write_json(path, {"b": 2})
    assert files.read_json(path) == {"b": 2}
    assert os.listdir(tmp_path / "sub") == ["settings.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
    assert files.read_json(str(tmp_path / "missing.json")) is None


def _tiny_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_atomic_save_and_export_replace_whole(tmp_path):
    model = _tiny_model()
    x = np.ones((2, 4), np.float32)
    target = str(tmp_path / "final.keras")
    files.atomic_save_model(model, target)
    assert np.allclose(keras.models.load_model(target)(x), model(x))

    export = str(tmp_path / "export" / "final")
    files.atomic_export(model, export)
    old = model(x).numpy()
    model.layers[-1].kernel.assign(model.layers[-1].kernel + 1.0)
    files.atomic_export(model, export)  # replaces the first export
    loaded = tf.saved_model.load(export)  # keep a reference: it owns the variables
    served = loaded.serve(tf.constant(x)).numpy()
    assert np.allclose(served, model(x)) and not np.allclose(served, old)
    assert sorted(os.listdir(tmp_path)) == ["export", "final.keras"]
    assert os.listdir(tmp_path / "export") == ["final"]


def test_atomic_copy(tmp_path):
    (tmp_path / "src.keras").write_text("new")
    (tmp_path / "copy.keras").write_text("old")
    files.atomic_copy(str(tmp_path / "src.keras"), str(tmp_path / "copy.keras"))
    assert (tmp_path / "copy.keras").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["copy.keras", "src.keras"]


def _trained_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization()(keras.layers.Dense(6)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x), name="tiny")
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 4)), rng.integers(0, 3, 32), epochs=2, batch_size=8, verbose=0)
    return model


def test_a_model_saved_without_optimizer_holds_its_weights_alone_and_predicts_the_same(tmp_path):
    model = _trained_model()
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    files.atomic_save_model(model, str(tmp_path / "with.keras"))
    files.atomic_save_model(model, str(tmp_path / "without.keras"), include_optimizer=False)
    with_optimizer = keras.saving.load_model(tmp_path / "with.keras")
    loaded = keras.saving.load_model(tmp_path / "without.keras")
    assert with_optimizer.optimizer.built and not loaded.compiled  # no optimizer state
    assert loaded.name == "tiny" and [(type(a), a.name) for a in loaded.layers] == [
        (type(b), b.name) for b in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for got, want in zip(loaded.weights, model.weights):  # batch-norm statistics included
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # Adam's two slots per weight are gone: the file shrinks by about twice the trainable weights' bytes.
    trainable_bytes = sum(w.numpy().nbytes for w in model.trainable_weights)
    saved = os.path.getsize(tmp_path / "with.keras") - os.path.getsize(tmp_path / "without.keras")
    assert saved > 1.5 * trainable_bytes
    assert model.optimizer.built and model.compiled  # the model itself keeps its optimizer


def test_without_optimizer_refuses_a_subclassed_model():
    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(TypeError, match="functional or Sequential"):
        files.without_optimizer(Subclassed())


def test_widen_adds_columns_and_readers_skip_na(tmp_path):
    path = str(tmp_path / "metrics.csv")
    write(path, HEADER + row(0) + "1,0.001,1.2,0.6,0.9,1.1,0.6,NA\r\n")
    assert files.metrics_header(path) == HEADER.strip().split(",")
    files.widen_metrics(path, ["h1/flipped"])
    assert files.metrics_header(path)[-1] == "h1/flipped"
    rows = files.read_metrics(path)
    assert [r["epoch"] for r in rows] == [0, 1]  # an NA cell keeps its row
    assert "h1/flipped" not in rows[0] and "val_top5" not in rows[1] and rows[1]["val_top1"] == 0.6
    assert files.trim_metrics(path, 2) == 2  # NA is a value, not a line cut short
    assert files.metrics_header(str(tmp_path / "absent.csv")) is None
