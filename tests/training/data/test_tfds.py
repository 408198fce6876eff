"""training.data.tfds: tensorflow-datasets sets, through ``tfds.testing.mock_data`` (no download)."""


import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.training.data.helpers import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    batches,
    denormalize,
    find_window,
)
from training import data


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
    assert not info.size_from_model and info.native_side is None  # ImageNet's images vary in size


def test_tfds_large_images_default_to_the_models_side_small_ones_keep_theirs():
    with tfds.testing.mock_data(num_examples=6):
        _, evaluation, info = data.load("imagenet2012", batch_size=4, seed=0, manual_dir="unused",
                                        model_image_size=32)
        x_eval, _ = batches(evaluation)
        _, _, cifar = data.load("cifar10", batch_size=4, seed=0, min_image_size=32, model_image_size=224)
    assert info.image_shape == (32, 32, 3) and x_eval.shape == (6, 32, 32, 3) and info.size_from_model
    assert cifar.image_shape == (32, 32, 3) and not cifar.size_from_model  # CIFAR keeps its own 32x32
    assert (cifar.native_side, cifar.recipe.resize) == (32, 32)


def test_tfds_unknown_and_not_image_classification():
    with pytest.raises(data.DatasetError, match="unknown dataset 'no_such_dataset_xyz'") as error:
        data.load("no_such_dataset_xyz", batch_size=4)
    assert isinstance(error.value.__cause__, tfds.core.registered.DatasetNotFoundError)  # the cause is kept
    with pytest.raises(data.DatasetError, match="not an image-classification dataset"):
        data.load("imdb_reviews", batch_size=4)
