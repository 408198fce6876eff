"""Batched, shuffled, augmented ``tf.data`` pipelines of the two recipes, common to every source."""

from __future__ import annotations

import tensorflow as tf

from training.data.base import AUTOTUNE, DatasetInfo, derive_seed, small_recipe
from training.data.transforms import (
    large_eval_example,
    large_train_example,
    small_eval_transform,
    small_train_transform,
)


def seed_stream(seed):
    """Infinite int64 stream; the same for a given seed, fresh every iteration (epoch)."""
    return tf.data.Dataset.random(
        seed=None if seed is None else derive_seed(seed, 1), rerandomize_each_iteration=True)


def pipeline_options(deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def small_pipelines(train_examples, eval_examples, recipe, *, batch_size, seed, shuffle_buffer):
    """Batched pipelines over unbatched (uint8 image, int32 label) datasets."""
    train = train_examples.shuffle(
        shuffle_buffer, seed=None if seed is None else derive_seed(seed, 0),
        reshuffle_each_iteration=True)
    train = train.batch(batch_size, drop_remainder=True)
    train = tf.data.Dataset.zip((train, seed_stream(seed)))
    train = train.map(small_train_transform(recipe), num_parallel_calls=AUTOTUNE)
    train = train.prefetch(AUTOTUNE).with_options(pipeline_options(seed is not None))
    evaluation = eval_examples.batch(batch_size)
    evaluation = evaluation.map(small_eval_transform(recipe), num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.prefetch(AUTOTUNE).with_options(pipeline_options(True))
    return train, evaluation


def large_pipelines(train_examples, eval_examples, recipe, *, batch_size, seed, shuffle_buffer,
                    read_files=False, skip_errors=False):
    """Batched pipelines over unbatched (encoded bytes or file path, int32 label) datasets."""

    def read(path, label):
        return tf.io.read_file(path), label

    train = train_examples.shuffle(
        shuffle_buffer, seed=None if seed is None else derive_seed(seed, 0),
        reshuffle_each_iteration=True)
    evaluation = eval_examples
    if read_files:
        train = train.map(read, num_parallel_calls=AUTOTUNE)
        evaluation = evaluation.map(read, num_parallel_calls=AUTOTUNE)
    train = tf.data.Dataset.zip((train, seed_stream(seed)))
    train = train.map(large_train_example(recipe), num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.map(large_eval_example(recipe), num_parallel_calls=AUTOTUNE)
    if skip_errors:
        train = train.ignore_errors(log_warning=True)
        evaluation = evaluation.ignore_errors(log_warning=True)
    train = train.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    train = train.prefetch(AUTOTUNE).with_options(pipeline_options(seed is not None))
    evaluation = evaluation.batch(batch_size, num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.prefetch(AUTOTUNE).with_options(pipeline_options(True))
    return train, evaluation


def in_memory(name, arrays, *, num_classes, class_names, stats, batch_size, image_size,
               seed, min_image_size):
    x_train, y_train, x_eval, y_eval = arrays
    mean, std = stats
    recipe = small_recipe(max(x_train.shape[1:3]), name=name, mean=mean, std=std,
                          image_size=image_size, min_image_size=min_image_size)
    train, evaluation = small_pipelines(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        tf.data.Dataset.from_tensor_slices((x_eval, y_eval)),
        recipe, batch_size=batch_size, seed=seed, shuffle_buffer=len(x_train))
    info = DatasetInfo(
        name=name, num_classes=num_classes, image_shape=(recipe.size, recipe.size, 3),
        train_examples=len(x_train), eval_examples=len(x_eval), class_names=class_names)
    return train, evaluation, info
