"""Tests of the input pipelines in ``training.data``.

Everything runs on data made here (tiny images), scikit-learn's bundled
digits, or ``tfds.testing.mock_data``: no downloads.
"""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from training import data

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


def batches(dataset):
    """All (images, labels) of a dataset as two numpy arrays."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def denormalize(y, mean, std):
    """Inverse of y = (u / 255 - mean) / std: returns u."""
    return (y * np.asarray(std) + np.asarray(mean)) * 255.0


def windows(image, size):
    """All size x size windows of an (H, W, C) image, with their mirrors."""
    height, width = image.shape[:2]
    out = []
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            window = image[top:top + size, left:left + size]
            out.append(((top, left, False), window))
            out.append(((top, left, True), window[:, ::-1]))
    return out


def find_window(candidate, images, size, atol):
    """(index, (top, left, mirrored)) of the first window of images equal to candidate, else None."""
    for index, image in enumerate(images):
        for where, window in windows(image, size):
            if np.allclose(window, candidate, atol=atol):
                return index, where
    return None


# --------------------------------------------------------------------------
# file writers
# --------------------------------------------------------------------------


def write_image(path, array):
    """PNG or JPEG by extension, from a uint8 (H, W, 3) array."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode = tf.io.encode_png if path.endswith(".png") else tf.io.encode_jpeg
    tf.io.write_file(path, encode(array))


def make_folder(root, classes=("cat", "dog"), train_per_class=3, val_per_class=2,
                size=(12, 16), ext=".jpg", seed=0):
    rng = np.random.default_rng(seed)
    images = {}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in classes:
            for i in range(count):
                path = os.path.join(root, split, name, f"{i}{ext}")
                images[path] = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
                write_image(path, images[path])
    return images


IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(array):
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    header += np.asarray(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write_idx(path, array, gz=False):
    raw = idx_bytes(array)
    if gz:
        path += ".gz"
        raw = gzip.compress(raw)
    with open(path, "wb") as f:
        f.write(raw)
    return path


def make_idx(directory, gz=False, train=30, test=12, side=10, classes=5, seed=0,
             prefix="", test_name="t10k", dot=False):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", train), (test_name, test)):
        images = rng.integers(0, 256, size=(count, side, side), dtype=np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        sep = "." if dot else "-"
        write_idx(os.path.join(directory, f"{prefix}{split}-images{sep}idx3-ubyte"), images, gz)
        write_idx(os.path.join(directory, f"{prefix}{split}-labels{sep}idx1-ubyte"), labels, gz)
        arrays[split] = (images, labels)
    return arrays


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits32():
    return data.load("digits", batch_size=64, min_image_size=32, seed=3)


def test_dataset_names():
    assert data.dataset_names() == ("digits", "<tfds name>", "folder:PATH", "idx:DIR")


def test_digits_shapes_and_info(digits32):
    train, evaluation, info = digits32
    assert info.name == "digits"
    assert info.num_classes == 10
    assert info.image_shape == (32, 32, 3)
    assert (info.train_examples, info.eval_examples) == (1437, 360)
    assert info.class_names == tuple("0123456789") and info.skipped_files == 0
    x, y = next(iter(train))
    assert x.shape == (64, 32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (64,) and y.dtype == tf.int32
    assert train.element_spec[0].shape.as_list() == [64, 32, 32, 3]  # drop_remainder
    assert sum(1 for _ in train) == 1437 // 64
    x_eval, y_eval = batches(evaluation)
    assert x_eval.shape == (360, 32, 32, 3)  # the last partial batch is kept
    assert set(np.unique(y_eval)) == set(range(10))
    assert np.array_equal(x_eval[..., 0], x_eval[..., 2])  # grey replicated


def test_digits_eval_deterministic_and_normalized(digits32):
    _, evaluation, _ = digits32
    x1, y1 = batches(evaluation)
    x2, y2 = batches(evaluation)
    _, other_eval, _ = data.load("digits", batch_size=50, min_image_size=32, seed=99)
    x3, y3 = batches(other_eval)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.array_equal(x1, x3) and np.array_equal(y1, y3)  # split independent of seed
    assert abs(x1.mean()) < 0.05
    assert 0.7 < x1.std() < 1.2  # unit std at native 8x8; bilinear upsampling smooths a bit


def test_digits_native_size_without_min():
    _, evaluation, info = data.load("digits", batch_size=400)
    x, _ = batches(evaluation)
    assert info.image_shape == (8, 8, 3) and x.shape == (360, 8, 8, 3)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1.0) < 0.05  # exact stats at native size


def test_digits_split_disjoint_and_stratified():
    from sklearn.datasets import load_digits

    train_idx, test_idx = data.digits_split()
    assert len(train_idx) == 1437 and len(test_idx) == 360
    assert not set(train_idx) & set(test_idx)
    assert set(train_idx) | set(test_idx) == set(range(1797))
    labels = load_digits().target
    counts = np.bincount(labels, minlength=10)
    test_counts = np.bincount(labels[test_idx], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    assert np.array_equal(test_idx, data.digits_split()[1])


def test_train_shuffle_seeded_and_reshuffled_each_epoch():
    def first_batch(dataset):
        x, y = next(iter(dataset))
        return x.numpy(), y.numpy()

    train_a, _, _ = data.load("digits", batch_size=32, seed=7)
    train_b, _, _ = data.load("digits", batch_size=32, seed=7)
    train_c, _, _ = data.load("digits", batch_size=32, seed=8)
    a1, a2 = first_batch(train_a), first_batch(train_a)
    b1, b2 = first_batch(train_b), first_batch(train_b)
    assert np.array_equal(a1[0], b1[0]) and np.array_equal(a1[1], b1[1])
    assert np.array_equal(a2[0], b2[0])  # epoch 2 reproducible too
    assert not np.array_equal(a1[1], a2[1])  # but different from epoch 1
    assert not np.array_equal(a1[1], first_batch(train_c)[1])
    # train.py repeats the dataset for fixed-length epochs: still reshuffled each pass
    repeated = iter(train_b.repeat())
    per_epoch = 1437 // 32
    labels = [next(repeated)[1].numpy() for _ in range(per_epoch + 1)]
    assert not np.array_equal(labels[0], labels[per_epoch])


# --------------------------------------------------------------------------
# small-image augmentation, checked pixel by pixel
# --------------------------------------------------------------------------


def test_pad_random_crop_and_flip_are_exact_windows():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(16, 6, 6, 3)), tf.float32)
    seed = tf.constant([1, 2], tf.int64)
    cropped = data.pad_random_crop(x, 2, seed).numpy()
    assert cropped.shape == (16, 6, 6, 3)
    padded = np.pad(x.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    offsets = set()
    for b in range(16):
        match = [(top, left) for (top, left, m), w in windows(padded[b], 6) if not m and np.array_equal(w, cropped[b])]
        assert match, f"image {b} is not a window of its padded source"
        offsets.add(match[0])
    assert len(offsets) > 3  # offsets vary per image
    flipped = data.random_flip(x, seed).numpy()
    mirrored = [np.array_equal(f, s[:, ::-1]) for f, s in zip(flipped, x.numpy())]
    same = [np.array_equal(f, s) for f, s in zip(flipped, x.numpy())]
    assert all(m or s for m, s in zip(mirrored, same)) and 0 < sum(mirrored) < 16


def test_idx_train_images_are_padded_crops_without_flip(tmp_path):
    arrays = make_idx(str(tmp_path), train=12, side=8)
    train, _, info = data.load(f"idx:{tmp_path}", batch_size=12, seed=0)
    recipe_pad = 1  # p = max(1, round(8 / 8))
    mean, std = data.channel_stats(arrays["train"][0])
    x, y = batches(train)
    sources = np.pad(arrays["train"][0][..., None].repeat(3, -1).astype(np.float64),
                     [(0, 0), (recipe_pad,) * 2, (recipe_pad,) * 2, (0, 0)])
    for image, label in zip(denormalize(x, mean, std), y):
        found = find_window(image, sources, 8, atol=1e-3)
        assert found is not None
        index, (_, _, mirrored) = found
        assert not mirrored or np.allclose(image, image[:, ::-1], atol=1e-3)
        assert label == arrays["train"][1][index]
    assert info.image_shape == (8, 8, 3)


# --------------------------------------------------------------------------
# tensorflow-datasets (mocked)
# --------------------------------------------------------------------------


def test_tfds_cifar10_mock_crop_flip_and_stats():
    with tfds.testing.mock_data(num_examples=12):
        train, evaluation, info = data.load("cifar10", batch_size=12, seed=1)
        x_train, _ = batches(train)
        x_eval, y_eval = batches(evaluation)
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert (info.train_examples, info.eval_examples) == (12, 12)
    assert len(info.class_names) == 10
    assert x_train.shape == (12, 32, 32, 3) and x_eval.shape == (12, 32, 32, 3)
    assert y_eval.dtype == np.int32 and y_eval.min() >= 0 and y_eval.max() < 10
    # mock train and test splits hold the same examples: every training image
    # is a 32x32 window of a zero-padded (p = 4) eval image, possibly mirrored.
    raw_eval = denormalize(x_eval, CIFAR10_MEAN, CIFAR10_STD)
    padded = np.pad(raw_eval, [(0, 0), (4, 4), (4, 4), (0, 0)])
    mirrored = 0
    for image in denormalize(x_train, CIFAR10_MEAN, CIFAR10_STD):
        found = find_window(image, padded, 32, atol=1e-2)
        assert found is not None
        mirrored += found[1][2]
    assert mirrored > 0


def test_tfds_mnist_mock_grey_upsized():
    with tfds.testing.mock_data(num_examples=10):
        train, evaluation, info = data.load("mnist", batch_size=4, seed=0, min_image_size=32)
        x, y = next(iter(train))
        x_eval, _ = batches(evaluation)
    assert info.image_shape == (32, 32, 3) and x.shape == (4, 32, 32, 3)
    assert (info.train_examples, info.eval_examples) == (10, 10)
    assert x_eval.shape == (10, 32, 32, 3)
    assert np.array_equal(x_eval[..., 0], x_eval[..., 1])
    assert y.dtype == tf.int32


def test_tfds_imagenet_mock_large_recipe():
    with tfds.testing.mock_data(num_examples=6):
        train, evaluation, info = data.load("imagenet2012", batch_size=4, image_size=16, seed=0,
                                            manual_dir="unused")
        x, y = next(iter(train))
        x_eval, _ = batches(evaluation)
    assert info.num_classes == 1000 and info.image_shape == (16, 16, 3)
    assert x.shape == (4, 16, 16, 3) and x_eval.shape == (6, 16, 16, 3)
    assert np.all(np.isfinite(x_eval))


def test_tfds_unknown_and_not_image_classification():
    with pytest.raises(data.DatasetError, match="unknown dataset 'no_such_dataset_xyz'"):
        data.load("no_such_dataset_xyz", batch_size=4)
    with pytest.raises(data.DatasetError, match="not an image-classification dataset"):
        data.load("imdb_reviews", batch_size=4)


# --------------------------------------------------------------------------
# folder:PATH
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# idx:DIR
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_load(tmp_path, gz):
    arrays = make_idx(str(tmp_path), gz=gz)
    train, evaluation, info = data.load(f"idx:{tmp_path}", batch_size=8, seed=0)
    assert info.num_classes == 5 and info.image_shape == (10, 10, 3)
    assert (info.train_examples, info.eval_examples) == (30, 12)
    assert sum(1 for _ in train) == 3
    x, y = batches(evaluation)
    images, labels = arrays["t10k"]
    mean, std = data.channel_stats(arrays["train"][0])
    expected = (images[..., None].repeat(3, -1) / 255.0 - mean) / std
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert np.array_equal(y, labels)


def test_idx_prefixed_names_and_ambiguity(tmp_path):
    make_idx(str(tmp_path), prefix="emnist-balanced-", test_name="test", dot=True, gz=True)
    _, _, info = data.load(f"idx:{tmp_path}", batch_size=8)
    assert info.train_examples == 30
    make_idx(str(tmp_path), prefix="emnist-digits-", test_name="test")
    with pytest.raises(data.DatasetError, match="several IDX sets"):
        data.load(f"idx:{tmp_path}", batch_size=8)


def test_read_idx_types_and_errors(tmp_path):
    ints = np.arange(6, dtype=">i4").reshape(2, 3)
    path = write_idx(str(tmp_path / "ints"), ints)
    assert np.array_equal(data.read_idx(path), ints)
    floats = np.linspace(0, 1, 4).astype(">f4")
    assert np.array_equal(data.read_idx(write_idx(str(tmp_path / "f"), floats, gz=True)), floats)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(data.DatasetError, match="not an IDX file"):
        data.read_idx(str(bad))
    bad.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1])
    with pytest.raises(data.DatasetError, match="truncated"):
        data.read_idx(str(bad))
    bad.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(data.DatasetError, match="unknown IDX element type"):
        data.read_idx(str(bad))


def test_idx_malformed_sets(tmp_path):
    with pytest.raises(data.DatasetError, match="directory not found"):
        data.load(f"idx:{tmp_path / 'absent'}", batch_size=4)
    make_idx(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(data.DatasetError, match="missing t10k-labels-idx1-ubyte"):
        data.load(f"idx:{tmp_path}", batch_size=4)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(11, np.uint8))
    with pytest.raises(data.DatasetError, match="has 12 images but .* has 11 labels"):
        data.load(f"idx:{tmp_path}", batch_size=4)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(data.DatasetError, match="not an IDX file"):
        data.load(f"idx:{tmp_path}", batch_size=4)


# --------------------------------------------------------------------------
# helpers and argument checks
# --------------------------------------------------------------------------


def test_channel_stats_matches_numpy():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    mean, std = data.channel_stats(rgb)
    np.testing.assert_allclose(mean, (rgb / 255.0).mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(std, (rgb / 255.0).std(axis=(0, 1, 2)), rtol=1e-9)
    grey_mean, grey_std = data.channel_stats(rgb[..., 0])
    assert grey_mean == (mean[0],) * 3 and grey_std == pytest.approx((std[0],) * 3)


def test_recipes():
    small = data.small_recipe(28, name="mnist", mean=(0.1,) * 3, std=(0.3,) * 3,
                              min_image_size=32)
    assert (small.size, small.pad, small.flip) == (32, 4, False)
    assert data.small_recipe(32, name="cifar10", mean=(0,) * 3, std=(1,) * 3).flip
    large = data.large_recipe(min_image_size=67)
    assert (large.size, large.resize) == (224, 256)
    assert (data.large_recipe(image_size=112).resize) == 128


def test_bad_arguments():
    with pytest.raises(data.DatasetError, match="batch_size"):
        data.load("digits", batch_size=0)
    with pytest.raises(data.DatasetError, match="image_size"):
        data.load("digits", batch_size=4, image_size=-1)
    with pytest.raises(data.DatasetError, match="missing path"):
        data.load("folder:", batch_size=4)
