"""Run-directory files: atomic writes, the metrics CSV after kills and resumes."""

import os
import stat

import keras
import numpy as np
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


def test_atomic_copy_and_copytree(tmp_path):
    source = tmp_path / "src"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_text("new")
    (source / "variables" / "v").write_text("data")
    target = tmp_path / "export" / "best"
    target.mkdir(parents=True)
    (target / "stale").write_text("old")
    files.atomic_copytree(str(source), str(target))
    assert sorted(os.listdir(target)) == ["saved_model.pb", "variables"]
    assert (target / "variables" / "v").read_text() == "data"
    files.atomic_copy(str(source / "saved_model.pb"), str(tmp_path / "copy.pb"))
    assert (tmp_path / "copy.pb").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["copy.pb", "export", "src"]
    assert os.listdir(tmp_path / "export") == ["best"]


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
