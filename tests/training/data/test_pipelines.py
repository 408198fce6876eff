"""training.data.pipelines: seeded shuffling, reshuffled every epoch."""


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
