"""training.data.pipelines: seeded shuffling, reshuffled every epoch."""


import keras
import numpy as np

from training import data


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
