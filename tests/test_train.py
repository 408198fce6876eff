"""train.py end to end, on CPU with tiny settings.

Most runs go through ``train.main(argv)`` in this process (conftest splits the
CPU into two logical devices, which the mirrored run uses); the checks that
need fresh processes (the command line itself, kill -9 and resume, two
multi-worker processes) start ``python train.py``.
"""

import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import train
from tests.package_alone import predict_with_package_alone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
QUICK = ["--steps_per_epoch=2", "--eval_steps=1", "--batch_size=8", "--verbose=2"]


def run_main(capsys, *args):
    """``train.main`` on ``args``; returns (status, stdout, stderr)."""
    status = train.main(["train.py", *args])
    out, err = capsys.readouterr()
    return status, out, err


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("train.py: error:")]


def metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def settings(model_dir):
    with open(os.path.join(model_dir, "settings.json")) as f:
        return json.load(f)


def checkpoint_number(model_dir):
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return None if path is None else int(path.rsplit("-", 1)[1])


def subprocess_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def write_jpeg(path, rng, size=(20, 24)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
    tf.io.write_file(path, tf.io.encode_jpeg(pixels))


def make_folder(root, train_classes=("cat", "dog"), val_classes=("cat", "dog"), per_class=6):
    rng = np.random.default_rng(0)
    for split, classes, count in (("train", train_classes, per_class), ("val", val_classes, 2)):
        for name in classes:
            for i in range(count):
                write_jpeg(os.path.join(root, split, name, f"{i}.jpg"), rng)
    return root


# --------------------------------------------------------------------------
# the default command, outputs, summary
# --------------------------------------------------------------------------


def test_default_command_short_epoch_exports_loadable_savedmodel(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--epochs=1", *QUICK, f"--model_dir={model_dir}")
    assert status == 0, err
    # Defaults: ResNet-18, step, FTP-SH, digits at 32x32, paper recipe adapted to digits.
    s = settings(model_dir)
    assert (s["model"], s["activation"], s["target_loss"], s["dataset"]) == (
        "resnet18", "step", "soft_hinge", "digits")
    assert s["image_shape"] == [32, 32, 3] and s["num_classes"] == 10
    assert s["resolved"]["optimizer"] == "adam" and s["resolved"]["weight_decay"] == 5e-7
    assert s["sources"]["epochs"] == "--epochs"
    assert re.search(r"^ *epochs +1 +\(--epochs\)$", out, re.M), out
    assert re.search(r"^ *batch_norm_weight_decay +5e-07 +\(as weight_decay\)$", out, re.M), out
    assert "instead of the recipe's" not in out  # --epochs was given
    # The digits demo keeps the paper's ImageNet stem (auto would take the CIFAR stem below 64 pixels).
    assert s["stem"] == "imagenet" and "stem: imagenet (digits adaptation" in out
    # An Adam run without decay epochs: neither SGD's momentum nor the decay factor is listed.
    assert not re.search(r"^ *(momentum|lr_decay) ", out, re.M), out
    assert ("on ImageNet: python train.py --model=resnet18 --activation=step --dataset=imagenet2012 "
            "--manual_dir=DIR (DIR holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)") in out
    # One parameter count: the summary's.
    assert re.search(r"^model: resnet18$", out, re.M) and "parameters" not in out and out.count("Params") == 1
    assert re.search(r"^Params: [\d,]+ trainable \([\d,]+ bytes with the non-trainable weights\)$", out, re.M)

    rows = metrics(model_dir)
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    for key in ("loss", "top1", "top5", "val_loss", "val_top1", "val_top5", "learning_rate"):
        assert np.isfinite(float(rows[0][key]))

    for name in ("final.keras", "best.json", "flags.txt", "export/final/saved_model.pb"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    # One epoch: the best is the final model, stored once.
    assert not os.path.exists(os.path.join(model_dir, "best.keras"))
    assert not os.path.exists(os.path.join(model_dir, "export", "best"))
    assert json.load(open(os.path.join(model_dir, "best.json")))["file"] == "final.keras"
    assert "--model=resnet18" in open(os.path.join(model_dir, "flags.txt")).read()
    if importlib.util.find_spec("tensorboard") is not None:
        assert tf.io.gfile.glob(os.path.join(model_dir, "tensorboard", "train", "events.*"))
    else:
        assert "no TensorBoard logs (the tensorboard package is not installed)" in out
    assert checkpoint_number(model_dir) == 2

    loaded = tf.saved_model.load(os.path.join(model_dir, "export", "final"))
    assert set(loaded.signatures) == {"serving_default", "serving_bytes", "serving_float", "preprocessing"}
    served = loaded.signatures["serving_default"](images=tf.zeros((3, 8, 8, 3), tf.uint8))  # digits' own size
    assert served["logits"].shape == (3, 10) and np.all(np.isfinite(served["logits"]))
    assert set(served["class_names"].numpy()) <= {str(d).encode() for d in range(10)}
    assert s["preprocessing"]["image_size"] == 32 and s["preprocessing"]["color"] == "grey"
    assert loaded.signatures["preprocessing"]()["image_size"] == 32

    # The closing line that says how to load final.keras works with the installed package alone.
    (load,) = [line for line in out.splitlines() if line.startswith("load the model (Python): ")]
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    (alone,) = predict_with_package_alone([(None, images)], tmp_path, load=load.split(": ", 1)[1])
    here = keras.saving.load_model(os.path.join(model_dir, "final.keras"))
    np.testing.assert_array_equal(alone, here.predict(images, verbose=0))


def _bytes_under(directory):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names)


def test_a_run_folder_with_a_best_epoch_apart_stays_within_six_times_the_weights(tmp_path, capsys):
    """Adam (two slots a weight) and a best epoch before the last, the largest case without TFLite: final.keras
    and best.keras without optimizer state, one SavedModel storing each variable once, and a checkpoint that
    no longer repeats the final weights."""
    model_dir = str(tmp_path / "run")
    # A learning rate too small to move a float32 weight: epoch 2 scores as epoch 1, which stays the best.
    status, out, err = run_main(capsys, "--model=convnet4", "--epochs=2", *QUICK, "--learning_rate=1e-30",
                                f"--model_dir={model_dir}")
    assert status == 0, err
    assert settings(model_dir)["resolved"]["optimizer"] == "adam"
    assert json.load(open(os.path.join(model_dir, "best.json")))["epoch"] == 1
    assert f"best model:       {os.path.join(model_dir, 'best.keras')}" in out
    assert sorted(os.listdir(os.path.join(model_dir, "export"))) == ["final"]
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == [
        "checkpoint", "final-4.data-00000-of-00001", "final-4.index"]
    final = keras.saving.load_model(os.path.join(model_dir, "final.keras"))
    weight_bytes = sum(w.numpy().nbytes for w in final.weights)
    assert _bytes_under(model_dir) <= 6 * weight_bytes


def test_batch_norm_weight_decay_zero_exempts_gamma_and_beta_only(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet8", "--activation=step", "--epochs=1", *QUICK,
                                "--batch_norm_weight_decay=0", f"--model_dir={model_dir}")
    assert status == 0, err
    resolved = settings(model_dir)["resolved"]
    assert (resolved["weight_decay"], resolved["batch_norm_weight_decay"]) == (5e-4, 0.0)
    model = keras.models.load_model(os.path.join(model_dir, "final.keras"))
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(batch_norms) == 6 and len(convolutions) == 7
    assert all(layer.gamma.regularizer is None and layer.beta.regularizer is None for layer in batch_norms)
    assert all(layer.kernel.regularizer.get_config()["l2"] == pytest.approx(2.5e-4)
               for layer in convolutions)


def test_convnet8_step_prints_its_deviation_and_an_explicit_decay_on_batch_norm_warns(tmp_path, capsys):
    args = ["--model=convnet8", "--activation=step", "--epochs=1", *QUICK]
    status, out, err = run_main(capsys, *args, f"--model_dir={tmp_path / 'default'}")
    assert status == 0, err
    assert re.search(r"^ *batch_norm_weight_decay +0.0 +\(deviation from the paper: .*weight-decay.md\)\)$", out,
                     re.M), out
    assert "warning:" not in out
    status, out, err = run_main(capsys, *args, "--batch_norm_weight_decay=5e-4", f"--model_dir={tmp_path / 'told'}")
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert "0.0005 on batch norm in front of step units" in line


def test_export_tflite_of_fused_batch_norm_thresholds_predicts_like_keras(tmp_path, capsys):
    # convnet8 trains with BatchNormThreshold layers; to_tflite converts them directly.
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet8", "--activation=step", "--epochs=1",
                                "--steps_per_epoch=3", "--eval_steps=2", "--batch_size=16",
                                "--verbose=2", "--export_tflite=float", f"--model_dir={model_dir}")
    assert status == 0, err
    assert re.search(r"TFLite float: .* top-1 agreement with Keras 1\.0000 on 32 eval images", out), out


def test_export_tflite_writes_both_models_and_reports_agreement(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet4", "--activation=staircase", "--epochs=1",
                                "--steps_per_epoch=3", "--eval_steps=2", "--batch_size=16",
                                "--verbose=2", "--export_tflite=both", f"--model_dir={model_dir}")
    assert status == 0, err
    for quantize in ("int8", "float"):
        path = os.path.join(model_dir, "export", f"model_{quantize}.tflite")
        assert os.path.getsize(path) > 0
        line = re.search(rf"TFLite {quantize}: {re.escape(path)}, [\d,]+ bytes; top-1 agreement with Keras "
                         r"([\d.]+) on 32 eval images; accuracy [\d.]+% \(Keras [\d.]+%\)", out)
        assert line, out
        # What it prints is the agreement of the file it wrote with final.keras on those 32 images. (The
        # int8 value itself says little here: 3 steps of training leave the logits of a chance-level
        # network nearly tied, so the int8 rounding of weights and image moves many top-1 choices.)
        assert float(line.group(1)) == pytest.approx(
            exported_agreement(model_dir, f"model_{quantize}.tflite", 32), abs=1e-4)
        if quantize == "float":
            assert float(line.group(1)) == 1.0
    from keras_ftprop import deploy
    graph = deploy.inspect_tflite(open(os.path.join(model_dir, "export", "model_int8.tflite"), "rb").read())
    assert "CONV_2D" in {op["op"] for op in graph["ops"]}
    assert all(op["outputs"][0]["dtype"] != "FLOAT32" for op in graph["ops"] if op["op"] != "DEQUANTIZE")


def exported_agreement(model_dir, tflite_file, examples):
    """Top-1 agreement of ``model_dir/export/tflite_file`` with ``final.keras`` on the first eval examples."""
    from benchmarks import deployment
    from training import tflite_export

    _, model, _, images, _ = deployment.load_run(model_dir, 1, examples)
    with open(os.path.join(model_dir, "export", tflite_file), "rb") as f:
        flatbuffer = f.read()
    keras_top1 = model.predict(images, verbose=0).argmax(axis=1)
    return float(np.mean(tflite_export.predict(flatbuffer, images).argmax(axis=1) == keras_top1))


def test_digits_replaces_the_recipe_epochs_and_says_so(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet4", "--steps_per_epoch=1",
                                "--eval_steps=1", "--batch_size=8", f"--model_dir={model_dir}")
    assert status == 0, err
    assert "digits is a small demo set: 5 epochs instead of the recipe's" in out
    assert [r["epoch"] for r in metrics(model_dir)] == ["0", "1", "2", "3", "4"]
    assert settings(model_dir)["sources"]["epochs"] == "digits adaptation"


def test_resume_continues_and_refuses_another_model(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", *QUICK, f"--model_dir={model_dir}"]
    assert run_main(capsys, "--epochs=1", *args)[0] == 0
    status, out, err = run_main(capsys, "--epochs=3", *args)
    assert status == 0, err
    assert "resuming from the checkpoint saved after epoch 1" in out
    assert "Epoch 1/3" not in out and "Epoch 2/3" in out
    assert [r["epoch"] for r in metrics(model_dir)] == ["0", "1", "2"]
    assert checkpoint_number(model_dir) == 3 * 2  # optimizer iterations went on

    status, out, err = run_main(capsys, "--epochs=4", "--activation=relu", *args)
    assert status == 2
    assert error_lines(err) == [
        f"train.py: error: --model_dir {model_dir} holds a run with activation='step', "
        "this command has activation='relu'; resume with the same settings or pass "
        "another --model_dir"]


def test_resume_a_run_whose_settings_have_the_old_steps_key(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", "--activation=staircase", "--staircase_steps=2", *QUICK,
            f"--model_dir={model_dir}"]
    assert run_main(capsys, "--epochs=1", *args)[0] == 0
    old = settings(model_dir)
    old["steps"] = old.pop("staircase_steps")  # as written before the flag was renamed
    with open(os.path.join(model_dir, "settings.json"), "w") as f:
        json.dump(old, f)
    status, out, err = run_main(capsys, "--epochs=2", *args)
    assert status == 0, err
    assert "resuming from the checkpoint saved after epoch 1" in out
    assert settings(model_dir)["staircase_steps"] == 2
    status, _, err = run_main(capsys, "--epochs=3", *args[:2], "--staircase_steps=3", *args[3:])
    assert status == 2
    assert "holds a run with staircase_steps=2, this command has staircase_steps=3" in err


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", *QUICK, f"--model_dir={model_dir}"]
    assert run_main(capsys, "--epochs=1", *args)[0] == 0
    checkpoints = os.path.join(model_dir, "checkpoints")
    before = {name: open(os.path.join(checkpoints, name), "rb").read()
              for name in os.listdir(checkpoints)}
    final_mtime = os.stat(os.path.join(model_dir, "final.keras")).st_mtime_ns

    status, out, err = run_main(capsys, "--epochs=3", "--learning_rate=1e30", *args)
    assert status == 1
    (line,) = error_lines(err)
    assert "NaN/inf loss: the training loss became" in line and "at epoch 2" in line
    assert "the last good checkpoint, saved after epoch 1, is intact" in line
    assert "Traceback" not in err
    after = {name: open(os.path.join(checkpoints, name), "rb").read()
             for name in os.listdir(checkpoints)}
    assert after == before
    assert len(metrics(model_dir)) == 1
    assert os.stat(os.path.join(model_dir, "final.keras")).st_mtime_ns == final_mtime


# --------------------------------------------------------------------------
# data sets and strategies
# --------------------------------------------------------------------------


def test_folder_dataset_with_corrupt_jpeg(tmp_path, capsys):
    root = make_folder(str(tmp_path / "images"))
    good = os.path.join(root, "train", "dog", "0.jpg")
    with open(good, "rb") as f, open(os.path.join(root, "train", "dog", "bad.jpg"), "wb") as g:
        g.write(f.read()[:150])  # a truncated JPEG
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, f"--dataset=folder:{root}", "--model=convnet4",
                                "--epochs=1", "--steps_per_epoch=2",
                                "--batch_size=4", "--verbose=0", f"--model_dir={model_dir}")
    assert status == 0, err
    assert "skipped 1 unreadable image file(s)" in out
    s = settings(model_dir)
    assert s["skipped_files"] == 1 and s["num_classes"] == 2
    # The 20x24 images at convnet4's own 32x32 (resized to 37 first: 1.85x, no warning), not ImageNet's 224.
    assert s["train_examples"] == 12 and s["image_shape"] == [32, 32, 3]
    assert "image size 32x32: convnet4's input size (--image_size=N for another)" in out
    assert "upsampled" not in out
    # Not digits: the paper's convnet4 recipe, except what was given.
    assert s["sources"]["learning_rate"] == "paper recipe for convnet4/step"
    assert len(metrics(model_dir)) == 1


def test_tfds_dataset_with_mock_data(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=16):
        status, out, err = run_main(capsys, "--dataset=cifar10", "--model=convnet4",
                                    "--activation=staircase", "--target_loss=sste",
                                    "--epochs=1", *QUICK, f"--model_dir={model_dir}")
    assert status == 0, err
    s = settings(model_dir)
    assert (s["dataset"], s["num_classes"], s["image_shape"]) == ("cifar10", 10, [32, 32, 3])
    # --epochs=1: the paper's decays (after 2/3 and 5/6 of the run) fall after its one epoch.
    assert s["resolved"]["learning_rate"] == 2.5e-4 and s["resolved"]["lr_decay_epochs"] == []
    assert "same fractions" in s["sources"]["lr_decay_epochs"]
    assert re.search(r"^ *learning_rate +0.00025 +\(paper recipe for convnet4/staircase\)$", out, re.M), out
    assert len(metrics(model_dir)) == 1


def test_diagnostics_and_the_model_summary(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet4", "--epochs=1", "--diagnostics=1", *QUICK,
                                f"--model_dir={model_dir}")
    assert status == 0, err
    assert "conv1_act (HardThreshold)" in out and "MACs:" in out and "saving" in out
    row = metrics(model_dir)[0]  # the epoch's row records the latest statistics too
    assert 0.0 <= float(row["conv1_act/target_satisfied"]) <= 1.0 and "fc1_act/flipped" in row
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed: the run writes no event files to read")
    tags = set()
    for root, _, names in os.walk(os.path.join(model_dir, "tensorboard", "diagnostics")):
        for name in names:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                tags.update(value.tag for value in event.summary.value)
    assert {"conv1_act/target_satisfied", "fc1_act/target_none", "conv2_act/pre_activation"} <= tags


def _ede_scale(step, total):
    """IR-Net's annealed scale: T = 0.1 * 10^(p log10(10 / 0.1)), p = step / total."""
    return 0.1 * 10.0 ** (min(step / total, 1.0) * np.log10(100.0))


def test_ede_needs_no_other_flag_and_anneals_over_the_run(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet4", "--target_loss=ede", "--epochs=2", *QUICK,
                                f"--model_dir={model_dir}")
    assert status == 0, err
    # 2 epochs of 2 steps: the value at the end of each epoch, steps 2 and 4 of 4.
    np.testing.assert_allclose([float(r["target_loss/t"]) for r in metrics(model_dir)],
                               [_ede_scale(2, 4), _ede_scale(4, 4)], rtol=1e-5)
    np.testing.assert_allclose([float(r["target_loss/k"]) for r in metrics(model_dir)],
                               [max(1 / _ede_scale(2, 4), 1.0), 1.0], rtol=1e-5)


class _Interrupted(Exception):
    pass


def _run_until_the_first_save(monkeypatch, args):
    """train.py with ``args``, stopped right after its first checkpoint within an epoch (a kill, in effect)."""
    from training import callbacks as training_callbacks

    save_within_epoch = training_callbacks.TrainingCheckpoint.on_train_batch_end

    def stop_after_the_first_save(self, batch, logs=None):
        saved = self.last_saved
        save_within_epoch(self, batch, logs)
        if self.last_saved != saved:
            raise _Interrupted

    monkeypatch.setattr(training_callbacks.TrainingCheckpoint, "on_train_batch_end", stop_after_the_first_save)
    with pytest.raises(_Interrupted):
        train.main(["train.py", *args])
    monkeypatch.undo()


def test_ede_schedule_resumes_where_it_stopped(tmp_path, capsys, monkeypatch):
    """Stopped after the first step and rerun: the schedule goes on from step 1 of 9, over the
    run's length (3 x 3 steps), though the first fit of the rerun only finishes epoch 1."""
    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", "--target_loss=ede", "--epochs=3", *QUICK, "--steps_per_epoch=3",
            "--save_every_steps=1", f"--model_dir={model_dir}"]
    _run_until_the_first_save(monkeypatch, args)
    assert checkpoint_number(model_dir) == 1 and not metrics(model_dir)

    status, out, err = run_main(capsys, *args)
    assert status == 0, err
    assert "finishing epoch 1 with its last 2 batches" in out
    np.testing.assert_allclose([float(r["target_loss/t"]) for r in metrics(model_dir)],
                               [_ede_scale(step, 9) for step in (3, 6, 9)], rtol=1e-5)


def test_diagnostics_columns_stay_aligned_when_the_resumed_epoch_has_no_logged_step(tmp_path, capsys, monkeypatch):
    """Stopped after step 1 of 3 x 3 with --diagnostics=3 (steps 0, 3, 6 logged): the rerun's
    first fit (steps 1-2) has no scheduled step, yet its row carries statistics in their columns."""
    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", "--diagnostics=3", "--epochs=3", *QUICK, "--steps_per_epoch=3",
            "--save_every_steps=1", f"--model_dir={model_dir}"]
    _run_until_the_first_save(monkeypatch, args)
    status, out, err = run_main(capsys, *args)
    assert status == 0, err
    assert "finishing epoch 1 with its last 2 batches" in out
    rows = metrics(model_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0.0 <= float(r["conv1_act/target_satisfied"]) <= 1.0
        assert 0.0 <= float(r["val_top1"]) <= 1.0 and float(r["loss"]) > 0.0


def test_mirrored_over_two_virtual_cpus(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--devices=/cpu:0,/cpu:1", "--model=convnet8",
                                "--activation=staircase", "--epochs=1", *QUICK,
                                f"--model_dir={model_dir}")
    assert status == 0, err
    assert "strategy: MirroredStrategy, 2 replica(s) on CPU:0, CPU:1" in out
    assert "execution: dtype policy float32, jit_compile=False" in out  # passed explicitly, not "auto"
    assert settings(model_dir)["strategy"].startswith("MirroredStrategy, 2 replica(s)")
    assert len(metrics(model_dir)) == 1


# --------------------------------------------------------------------------
# bad input: one line, exit status 2
# --------------------------------------------------------------------------


BAD_INPUTS = {
    "unknown model": (["--model=vgg16"], "flag --model=vgg16: value should be one of"),
    "unknown activation": (["--activation=tanh"], "flag --activation=tanh: value should be"),
    "unknown target loss": (["--target_loss=hinge2"], "target loss 'hinge2'"),
    "unknown dataset": (["--dataset=no_such_dataset_xyz"], "unknown dataset 'no_such_dataset_xyz'"),
    "missing folder": (["--dataset=folder:{tmp}/missing"], "{tmp}/missing"),
    "empty folder": (["--dataset=folder:{tmp}/empty"], "{tmp}/empty"),
    "class mismatch": (["--dataset=folder:{tmp}/mismatch"], "class"),
    "batch not divisible": (["--devices=/cpu:0,/cpu:1", "--batch_size=7"],
                            "--batch_size 7 (global) is not divisible by the 2 replicas"),
    "no paper recipe": (["--model=resnet34"], "the paper has no recipe for model 'resnet34'"),
    "bad decay epochs": (["--lr_decay_epochs=30,x"], "not an epoch number: 'x'"),
    "decreasing decay epochs": (["--lr_decay_epochs=60,30"], "--lr_decay_epochs must be increasing"),
    "negative steps": (["--steps_per_epoch=0"], "--steps_per_epoch=0"),
    "no staircase steps": (["--staircase_steps=0"], "--staircase_steps=0"),
    "image too small": (["--model=alexnet", "--image_size=32"], "at least"),
    "missing device": (["--devices=/gpu:0"], "no such device /device:GPU:0"),
    "XLA over two devices": (["--devices=/cpu:0,/cpu:1", "--jit_compile"],
                             "--jit_compile cannot compile a step mirrored over 2 devices of one process"),
    "multi_worker without TF_CONFIG": (["--strategy=multi_worker"],
                                       "--strategy=multi_worker needs the TF_CONFIG"),
    "extra argument": (["cifar10"], "unexpected arguments: cifar10"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_status_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    args, expected = BAD_INPUTS[case]
    tmp = str(tmp_path)
    os.makedirs(os.path.join(tmp, "empty"))
    make_folder(os.path.join(tmp, "mismatch"), train_classes=("cat", "dog"),
                val_classes=("cat", "cow"), per_class=1)
    args = [a.format(tmp=tmp) for a in args]
    status, out, err = run_main(capsys, *args, f"--model_dir={tmp}/run", "--epochs=1")
    assert status == 2, (out, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert expected.format(tmp=tmp) in lines[0]
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(tmp, "run", "checkpoints"))


def test_multi_worker_needs_a_shared_model_dir(capsys):
    status, _, err = run_main(capsys, "--strategy=multi_worker")
    assert status == 2
    assert error_lines(err) == [
        "train.py: error: --strategy=multi_worker needs an explicit --model_dir, the same "
        "for every worker, on a file system they share"]


def test_command_line_bad_input_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, TRAIN_PY, "--dataset=folder:" + str(tmp_path / "nowhere"),
         f"--model_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=subprocess_env(), timeout=180, cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr
    # TensorFlow's C++ start-up lines (absl's notice, oneDNN's) aside: one line.
    tf_startup = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|I\d{4} )")
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not tf_startup.match(line)]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), result.stderr
    assert "nowhere" in lines[0]


def _broken_compile(*args, **kwargs):
    raise ValueError("injected failure")


def test_an_unexpected_error_is_not_taken_for_bad_input(tmp_path, capsys, monkeypatch):
    # A ValueError of Keras (here, injected) is a bug, not the user's input: it propagates.
    import keras

    monkeypatch.setattr(keras.Model, "compile", _broken_compile)
    with pytest.raises(ValueError, match="injected failure"):
        train.main(["train.py", "--model=convnet4", "--epochs=1", *QUICK,
                    f"--model_dir={tmp_path / 'run'}"])
    assert not error_lines(capsys.readouterr().err)


def test_command_line_unexpected_error_exits_1_with_its_traceback(tmp_path):
    program = "\n".join([
        "import runpy, sys, keras",
        "def broken(*args, **kwargs):",
        "    raise ValueError('injected failure')",
        "keras.Model.compile = broken",
        f"sys.argv = [{TRAIN_PY!r}, '--model=convnet4', '--epochs=1', '--steps_per_epoch=1',"
        f" '--model_dir={tmp_path / 'run'}']",
        f"runpy.run_path({TRAIN_PY!r}, run_name='__main__')",
    ])
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env=subprocess_env(), timeout=180, cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: injected failure")
    assert "train.py: error:" not in result.stderr


def _weights(model_dir):
    return keras.saving.load_model(os.path.join(model_dir, "final.keras"), compile=False).get_weights()


def test_stopped_twice_within_one_epoch_resumes_where_each_stop_left_off(tmp_path, capsys, monkeypatch):
    """Saves every 2 of 5 batches: stopped after batch 2, resumed and stopped after batch 4 (not batch 2
    again: the resumed fit counts from the restored position), resumed to the end. Every step ran once."""
    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", "--epochs=2", *QUICK, "--steps_per_epoch=5", "--save_every_steps=2",
            f"--model_dir={model_dir}"]
    _run_until_the_first_save(monkeypatch, args)
    assert checkpoint_number(model_dir) == 2
    _run_until_the_first_save(monkeypatch, args)
    assert checkpoint_number(model_dir) == 4
    assert "resuming from the checkpoint saved after epoch 0 and 2 batches" in capsys.readouterr().out
    status, out, err = run_main(capsys, *args)
    assert status == 0, err
    assert "finishing epoch 1 with its last 1 batches" in out
    assert [int(r["epoch"]) for r in metrics(model_dir)] == [0, 1]
    assert checkpoint_number(model_dir) == 2 * 5


def test_a_stopped_and_resumed_run_ends_as_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """The resumed part trains on the batches the uninterrupted run saw (the data stream is replayed from
    the checkpoint's position) and the interrupted epoch's row averages all its batches."""
    args = ["--model=convnet4", "--epochs=2", *QUICK, "--steps_per_epoch=5", "--save_every_steps=3",
            "--eval_steps=2"]
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    assert run_main(capsys, *args, f"--model_dir={whole}")[0] == 0
    _run_until_the_first_save(monkeypatch, [*args, f"--model_dir={resumed}"])
    status, out, err = run_main(capsys, *args, f"--model_dir={resumed}")
    assert status == 0, err
    assert "finishing epoch 1 with its last 2 batches" in out
    for a, b in zip(_weights(resumed), _weights(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rows_whole, rows_resumed = metrics(whole), metrics(resumed)
    assert [r.keys() for r in rows_resumed] == [r.keys() for r in rows_whole]
    for a, b in zip(rows_resumed, rows_whole):
        for key in b:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key


class _SignalAt(keras.callbacks.Callback):
    """Sends SIGTERM to this process as global step ``step`` (0-based) begins: it arrives during that step."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_the_step_it_was_in_exits_75_and_the_rerun_resumes_there(tmp_path, capsys, monkeypatch):
    """SIGTERM during step 8 (epoch 2, batch 3 of 5): that step finishes and is saved, though
    --save_every_steps=2 saved step 7 only; one line, status 75; the rerun finishes epoch 2 from batch 4.
    (That the resumed run ends with the uninterrupted run's weights: the slow test with real signals.)"""
    from training import callbacks as training_callbacks

    model_dir = str(tmp_path / "run")
    args = ["--model=convnet4", "--epochs=2", *QUICK, "--steps_per_epoch=5", "--save_every_steps=2",
            f"--model_dir={model_dir}"]
    fit_callbacks = training_callbacks.fit_callbacks
    monkeypatch.setattr(training_callbacks, "fit_callbacks",
                        lambda *a, **k: [_SignalAt(7), *fit_callbacks(*a, **k)])
    status, out, err = run_main(capsys, *args)
    monkeypatch.undo()
    assert status == train.STOPPED_STATUS == 75, err
    assert err.splitlines()[-1] == (
        f"train.py: stopped by SIGTERM at epoch 2, batch 3 (step 8); checkpoint saved in "
        f"{os.path.join(model_dir, 'checkpoints')}: rerun the same command to resume")
    assert checkpoint_number(model_dir) == 8 and len(metrics(model_dir)) == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler from before training is back

    status, out, err = run_main(capsys, *args)
    assert status == 0, err
    assert "resuming from the checkpoint saved after epoch 1 and 3 batches of epoch 2" in out
    assert "finishing epoch 2 with its last 2 batches" in out
    assert [r["epoch"] for r in metrics(model_dir)] == ["0", "1"]
    assert checkpoint_number(model_dir) == 10


def test_helpfull_documents_every_flag():
    result = subprocess.run([sys.executable, TRAIN_PY, "--helpfull"], capture_output=True,
                            text=True, env=subprocess_env(), timeout=180)
    assert result.returncode == 0  # absl exits 1 after printing help; asked-for help is a success
    text = result.stdout + result.stderr
    assert text.count("oneDNN custom operations are on") <= 1  # two of TensorFlow's libraries log it
    for name in ("model", "activation", "target_loss", "staircase_steps", "no_scale_by_grad", "recipe",
                 "dataset", "data_dir", "manual_dir", "image_size", "epochs", "batch_size",
                 "optimizer", "learning_rate", "momentum", "weight_decay", "batch_norm_weight_decay", "lr_decay",
                 "lr_decay_epochs", "steps_per_epoch", "eval_steps", "seed", "mixed_precision",
                 "jit_compile", "strategy", "devices", "model_dir", "save_every_steps",
                 "verbose", "export_tflite", "deterministic"):
        assert f"--{name}" in text or f"--[no]{name}" in text, name


def test_help_exits_0_and_a_log_file_gets_one_line_per_epoch(tmp_path):
    result = subprocess.run([sys.executable, TRAIN_PY, "--help"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=180)
    assert result.returncode == 0 and "--model" in result.stdout + result.stderr
    # stdout is a pipe, not a terminal: --verbose=auto prints one line per epoch, no progress bars.
    args = [a for a in QUICK if not a.startswith("--verbose")]
    result = subprocess.run([sys.executable, TRAIN_PY, "--model=convnet4", "--epochs=2", *args,
                             f"--model_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\r" not in result.stdout and "━" not in result.stdout
    epoch_lines = [line for line in result.stdout.splitlines() if "val_top1:" in line]
    assert len(epoch_lines) == 2, result.stdout


# --------------------------------------------------------------------------
# slow: every network and activation, multi-worker, kill -9
# --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["step", "staircase", "relu", "saturated_relu"])
@pytest.mark.parametrize("model", ["convnet4", "convnet8", "alexnet", "resnet18"])
def test_every_model_and_activation(model, activation, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, f"--model={model}", f"--activation={activation}",
                                "--epochs=1", "--steps_per_epoch=2", "--eval_steps=1",
                                "--batch_size=4", "--verbose=0", "--save_every_steps=0",
                                f"--model_dir={model_dir}")
    assert status == 0, err
    (row,) = metrics(model_dir)
    assert np.isfinite(float(row["loss"])) and 0 <= float(row["val_top1"]) <= 1
    side = 60 if model == "alexnet" else 32
    assert settings(model_dir)["image_shape"] == [side, side, 3]
    shutil.rmtree(model_dir)  # up to 1 GB of checkpoints and models per network


@pytest.mark.slow
def test_devices_flag_splits_the_cpu_in_a_fresh_process(tmp_path):
    model_dir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, TRAIN_PY, "--devices=/cpu:0,/cpu:1,/cpu:2", "--model=convnet4",
         "--epochs=1", "--steps_per_epoch=2", "--eval_steps=1", "--batch_size=6",
         "--verbose=0", f"--model_dir={model_dir}"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "strategy: MirroredStrategy, 3 replica(s) on CPU:0, CPU:1, CPU:2" in result.stdout
    assert len(metrics(model_dir)) == 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_two_local_processes(tmp_path):
    model_dir = str(tmp_path / "run")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = [sys.executable, TRAIN_PY, "--strategy=multi_worker", "--model=convnet4",
            "--epochs=2", "--steps_per_epoch=3", "--eval_steps=2", "--batch_size=8",
            "--verbose=2", "--save_every_steps=2", f"--model_dir={model_dir}"]
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
            env=subprocess_env(TF_CONFIG=config, TMPDIR=str(scratch))))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=400)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for index, (worker, out) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, out
        assert "MultiWorkerMirroredStrategy, 2 replica(s)" in out
        assert f"this process is worker {index}" in out
    assert "Summary:" in outputs[0] and "not the chief" in outputs[1]
    # The two workers trained as one: the same metrics on both.
    last = [re.findall(r"val_top1: [\d.]+", out)[-1] for out in outputs]
    assert last[0] == last[1]
    assert [r["epoch"] for r in metrics(model_dir)] == ["0", "1"]
    assert os.path.exists(os.path.join(model_dir, "export", "final", "saved_model.pb"))
    assert checkpoint_number(model_dir) == 2 * 3
    assert os.listdir(scratch) == []  # worker 1's temporary directory is gone


@pytest.mark.slow
def test_a_lost_worker_is_one_line_and_status_3(tmp_path):
    """Worker 1 killed by SIGKILL after the first checkpoint: worker 0 says so in one line and exits 3."""
    model_dir = str(tmp_path / "run")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    args = [sys.executable, TRAIN_PY, "--strategy=multi_worker", "--model=convnet4", "--epochs=3",
            "--steps_per_epoch=40", "--eval_steps=2", "--batch_size=32", "--verbose=2", "--save_every_steps=5",
            f"--model_dir={model_dir}"]
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        cwd=str(tmp_path), env=subprocess_env(TF_CONFIG=config)))
    try:
        deadline = time.time() + 300
        while _latest_checkpoint_number(model_dir) is None:
            assert workers[0].poll() is None and time.time() < deadline
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGKILL)
        out, err = workers[0].communicate(timeout=300)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    assert workers[0].returncode == train.LOST_WORKER_STATUS, out + err
    assert "Traceback" not in out + err
    (line,) = error_lines(err)
    assert re.fullmatch(r"train.py: error: lost worker 1; the last checkpoint, saved after epoch \d+( and \d+ "
                        r"batches of epoch \d+)? \(step \d+\), is in .*checkpoints: rerun the same command on every "
                        r"worker to resume", line), line


@pytest.mark.parametrize("last_saved, where", [
    ((2, 5), "saved after epoch 2 and 5 batches of epoch 3 (step 25)"),
    ((2, 0), "saved after epoch 2 (step 20)"),
    (None, "none saved yet"),
])
def test_a_lost_peer_is_one_line_with_the_step_of_the_last_checkpoint_and_status_3(
        tmp_path, capsys, monkeypatch, last_saved, where):
    """A collective's DeadlineExceeded on worker 0 after worker 1 stopped, in a run of 10 batches an epoch."""
    from tests.training.test_fit import LOST_PEER_MESSAGE, lost_peer_fit
    from training import distribute, run

    monkeypatch.setattr(distribute, "task", lambda strategy: ("worker", 0))
    error = tf.errors.DeadlineExceededError(None, None, LOST_PEER_MESSAGE)
    monkeypatch.setattr(run, "train", lambda config: lost_peer_fit(tmp_path, error, last_saved))
    status, out, err = run_main(capsys, f"--model_dir={tmp_path}")
    assert status == train.LOST_WORKER_STATUS == 3
    assert "Traceback" not in out + err
    assert error_lines(err) == [f"train.py: error: lost worker 1; the last checkpoint, {where}, is in "
                                f"{tmp_path / 'checkpoints'}: rerun the same command on every worker to resume"]


def _latest_checkpoint_number(model_dir):
    try:
        text = open(os.path.join(model_dir, "checkpoints", "checkpoint")).read()
    except OSError:
        return None
    match = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', text)
    return int(match.group(1)) if match else None


def _kill_after_a_save(args, cwd, within_epoch_of=None, after=0, steps=10):
    """Runs ``args``, SIGKILLs it once it has saved a checkpoint within an epoch (number % steps != 0)
    numbered above ``after`` (and in the same epoch as checkpoint ``within_epoch_of``); returns that number."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=subprocess_env(), cwd=cwd)
    model_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--model_dir="))
    deadline = time.time() + 300
    try:
        while True:
            number = _latest_checkpoint_number(model_dir)
            if number is not None and number > after and number % steps and (
                    within_epoch_of is None or number // steps == within_epoch_of // steps):
                break
            assert process.poll() is None, "training went past the checkpoint before it could be killed"
            assert time.time() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return number


@pytest.mark.slow
def test_kill_9_twice_in_one_epoch_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    """--deterministic: killed in epoch 2 after a save, resumed and killed again after a later save of the
    same epoch, resumed to the end: every step ran once, each epoch has one row, and the weights and
    metrics.csv are those of the same run uninterrupted (to float32 rounding of the metric sums)."""
    steps, epochs = 10, 3

    def args(model_dir):
        return [sys.executable, TRAIN_PY, "--model=convnet4", f"--epochs={epochs}", f"--steps_per_epoch={steps}",
                "--eval_steps=2", "--batch_size=32", "--save_every_steps=3", "--verbose=2", "--deterministic",
                f"--model_dir={model_dir}"]

    whole, model_dir = str(tmp_path / "whole"), str(tmp_path / "run")
    result = subprocess.run(args(whole), capture_output=True, text=True, env=subprocess_env(), cwd=str(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    first = _kill_after_a_save(args(model_dir), str(tmp_path), after=steps)
    second = _kill_after_a_save(args(model_dir), str(tmp_path), within_epoch_of=first, after=first)
    assert first < second < (first // steps + 1) * steps  # both within one epoch
    rows_before = metrics(model_dir)

    third = subprocess.run(args(model_dir), capture_output=True, text=True, env=subprocess_env(),
                           cwd=str(tmp_path), timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    epoch, batches = divmod(second, steps)
    assert f"resuming from the checkpoint saved after epoch {epoch} and {batches} batches" in third.stdout
    assert f"finishing epoch {epoch + 1} with its last {steps - batches} batches" in third.stdout
    rows = metrics(model_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))  # no duplicate, no gap
    assert rows[:epoch] == rows_before[:epoch]  # earlier rows untouched
    assert checkpoint_number(model_dir) == epochs * steps  # every step ran exactly once
    for a, b in zip(_weights(model_dir), _weights(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(rows, metrics(whole)):
        assert a.keys() == b.keys()
        for key in b:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), key


STOP_LINE = re.compile(r"train\.py: stopped by (SIGTERM|a signal to another worker) at epoch (\d+), batch (\d+) "
                       r"\(step (\d+)\); checkpoint saved in (.*): rerun the same command( on every worker)? to resume")


def _stop_line(err):
    """(signal or None, epoch, batch, step, checkpoint dir, on every worker) of the one stop line in ``err``."""
    (line,) = [line for line in err.splitlines() if line.startswith("train.py: stopped")]
    match = STOP_LINE.fullmatch(line)
    assert match, line
    name, epoch, batch, step, directory, every = match.groups()
    return name if name == "SIGTERM" else None, int(epoch), int(batch), int(step), directory, bool(every)


def _wait_for_the_end_of_epoch(model_dir, epoch, processes, timeout=400):
    """Until best.json names ``epoch`` (1-based), the last file an epoch's end writes: the next epoch is on."""
    deadline = time.time() + timeout
    while True:
        try:
            with open(os.path.join(model_dir, "best.json")) as f:
                if json.load(f)["epoch"] >= epoch:
                    return
        except (OSError, ValueError, KeyError):
            pass
        assert all(p.poll() is None for p in processes) and time.time() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_rerun_ends_with_the_uninterrupted_runs_weights(tmp_path):
    """--deterministic, no periodic saves: SIGTERM in epoch 2 of 3; the run saves the step it was in,
    exits 75, and the rerun ends with the weights (to 1e-6) and metrics of the uninterrupted run."""
    steps, epochs = 20, 3

    def args(model_dir):
        return [sys.executable, TRAIN_PY, "--model=convnet4", f"--epochs={epochs}", f"--steps_per_epoch={steps}",
                "--eval_steps=2", "--batch_size=32", "--save_every_steps=0", "--verbose=2", "--deterministic",
                f"--model_dir={model_dir}"]

    whole, model_dir = str(tmp_path / "whole"), str(tmp_path / "run")
    result = subprocess.run(args(whole), capture_output=True, text=True, env=subprocess_env(), cwd=str(tmp_path),
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    process = subprocess.Popen(args(model_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(), cwd=str(tmp_path))
    try:
        _wait_for_the_end_of_epoch(model_dir, 1, [process])
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=300)
        print(f"SIGTERM to exit: {time.monotonic() - sent:.2f} s, status {process.returncode}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == train.STOPPED_STATUS, out + err
    assert "Traceback" not in err
    name, epoch, batch, step, directory, every = _stop_line(err)
    assert (name, epoch, directory, every) == ("SIGTERM", 2, os.path.join(model_dir, "checkpoints"), False)
    assert 0 < batch < steps and step == steps + batch
    assert checkpoint_number(model_dir) == step  # the step it was in, not a periodic save (there are none)

    rerun = subprocess.run(args(model_dir), capture_output=True, text=True, env=subprocess_env(),
                           cwd=str(tmp_path), timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming from the checkpoint saved after epoch 1 and {batch} batches of epoch 2" in rerun.stdout
    assert checkpoint_number(model_dir) == epochs * steps
    for a, b in zip(_weights(model_dir), _weights(whole)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    rows = metrics(model_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    for a, b in zip(rows, metrics(whole)):
        for key in b:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), key


@pytest.mark.slow
def test_sigterm_to_one_of_two_workers_stops_both_at_the_same_step_and_both_resume(tmp_path):
    """SIGTERM to worker 1 only, in epoch 2: TensorFlow's handler has both workers save the same step and
    stop (status 75, each its line); rerun on both, they resume from that step and finish."""
    steps = 20
    model_dir = str(tmp_path / "run")
    args = [sys.executable, TRAIN_PY, "--strategy=multi_worker", "--model=convnet4", "--epochs=2",
            f"--steps_per_epoch={steps}", "--eval_steps=2", "--batch_size=16", "--verbose=2",
            "--save_every_steps=0", f"--model_dir={model_dir}"]

    def start():
        cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
        return [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                                 env=subprocess_env(TF_CONFIG=json.dumps(
                                     {"cluster": cluster, "task": {"type": "worker", "index": index}})))
                for index in range(2)]

    def finish(workers):
        try:
            return [worker.communicate(timeout=400) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()

    workers = start()
    try:
        _wait_for_the_end_of_epoch(model_dir, 1, workers)
        sent = time.monotonic()
        workers[1].send_signal(signal.SIGTERM)
    finally:
        outputs = finish(workers)
    print(f"SIGTERM to both exits: {time.monotonic() - sent:.2f} s")
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == train.STOPPED_STATUS, out + err
        assert "Traceback" not in out + err
    first, second = (_stop_line(err) for _, err in outputs)
    assert first[0] is None and second[0] == "SIGTERM"  # worker 0 did not receive it
    assert first[1:] == second[1:]  # the same epoch, batch, step, checkpoint dir
    _, epoch, batch, step, directory, every = first
    assert (epoch, directory, every) == (2, os.path.join(model_dir, "checkpoints"), True)
    assert 0 < batch < steps and step == steps + batch and checkpoint_number(model_dir) == step

    workers = start()
    outputs = finish(workers)
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out + err
        assert f"resuming from the checkpoint saved after epoch 1 and {batch} batches of epoch 2" in out
    assert [r["epoch"] for r in metrics(model_dir)] == ["0", "1"]
    assert checkpoint_number(model_dir) == 2 * steps


def test_mixed_precision_and_xla_keep_float32_logits(tmp_path, capsys):
    import keras

    model_dir = str(tmp_path / "run")
    status, out, err = run_main(capsys, "--model=convnet4", "--mixed_precision", "--jit_compile",
                                "--epochs=1", *QUICK, f"--model_dir={model_dir}")
    assert status == 0, err
    assert "execution: dtype policy mixed_bfloat16, jit_compile=True" in out
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    model = keras.models.load_model(os.path.join(model_dir, "final.keras"))
    assert model.output.dtype == "float32"
    assert model.get_layer("logits_float32").dtype_policy.name == "float32"
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in model.layers)
    assert settings(model_dir)["mixed_precision"] and settings(model_dir)["jit_compile"]
