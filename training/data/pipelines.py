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


PASS_GRAPH_SEED = 1


def pass_seed(seed, k, index):
    """An int64 seed that is a function of (seed, k, index) alone; ``index`` may be a tensor."""
    return tf.constant(derive_seed(0 if seed is None else seed, k), tf.int64) + tf.cast(index, tf.int64)


def seekable_stream(one_pass, start_batch, batches_per_pass):
    """Passes p = 0, 1, ... over the data, from global batch g = start_batch: pass g // B, batch g % B of it.

    ``one_pass(p, skip)`` is pass p without its first ``skip``
    batches, shuffled and augmented by seeds that depend on (seed, p) alone:
    the stream from batch g is the stream from 0 without its first g batches,
    so a run resumed at batch g trains on what the uninterrupted run did, and
    the skipped batches are never read, decoded nor augmented.
    """
    if batches_per_pass < 1:
        raise ValueError("a pass over the training split holds no whole batch")
    first, offset = divmod(int(start_batch), batches_per_pass)

    def pass_from(p):
        # Seeds tensors of p below; TensorFlow pairs an op seed with the graph's seed and tests
        # the pair against (0, 0) in Python, which a global seed of 0 (--seed=0) would turn into
        # the truth value of a tensor. This function's graph gets a seed of its own, never 0.
        tf.random.set_seed(PASS_GRAPH_SEED)
        return one_pass(p, tf.where(tf.equal(p, first), tf.constant(offset, tf.int64), tf.constant(0, tf.int64)))

    return tf.data.Dataset.range(first, 2**62).flat_map(pass_from)


def pipeline_options(deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def small_pipelines(train_examples, eval_examples, recipe, *, batch_size, seed, shuffle_buffer,
                    train_count=None):
    """Batched pipelines over unbatched (uint8 image, int32 label) datasets: (train, eval, train_from).

    ``train`` is one pass, reshuffled on every iteration; ``train_from(g)`` is the
    endless stream of passes that ``train.py`` trains on, from its batch g (``seekable_stream``),
    None when ``train_count`` (examples in the training split) is unknown.
    """
    transform = small_train_transform(recipe)
    train = train_examples.shuffle(
        shuffle_buffer, seed=None if seed is None else derive_seed(seed, 0),
        reshuffle_each_iteration=True)
    train = tf.data.Dataset.zip((train.batch(batch_size, drop_remainder=True), seed_stream(seed)))
    train = train.map(transform, num_parallel_calls=AUTOTUNE)
    train = train.prefetch(AUTOTUNE).with_options(pipeline_options(seed is not None))
    evaluation = eval_examples.batch(batch_size)
    evaluation = evaluation.map(small_eval_transform(recipe), num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.prefetch(AUTOTUNE).with_options(pipeline_options(True))

    if train_count is None:
        return train, evaluation, None
    batches_per_pass = train_count // batch_size

    def one_pass(p, skip):
        examples = train_examples.shuffle(shuffle_buffer, seed=pass_seed(seed, 0, p),
                                          reshuffle_each_iteration=False)
        examples = examples.skip(skip * batch_size).batch(batch_size, drop_remainder=True)
        seeds = tf.data.Dataset.range(skip, batches_per_pass).map(
            lambda b: pass_seed(seed, 1, p * batches_per_pass + b))
        return tf.data.Dataset.zip((examples, seeds))

    def train_from(start_batch):
        stream = seekable_stream(one_pass, start_batch, batches_per_pass)
        stream = stream.map(transform, num_parallel_calls=AUTOTUNE)
        return stream.prefetch(AUTOTUNE).with_options(pipeline_options(True))

    return train, evaluation, train_from


def large_pipelines(train_examples, eval_examples, recipe, *, batch_size, seed, shuffle_buffer,
                    read_files=False, skip_errors=False, train_count=None):
    """Batched pipelines over unbatched (encoded bytes or file path, int32 label) datasets:
    (train, eval, train_from), as ``small_pipelines``."""

    def read(path, label):
        return tf.io.read_file(path), label

    def examples_to_batches(examples, seeds):
        if read_files:
            examples = examples.map(read, num_parallel_calls=AUTOTUNE)
        examples = tf.data.Dataset.zip((examples, seeds))
        examples = examples.map(large_train_example(recipe), num_parallel_calls=AUTOTUNE)
        if skip_errors:
            examples = examples.ignore_errors(log_warning=True)
        return examples.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    train = examples_to_batches(
        train_examples.shuffle(shuffle_buffer, seed=None if seed is None else derive_seed(seed, 0),
                               reshuffle_each_iteration=True),
        seed_stream(seed))
    train = train.prefetch(AUTOTUNE).with_options(pipeline_options(seed is not None))
    evaluation = eval_examples
    if read_files:
        evaluation = evaluation.map(read, num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.map(large_eval_example(recipe), num_parallel_calls=AUTOTUNE)
    if skip_errors:
        evaluation = evaluation.ignore_errors(log_warning=True)
    evaluation = evaluation.batch(batch_size, num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.prefetch(AUTOTUNE).with_options(pipeline_options(True))

    if train_count is None:
        return train, evaluation, None

    def one_pass(p, skip):
        examples = train_examples.shuffle(shuffle_buffer, seed=pass_seed(seed, 0, p),
                                          reshuffle_each_iteration=False).skip(skip * batch_size)
        seeds = tf.data.Dataset.range(skip * batch_size, train_count).map(
            lambda e: pass_seed(seed, 1, p * train_count + e))
        return examples_to_batches(examples, seeds)

    def train_from(start_batch):
        stream = seekable_stream(one_pass, start_batch, train_count // batch_size)
        return stream.prefetch(AUTOTUNE).with_options(pipeline_options(True))

    return train, evaluation, train_from


def in_memory(name, arrays, *, num_classes, class_names, stats, batch_size, image_size,
               seed, min_image_size):
    x_train, y_train, x_eval, y_eval = arrays
    mean, std = stats
    recipe = small_recipe(max(x_train.shape[1:3]), name=name, mean=mean, std=std,
                          image_size=image_size, min_image_size=min_image_size,
                          grey=x_train.ndim == 3 or x_train.shape[-1] == 1)
    train, evaluation, train_from = small_pipelines(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        tf.data.Dataset.from_tensor_slices((x_eval, y_eval)),
        recipe, batch_size=batch_size, seed=seed, shuffle_buffer=len(x_train), train_count=len(x_train))
    info = DatasetInfo(
        name=name, num_classes=num_classes, image_shape=(recipe.size, recipe.size, 3),
        train_examples=len(x_train), eval_examples=len(x_eval), class_names=class_names,
        train_from=train_from, recipe=recipe, native_side=int(min(x_train.shape[1:3])))
    return train, evaluation, info
