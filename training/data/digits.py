"""``digits``: scikit-learn's bundled handwritten digits (1797 8x8 images, grey levels 0..16).

A fixed stratified 80/20 split (seed 0, whatever the run's seed): the same
360 held-out images on every machine.
"""

from __future__ import annotations

import numpy as np

from training.data.base import channel_stats
from training.data.pipelines import in_memory

_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2


def digits_split():
    """Indices (train, test) of the fixed stratified 80/20 split of ``load_digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    indices = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        indices, test_size=_DIGITS_TEST_FRACTION, stratify=labels,
        random_state=_DIGITS_SPLIT_SEED)
    return np.sort(train_idx), np.sort(test_idx)


def _digits_arrays():
    """(x_train, y_train, x_test, y_test): uint8 u = round(255 v / 16) of the 0..16 grey levels v."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = digits_split()
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def load(**opts):
    arrays = _digits_arrays()
    return in_memory("digits", arrays, num_classes=10,
                      class_names=tuple(str(d) for d in range(10)),
                      stats=channel_stats(arrays[0]), **opts)
