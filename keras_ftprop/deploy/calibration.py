"""Calibration: the ranges of a model's tensors over representative data, in one pass over the batches."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def representative_batches(data, limit):
    """float32 input batches of one example from an array, a tf.data.Dataset of x or (x, y), or an iterable of
    them; at most ``limit`` examples (None: all)."""
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        data = [np.asarray(data)[i:i + 1] for i in range(len(data))]
    seen = 0
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = np.asarray(batch, dtype=np.float32)
        for i in range(len(batch)):
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield batch[i:i + 1]


CHUNK = 64  # examples per forward pass: min and max over a chunk are the min and max over its examples


def calibrate(model, tensors, batches):
    """((min, max) of the model's input, [(min, max) of each of ``tensors``]) over ``batches``, 0 included.

    ``tensors``: symbolic tensors of ``model`` (a layer's input or output); max |x| is max(-min, max). The
    examples go through the model in inference mode ``CHUNK`` at a time, in one compiled function.
    """
    probe = keras.Model(model.inputs[0], list(tensors)) if tensors else None

    @tf.function(reduce_retracing=True)
    def extremes(x):
        outputs = probe(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return tf.stack([tf.reduce_min(o) for o in outputs]), tf.stack([tf.reduce_max(o) for o in outputs])

    low = high = 0.0
    lows, highs = np.zeros(len(tensors)), np.zeros(len(tensors))
    for chunk in _chunks(batches):
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        if probe is not None:
            chunk_lows, chunk_highs = extremes(chunk)
            lows, highs = np.minimum(lows, chunk_lows.numpy()), np.maximum(highs, chunk_highs.numpy())
    return (low, high), list(zip(lows, highs))


def _chunks(batches):
    """``batches`` concatenated into arrays of ``CHUNK`` examples (shorter where the example shape changes,
    and at the end)."""
    pending, size = [], 0
    for batch in batches:
        if pending and batch.shape[1:] != pending[0].shape[1:]:
            yield np.concatenate(pending)
            pending, size = [], 0
        pending.append(batch)
        size += len(batch)
        if size >= CHUNK:
            yield np.concatenate(pending)
            pending, size = [], 0
    if pending:
        yield np.concatenate(pending)


def max_abs_of(ranges):
    """max |x| of each (min, max) in ``ranges`` that includes 0."""
    return [max(-low, high) for low, high in ranges]
