"""training.serving: the SavedModels serve raw images as the evaluation pipeline feeds the Keras model.

The exports are served in a fresh Python process that imports TensorFlow and numpy alone and cannot
import keras_ftprop nor this repository (an import hook refuses them). What it returns is compared
here with the Keras model applied to the evaluation pipeline's output (``training.data``), to 1e-5:
the same float32 ops, traced once in tf.data and once in the SavedModel, differ at most by the
rounding of kernels chosen per batch size.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import data, serving
from training.data import pipelines

TOLERANCE = 1e-5

# Run in the fresh process: argv[1] a JSON list of calls, each served and saved to its "out" .npz.
SERVER = r"""
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_ftprop", "models", "training", "tests"):
            raise ImportError(f"the server may not import {name}")

sys.meta_path.insert(0, Refuse())
import numpy as np
import tensorflow as tf

loaded = {}
for call in json.load(open(sys.argv[1])):
    served = loaded.setdefault(call["export"], tf.saved_model.load(call["export"]))
    signature = served.signatures[call["signature"]]
    if call["signature"] == "serving_bytes":
        contents = [open(path, "rb").read() for path in call["files"]]
        out = signature(image_bytes=tf.constant(contents))
    elif call["signature"] == "preprocessing":
        out = signature()
    else:
        out = signature(images=tf.constant(np.load(call["array"])))
    np.savez(call["out"], **{key: value.numpy() for key, value in out.items()})
print("served without", sorted({"keras_ftprop", "models", "training"} - set(sys.modules)))
"""


def tiny_model(size, classes):
    """Smooth (no threshold) so that rounding cannot flip a unit: float outputs compare to a tolerance."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="tanh")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def logits_of(model, evaluation):
    return np.concatenate([model(x, training=False).numpy() for x, _ in evaluation])


def eval_pipeline(images, recipe):
    """The evaluation stream of ``small_pipelines`` over uint8 ``images`` (their native size) with ``recipe``."""
    examples = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int32)))
    return data.small_pipelines(examples, examples, recipe, batch_size=3, seed=0, shuffle_buffer=1)[1]


def write_image(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode = tf.io.encode_png if path.endswith(".png") else tf.io.encode_jpeg
    tf.io.write_file(path, encode(pixels))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{case: (expected logits, {call name: served outputs}, class names)} from one fresh process."""
    root = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    calls, cases = [], {}

    def call(case, name, signature, array=None, files=None):
        entry = dict(export=str(root / case), signature=signature, out=str(root / f"{case}_{name}.npz"))
        if array is not None:
            entry["array"] = str(root / f"{case}_{name}.npy")
            np.save(entry["array"], array)
        if files is not None:
            entry["files"] = files
        calls.append(entry)

    # RGB small-image recipe, no class names: 40x40 shrunk to 32, 20x20 enlarged, 32x32 unchanged.
    native = {side: rng.integers(0, 256, (3, side, side, 3), dtype=np.uint8) for side in (40, 20, 32)}
    train, evaluation, info = pipelines.in_memory(
        "rgb", (native[40], np.zeros(3, np.int32), native[40], np.zeros(3, np.int32)), num_classes=3,
        class_names=None, stats=data.channel_stats(native[40]), batch_size=3, image_size=32, seed=0,
        min_image_size=None)
    model = tiny_model(32, 3)
    serving.ServingModel(model, info).export(str(root / "rgb"))
    expected = {side: logits_of(model, eval_pipeline(native[side], info.recipe)) for side in native}
    for side in native:
        call("rgb", f"images{side}", "serving_default", array=native[side])
    pngs = [write_image(str(root / "rgb_png" / f"{side}_{i}.png"), native[side][i]) for side, i in
            ((40, 0), (20, 1), (32, 2))]
    call("rgb", "bytes", "serving_bytes", files=pngs)
    call("rgb", "float", "serving_float", array=np.concatenate([x.numpy() for x, _ in evaluation]))
    call("rgb", "preprocessing", "preprocessing")
    cases["rgb"] = dict(expected=expected, info=info, model=model,
                        bytes_expected=np.stack([expected[40][0], expected[20][1], expected[32][2]]))

    # Grey small-image recipe (digits, 8x8 enlarged to 16), served RGB with R = G = B, and as PNG.
    _, evaluation, info = data.load("digits", batch_size=64, min_image_size=16)
    images = digits_test_images()[:64]  # the first evaluation batch
    model = tiny_model(16, 10)
    serving.ServingModel(model, info).export(str(root / "digits"))
    expected = logits_of(model, evaluation.take(1))
    call("digits", "images", "serving_default", array=np.repeat(images[..., np.newaxis], 3, axis=-1))
    grey_pngs = [write_image(str(root / "digits_png" / f"{i}.png"), images[i][..., np.newaxis]) for i in range(4)]
    call("digits", "bytes", "serving_bytes", files=grey_pngs)
    call("digits", "preprocessing", "preprocessing")
    cases["digits"] = dict(expected=expected, info=info, model=model, bytes_expected=expected[:4])

    # Large-image recipe (folder:): PNGs and JPEGs of several sizes, shrunk first when large.
    folder = root / "folder"
    sizes = {"cat/a.png": (20, 24), "cat/b.png": (20, 24), "cat/c.jpg": (90, 120), "dog/d.png": (50, 40),
             "dog/e.jpg": (20, 24)}
    files = []
    for name, size in sizes.items():
        pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        files.append(write_image(str(folder / "val" / name), pixels))
        write_image(str(folder / "train" / name), pixels)
    _, evaluation, info = data.load(f"folder:{folder}", batch_size=8, image_size=16)
    model = tiny_model(16, 2)
    serving.ServingModel(model, info).export(str(root / "folder"))
    expected = logits_of(model, evaluation)
    call("folder", "bytes", "serving_bytes", files=files)
    decoded = [tf.io.decode_image(open(path, "rb").read(), channels=3).numpy() for path in files]
    call("folder", "images_ab", "serving_default", array=np.stack(decoded[:2]))
    call("folder", "images_d", "serving_default", array=decoded[3][np.newaxis])
    call("folder", "images_e", "serving_default", array=decoded[4][np.newaxis])
    call("folder", "preprocessing", "preprocessing")
    cases["folder"] = dict(expected=expected, info=info, model=model)

    manifest = root / "calls.json"
    manifest.write_text(json.dumps(calls))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SERVER, str(manifest)], cwd=root, capture_output=True,
                            text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "served without ['keras_ftprop', 'models', 'training']" in result.stdout
    outputs = {}
    for c in calls:
        case, name = os.path.basename(c["out"])[:-4].split("_", 1)
        outputs.setdefault(case, {})[name] = dict(np.load(c["out"], allow_pickle=True))
    return cases, outputs


def digits_test_images():
    """The uint8 images of digits' evaluation split, in order (as ``training.data.digits`` makes them)."""
    from sklearn.datasets import load_digits

    _, test = data.digits_split()
    return np.round(load_digits().images[test] * (255.0 / 16.0)).astype(np.uint8)


def check_outputs(out, logits, class_names):
    """The signature's outputs: logits as expected, their softmax, argmax and its class name."""
    np.testing.assert_allclose(out["logits"], logits, rtol=TOLERANCE, atol=TOLERANCE)
    z = out["logits"].astype(np.float64)
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out["probabilities"], softmax / softmax.sum(axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(out["classes"], np.argmax(logits, axis=1))
    assert out["classes"].dtype == np.int64
    if class_names is None:
        assert "class_names" not in out
    else:
        assert [name.decode() for name in out["class_names"]] == [class_names[k] for k in out["classes"]]


def test_raw_rgb_images_of_any_size_serve_as_the_evaluation_pipeline_feeds_the_model(served):
    cases, outputs = served
    case, out = cases["rgb"], outputs["rgb"]
    for side in (40, 20, 32):  # shrunk (antialiased), enlarged, unchanged
        check_outputs(out[f"images{side}"], case["expected"][side], None)
    check_outputs(out["bytes"], case["bytes_expected"], None)  # one request, three sizes
    check_outputs(out["float"], case["expected"][40], None)
    assert not np.allclose(case["expected"][20], case["expected"][40], atol=1e-3)  # the inputs differ


def test_grey_data_sets_take_rgb_and_grey_png(served):
    cases, outputs = served
    case, out = cases["digits"], outputs["digits"]
    names = [str(d) for d in range(10)]
    check_outputs(out["images"], case["expected"], names)
    check_outputs(out["bytes"], case["bytes_expected"], names)


def test_large_image_recipe_serves_bytes_as_the_folder_pipeline_reads_files(served):
    cases, outputs = served
    case, out = cases["folder"], outputs["folder"]
    expected = case["expected"]
    check_outputs(out["bytes"], expected, ("cat", "dog"))  # PNG, JPEG decoded at 1/4 scale, shrunk PNG
    check_outputs(out["images_ab"], expected[:2], ("cat", "dog"))
    check_outputs(out["images_d"], expected[3:4], ("cat", "dog"))  # 40 >= 2 R: shrunk, then cropped
    check_outputs(out["images_e"], expected[4:5], ("cat", "dog"))


@pytest.mark.parametrize("case", ["rgb", "digits", "folder"])
def test_the_preprocessing_signature_holds_the_recipe(served, case):
    cases, outputs = served
    recipe, info = cases[case]["info"].recipe, cases[case]["info"]
    out = outputs[case]["preprocessing"]
    np.testing.assert_allclose(out["mean"], recipe.mean, rtol=1e-7)
    np.testing.assert_allclose(out["std"], recipe.std, rtol=1e-7)
    assert (int(out["image_size"]), int(out["resize_size"])) == (recipe.size, recipe.resize)
    assert out["transform"].item().decode() == ("resize" if recipe.family == "small" else "centre_crop")
    assert out["color"].item().decode() == ("grey" if recipe.grey else "rgb")
    if info.class_names is None:
        assert "class_names" not in out
    else:
        assert [name.decode() for name in out["class_names"]] == list(info.class_names)


def test_grey_is_bt601_luma_and_exact_on_grey_pixels():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (500, 3)).astype(np.float64)
    want = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    np.testing.assert_allclose(serving.grey(tf.constant(rgb, tf.float32)).numpy()[:, 0], want, atol=1e-4)
    levels = np.repeat(np.arange(256, dtype=np.float32)[:, np.newaxis], 3, axis=1)
    np.testing.assert_array_equal(serving.grey(tf.constant(levels)).numpy()[:, 0], np.arange(256))


def test_recipes_of_the_sources_say_grey_or_rgb():
    _, _, info = data.load("digits", batch_size=64)
    assert info.recipe.grey and info.recipe.size == 8
    settings = serving.preprocessing_settings(info.recipe)
    assert settings["color"] == "grey" and settings["rule"].startswith("grey Y = 0.299 R + 0.587 G + 0.114 B")
    large = serving.preprocessing_settings(data.large_recipe(image_size=112))
    assert (large["transform"], large["image_size"], large["resize_size"], large["color"]) == (
        "centre_crop", 112, 128, "rgb")


def test_the_saved_model_stores_each_variable_once(tmp_path):
    """Keras's ``ExportArchive.track`` would store every variable a second time: twice the weights' bytes."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    labels = np.zeros(3, np.int32)
    _, evaluation, info = pipelines.in_memory(
        "rgb", (images, labels, images, labels), num_classes=3, class_names=("a", "b", "c"),
        stats=data.channel_stats(images), batch_size=3, image_size=8, seed=0, min_image_size=None)
    model = tiny_model(8, 3)
    serving.ServingModel(model, info).export(str(tmp_path / "export"))
    stored = tf.train.list_variables(str(tmp_path / "export" / "variables" / "variables"))
    assert sum(int(np.prod(shape)) for name, shape in stored if name.endswith("VARIABLE_VALUE")) == \
        model.count_params()
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    x = next(iter(evaluation))[0]
    np.testing.assert_allclose(loaded.signatures["serving_float"](images=x)["logits"].numpy(),
                               model(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
