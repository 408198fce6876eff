"""training.data.folder: image trees made here, with corrupt and empty files."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.training.data.helpers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    assert_seekable,
    batches,
    denormalize,
    find_window,
    make_folder,
    write_image,
)
from training import data


def test_folder_with_corrupt_file(tmp_path):
    make_folder(str(tmp_path))
    good = os.path.join(tmp_path, "train", "dog", "0.jpg")
    with open(good, "rb") as f:
        head = f.read()[: 200]
    with open(os.path.join(tmp_path, "train", "dog", "truncated.jpg"), "wb") as f:
        f.write(head)
    with open(os.path.join(tmp_path, "train", "cat", "notes.txt"), "w") as f:
        f.write("not an image, ignored by extension")
    train, evaluation, info = data.load(f"folder:{tmp_path}", batch_size=2, image_size=8, seed=0)
    assert info.skipped_files == 1
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    assert (info.train_examples, info.eval_examples) == (6, 4)
    x, y = batches(train)
    assert x.shape == (6, 8, 8, 3) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    x_eval, y_eval = batches(evaluation)
    assert x_eval.shape == (4, 8, 8, 3) and y_eval.tolist() == [0, 0, 1, 1]


def test_folder_garbage_and_empty_files_counted(tmp_path):
    make_folder(str(tmp_path), train_per_class=2, val_per_class=2, ext=".png")
    with open(os.path.join(tmp_path, "val", "cat", "garbage.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff" + os.urandom(64))
    open(os.path.join(tmp_path, "val", "dog", "empty.png"), "wb").close()
    _, evaluation, info = data.load(f"folder:{tmp_path}", batch_size=3, image_size=8)
    assert info.skipped_files == 2 and info.eval_examples == 4
    assert batches(evaluation)[0].shape == (4, 8, 8, 3)


def test_folder_eval_centre_crop_exact_pixels(tmp_path):
    # image_size C = 8 -> resize side R = round(256 / 224 * 8) = 9. A 9x12 image
    # already has shorter side 9, so eval = rows 0..7, columns 2..9 exactly.
    images = make_folder(str(tmp_path), classes=("a",), train_per_class=2, val_per_class=1,
                         size=(9, 12), ext=".png")
    source = images[os.path.join(tmp_path, "val", "a", "0.png")].astype(np.float64)
    _, evaluation, info = data.load(f"folder:{tmp_path}", batch_size=4, image_size=8)
    x, y = batches(evaluation)
    expected = (source[0:8, 2:10] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert info.image_shape == (8, 8, 3) and y.tolist() == [0]
    np.testing.assert_allclose(x[0], expected, atol=1e-5)


def test_folder_eval_matches_resize_then_centre_crop(tmp_path):
    # 18x24 PNG, C = 8, R = 9: reference recipe = resize to 9x12, centre crop 8x8.
    images = make_folder(str(tmp_path), classes=("a",), train_per_class=1, val_per_class=1,
                         size=(18, 24), ext=".png")
    source = images[os.path.join(tmp_path, "val", "a", "0.png")]
    resized = tf.image.resize(source, [9, 12], antialias=True).numpy()
    reference = np.clip(np.round(resized), 0, 255)[0:8, 2:10]
    _, evaluation, _ = data.load(f"folder:{tmp_path}", batch_size=1, image_size=8)
    x, _ = batches(evaluation)
    np.testing.assert_allclose(denormalize(x[0], IMAGENET_MEAN, IMAGENET_STD), reference, atol=1e-3)


def test_folder_big_jpeg_uses_dct_downscale(tmp_path):
    # 72x96 JPEG, C = 8, R = 9: decoded at 1/8 scale (72 >= 8 * 9) to 9x12, whose
    # centre 8x8 must match the reference resize(9x12) + centre crop on a smooth image.
    yy, xx = np.mgrid[0:72, 0:96]
    smooth = np.stack([2 * yy + 40, xx + 60, 150 + yy - xx // 2], -1).astype(np.uint8)
    for split in ("train", "val"):
        write_image(os.path.join(tmp_path, split, "a", "big.jpg"), smooth)
    _, evaluation, _ = data.load(f"folder:{tmp_path}", batch_size=1, image_size=8)
    x, _ = batches(evaluation)
    contents = tf.io.read_file(os.path.join(tmp_path, "val", "a", "big.jpg"))
    assert data.decode_shrunk(contents, 9).shape == (9, 12, 3)
    assert data.decode_shrunk(contents, 20).shape == (36, 48, 3)  # 1/2: 72 >= 2 * 20
    decoded = tf.io.decode_jpeg(contents)
    reference = tf.image.resize(decoded, [9, 12], antialias=True).numpy()[0:8, 2:10]
    got = denormalize(x[0], IMAGENET_MEAN, IMAGENET_STD)
    assert np.abs(got - reference).mean() < 3.0


def test_folder_train_random_crops_are_windows(tmp_path):
    images = make_folder(str(tmp_path), classes=("a",), train_per_class=4, val_per_class=1,
                         size=(9, 12), ext=".png")
    sources = [images[os.path.join(tmp_path, "train", "a", f"{i}.png")].astype(np.float64)
               for i in range(4)]
    train, _, _ = data.load(f"folder:{tmp_path}", batch_size=4, image_size=8, seed=5)
    seen = set()
    for _ in range(3):  # three epochs
        x, _ = batches(train)
        for image in denormalize(x, IMAGENET_MEAN, IMAGENET_STD):
            found = find_window(image, sources, 8, atol=1e-3)
            assert found is not None
            seen.add(found[1])
    assert len(seen) > 2  # crops and mirrors vary
    assert any(mirrored for _, _, mirrored in seen)


def test_folder_class_mismatch(tmp_path):
    make_folder(str(tmp_path), classes=("cat", "dog"), train_per_class=1, val_per_class=1)
    os.makedirs(os.path.join(tmp_path, "val", "emu"))
    os.rename(os.path.join(tmp_path, "train", "dog"), os.path.join(tmp_path, "train", "dingo"))
    with pytest.raises(data.DatasetError) as error:
        data.load(f"folder:{tmp_path}", batch_size=2)
    message = str(error.value)
    assert "only in train/: dingo" in message and "only in val/: dog, emu" in message
    assert "\n" not in message


def test_folder_missing_and_empty_directories(tmp_path):
    with pytest.raises(data.DatasetError, match="directory not found"):
        data.load(f"folder:{tmp_path / 'absent'}", batch_size=2)
    with pytest.raises(data.DatasetError, match="directory is empty"):
        data.load(f"folder:{tmp_path}", batch_size=2)
    os.makedirs(tmp_path / "train" / "cat")
    with pytest.raises(data.DatasetError, match="missing val/"):
        data.load(f"folder:{tmp_path}", batch_size=2)
    os.makedirs(tmp_path / "val")
    with pytest.raises(data.DatasetError, match="no class sub-directories"):
        data.load(f"folder:{tmp_path}", batch_size=2)
    os.makedirs(tmp_path / "val" / "cat")
    with pytest.raises(data.DatasetError, match="no image files"):
        data.load(f"folder:{tmp_path}", batch_size=2)


def test_folder_training_stream_from_batch_g_is_the_stream_from_0_without_its_first_g_batches(tmp_path):
    """What a resumed run trains on: 9 readable images (a truncated one left out) in batches of 2, 4 a pass."""
    make_folder(str(tmp_path), classes=("a", "b", "c"), train_per_class=3, val_per_class=1)
    with open(os.path.join(tmp_path, "train", "a", "0.jpg"), "rb") as f:
        head = f.read()[:200]
    with open(os.path.join(tmp_path, "train", "b", "truncated.jpg"), "wb") as f:
        f.write(head)
    _, _, info = data.load(f"folder:{tmp_path}", batch_size=2, image_size=8, seed=3)
    assert (info.train_examples, info.skipped_files) == (9, 1)
    # From within pass 1 (the pass boundary: tests/training/data/test_pipelines.py): a split counted with the
    # unreadable file (5 batches a pass) would start there one batch late.
    whole = assert_seekable(info.train_from, 10, starts=(6,))
    images, labels = (np.concatenate(arrays) for arrays in zip(*whole))
    assert sorted(labels[:8]) != sorted(labels[8:16]) or not np.array_equal(images[:8], images[8:16])


def test_folder_images_default_to_the_models_input_side_and_the_median_side_is_measured(tmp_path):
    # Shorter sides 12 (train, 4 images), 9 (train, 2 images of 9x30 PNG) and 40 (val): median of train = 12.
    make_folder(str(tmp_path), classes=("a", "b"), train_per_class=2, val_per_class=1, size=(12, 16))
    rng = np.random.default_rng(3)
    for i in range(2):
        write_image(os.path.join(tmp_path, "train", "a", f"wide{i}.png"),
                    rng.integers(0, 256, size=(30, 9, 3), dtype=np.uint8))
    write_image(os.path.join(tmp_path, "val", "b", "big.jpg"), rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    _, evaluation, info = data.load(f"folder:{tmp_path}", batch_size=2, model_image_size=32)
    assert info.image_shape == (32, 32, 3) and info.size_from_model
    assert (info.native_side, info.recipe.resize) == (12, 37)  # R = round(256 / 224 * 32)
    assert data.upsampling(info) == pytest.approx(37 / 12)
    assert batches(evaluation)[0].shape[1:] == (32, 32, 3)
    given = data.load(f"folder:{tmp_path}", batch_size=2, image_size=16, model_image_size=32)[2]
    assert given.image_shape == (16, 16, 3) and not given.size_from_model and given.recipe.resize == 18
    # Without a model's side, the ImageNet crop (benchmarks and earlier callers).
    assert data.load(f"folder:{tmp_path}", batch_size=2)[2].image_shape == (224, 224, 3)


def test_probe_files_reads_each_shorter_side(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for name, shape in (("a.jpg", (20, 33)), ("b.png", (41, 17)), ("c.jpg", (8, 8))):
        paths.append(os.path.join(tmp_path, name))
        write_image(paths[-1], rng.integers(0, 256, size=shape + (3,), dtype=np.uint8))
    paths.append(os.path.join(tmp_path, "broken.jpg"))
    with open(paths[-1], "wb") as f:
        f.write(b"\xff\xd8not a jpeg")
    ok, sides = data.probe_files(paths)
    assert ok.tolist() == [True, True, True, False] and sides.tolist() == [20, 17, 8, 0]
