"""Data made here for the tests of ``training.data``: tiny images, IDX files, windows of them."""

import gzip
import os

import numpy as np
import tensorflow as tf

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


def assert_seekable(train_from, total, starts):
    """``train_from(g)`` is ``train_from(0)`` without its first g batches, pixel for pixel, for each g of
    ``starts`` (over ``total`` batches); returns the batches of ``train_from(0)``."""
    whole = [(x.numpy(), y.numpy()) for x, y in train_from(0).take(total)]
    for g in starts:
        tail = [(x.numpy(), y.numpy()) for x, y in train_from(g).take(total - g)]
        assert len(tail) == total - g
        for (x, y), (x0, y0) in zip(tail, whole[g:]):
            np.testing.assert_array_equal(y, y0, err_msg=f"labels, from batch {g}")
            np.testing.assert_array_equal(x, x0, err_msg=f"images (crops and flips), from batch {g}")
    return whole
