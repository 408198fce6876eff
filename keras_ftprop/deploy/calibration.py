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


def calibrate(model, tensors, batches):
    """((min, max) of the model's input, [(min, max) of each of ``tensors``]) over ``batches``, 0 included.

    ``tensors``: symbolic tensors of ``model`` (a layer's input or output); max |x| is max(-min, max).
    """
    probe = keras.Model(model.inputs[0], list(tensors)) if tensors else None
    low = high = 0.0
    lows, highs = np.zeros(len(tensors)), np.zeros(len(tensors))
    for batch in batches:
        low, high = min(low, float(batch.min())), max(high, float(batch.max()))
        if probe is None:
            continue
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        lows = np.minimum(lows, [float(tf.reduce_min(o)) for o in outputs])
        highs = np.maximum(highs, [float(tf.reduce_max(o)) for o in outputs])
    return (low, high), list(zip(lows, highs))


def max_abs_of(ranges):
    """max |x| of each (min, max) in ``ranges`` that includes 0."""
    return [max(-low, high) for low, high in ranges]
