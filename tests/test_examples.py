import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_digits_example_trains_exports_and_serves(tmp_path):
    export_dir = tmp_path / "exported"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "digits_step_network.py"),
         "--epochs", "10", "--export-dir", str(export_dir)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                              "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (export_dir / "saved_model.pb").exists()
    served = re.search(r"Served in a separate process: test accuracy ([\d.]+), agreement with Keras ([\d.]+)",
                       result.stdout)
    assert served, result.stdout
    accuracy, agreement = map(float, served.groups())
    assert agreement == 1.0
    assert accuracy > 0.85, result.stdout  # about 0.95 after 10 epochs; chance is 0.1
    served = re.search(r"int8 TFLite \(([\d,]+) bytes\) served in a separate process: test accuracy ([\d.]+), "
                       r"agreement with Keras ([\d.]+)", result.stdout)
    assert served, result.stdout
    size, int8_accuracy, int8_agreement = int(served.group(1).replace(",", "")), *map(float, served.groups()[1:])
    assert (tmp_path / "digits_step_network_int8.tflite").stat().st_size == size
    assert int8_agreement >= 0.97, result.stdout
    assert abs(int8_accuracy - accuracy) <= 0.03, result.stdout


def test_serve_saved_model_sends_png_bytes_and_prints_classes_like_keras(tmp_path):
    import numpy as np
    import tensorflow as tf

    from tests.training.test_serving import digits_test_images, tiny_model
    from training import data, serving

    _, evaluation, info = data.load("digits", batch_size=4, min_image_size=16)
    model = tiny_model(16, 10)
    serving.ServingModel(model, info).export(str(tmp_path / "export"))
    logits = model(next(iter(evaluation))[0], training=False).numpy().astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    paths = []
    for i, image in enumerate(digits_test_images()[:4]):
        paths.append(str(tmp_path / f"digit{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(image[..., np.newaxis]))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "serve_saved_model.py"),
                             str(tmp_path / "export"), *paths], cwd=tmp_path, capture_output=True, text=True,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    for path, line, p in zip(paths, lines, probabilities):
        k = int(np.argmax(p))
        printed = re.fullmatch(rf"{re.escape(path)}: class {k} '{k}', probability (0\.\d{{3}}|1\.000)", line)
        assert printed, line
        assert abs(float(printed.group(1)) - p[k]) <= 0.0005 + 1e-6  # printed to 3 decimals

def test_microcontroller_example_fits_and_runs_under_tflite_micro(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "microcontroller.py"), "--epochs", "4", "--qat-epochs", "1",
         "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                              "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = re.search(r"flash: ([\d,]+) bytes of flatbuffer .*; TFLite Micro arena: ([\d,]+) bytes", result.stdout)
    assert sizes, result.stdout
    flash, arena = (int(value.replace(",", "")) for value in sizes.groups())
    assert flash <= 256 * 1024 and arena <= 64 * 1024
    source = (tmp_path / "model_data.cc").read_text()
    assert f"const unsigned int g_model_len = {flash};" in source and (tmp_path / "model_data.h").exists()
    accuracy = re.search(r"int8 TFLite Micro ([\d.]+), int8 XNNPACK ([\d.]+)", result.stdout)
    agreement = re.search(r"agreement with the quantization-aware copy: TFLite Micro ([\d.]+), XNNPACK ([\d.]+)",
                          result.stdout)
    assert accuracy and agreement, result.stdout
    assert min(map(float, accuracy.groups())) > 0.8, result.stdout  # about 0.98 after 15 + 2 epochs
    assert min(map(float, agreement.groups())) >= 0.97, result.stdout
