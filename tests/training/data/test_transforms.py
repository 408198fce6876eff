"""training.data.transforms: the batched crop and flip, checked pixel by pixel."""


import numpy as np
import tensorflow as tf

from tests.training.data.helpers import (
    windows,
)
from training import data


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
