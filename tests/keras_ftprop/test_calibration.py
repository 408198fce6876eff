"""keras_ftprop/deploy/calibration.py: one pass over the representative data, in chunks of examples."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold
from keras_ftprop.deploy import calibration


@pytest.mark.parametrize("examples", [1, calibration.CHUNK, calibration.CHUNK + 7])
def test_ranges_are_the_extremes_over_every_example_of_every_batch(examples):
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, name="conv")(x)
    bn = keras.layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(x, keras.layers.Dense(4)(keras.layers.Flatten()(HardThreshold()(bn))))
    model.get_layer("bn").set_weights([np.full(3, 2.0), np.full(3, -0.5), np.full(3, 0.1), np.full(3, 4.0)])
    images = np.random.default_rng(1).normal(size=(examples, 6, 6, 2)).astype(np.float32)
    images[-1] *= 10  # the extremes in the last example: a chunk left out shows
    batches = [images[i:i + 5] for i in range(0, examples, 5)]  # uneven batches, as a tf.data pipeline gives
    (low, high), ranges = calibration.calibrate(model, [conv, bn, model.outputs[0]], batches)

    # one example at a time, in numpy where it is simple: conv's output, then batch norm in inference mode
    probe = keras.Model(model.inputs, [conv, model.outputs[0]])
    conv_out, logits = (np.concatenate(o) for o in zip(*(probe.predict(images[i:i + 1], verbose=0)
                                                          for i in range(examples))))
    bn_out = 2.0 * (conv_out - 0.1) / np.sqrt(4.0 + 1e-3) - 0.5
    assert (low, high) == (min(0.0, images.min()), max(0.0, images.max()))
    for (got_low, got_high), want in zip(ranges, (conv_out, bn_out, logits)):
        np.testing.assert_allclose([got_low, got_high], [min(0.0, want.min()), max(0.0, want.max())], rtol=1e-5)


def test_examples_of_another_shape_start_another_chunk():
    batches = [np.zeros((2, 4, 4, 1)), np.ones((1, 5, 5, 1)), np.ones((1, 5, 5, 1))]
    assert [c.shape for c in calibration._chunks(iter(batches))] == [(2, 4, 4, 1), (2, 5, 5, 1)]
