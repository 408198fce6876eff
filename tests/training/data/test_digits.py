"""training.data.digits: scikit-learn's bundled digits, its fixed split and normalization."""


import numpy as np
import pytest
import tensorflow as tf

from tests.training.data.helpers import (
    batches,
)
from training import data


@pytest.fixture(scope="module")
def digits32():
    return data.load("digits", batch_size=64, min_image_size=32, seed=3)


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
