"""training.data.pipelines: seeded shuffling, reshuffled every epoch; the stream a resumed run seeks into."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.data.helpers import assert_seekable
from training import data
from training.data import pipelines


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


def test_the_training_stream_from_batch_g_is_the_stream_from_0_without_its_first_g_batches():
    _, _, info = data.load("digits", batch_size=100, seed=7)  # 14 batches a pass
    whole = [(x.numpy(), y.numpy()) for x, y in info.train_from(0).take(40)]
    for g in (0, 5, 14, 27):  # within pass 0, at a pass boundary, within pass 1
        tail = [(x.numpy(), y.numpy()) for x, y in info.train_from(g).take(40 - g)]
        for (xa, ya), (xb, yb) in zip(tail, whole[g:]):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)  # the same crops and flips
    labels = [y for _, y in whole]
    assert not np.array_equal(labels[0], labels[14])  # each pass reshuffled
    _, _, other = data.load("digits", batch_size=100, seed=8)
    assert not np.array_equal(next(iter(other.train_from(0)))[1].numpy(), labels[0])


def test_the_training_stream_works_with_a_global_seed_of_0():
    keras.utils.set_random_seed(0)
    _, _, info = data.load("digits", batch_size=100, seed=0)
    first = [y.numpy() for _, y in info.train_from(0).take(3)]
    again = [y.numpy() for _, y in info.train_from(1).take(2)]
    np.testing.assert_array_equal(first[1], again[0])


def encoded_examples(count, seed=0):
    """(JPEG bytes, label) of ``count`` random 12x16 images labelled 0, 1, ...: a tfds split without decoding."""
    rng = np.random.default_rng(seed)
    images = [tf.io.encode_jpeg(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)).numpy()
              for _ in range(count)]
    return tf.data.Dataset.from_tensor_slices((images, np.arange(count, dtype=np.int32)))


def test_the_large_image_stream_from_batch_g_is_the_stream_from_0_without_its_first_g_batches():
    """The large-image recipe on encoded images (as tfds's): 9 examples in batches of 2, 4 batches a pass."""
    examples = encoded_examples(9)
    _, _, train_from = data.large_pipelines(examples, examples, data.large_recipe(image_size=8), batch_size=2,
                                            seed=3, shuffle_buffer=9, train_count=9)
    whole = assert_seekable(train_from, 10, starts=(3, 4, 6))  # the last batch of pass 0, pass 1's first, within it
    images, labels = (np.concatenate(arrays) for arrays in zip(*whole))
    assert list(labels[:8]) != list(labels[8:16])  # each pass shuffled anew
    first, second = np.flatnonzero(labels == labels[0])[:2]  # one image in passes 0 and 1: other crops
    assert not np.array_equal(images[first], images[second])


def test_a_seek_at_each_side_of_a_pass_boundary():
    """Pass p's batches numbered 10 p + b: from global batch g = 3 p + b of 3 batches a pass, then of 1."""
    def one_pass(batches):
        return lambda p, skip: tf.data.Dataset.range(skip, batches).map(lambda b: 10 * p + b)

    def stream(start, batches, count=4):
        return list(pipelines.seekable_stream(one_pass(batches), start, batches).take(count).as_numpy_iterator())

    assert stream(0, 3) == [0, 1, 2, 10]
    assert stream(2, 3) == [2, 10, 11, 12]  # the last batch of pass 0
    assert stream(3, 3) == [10, 11, 12, 20]  # the first of pass 1
    assert stream(4, 3) == [11, 12, 20, 21]
    assert stream(2, 1) == [20, 30, 40, 50]  # one batch a pass
    with pytest.raises(ValueError, match="holds no whole batch"):
        pipelines.seekable_stream(one_pass(0), 0, 0)
