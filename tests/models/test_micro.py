"""Tests of models/micro.py: the microcontroller network's layout, size and int8 export under TFLite Micro."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold, Staircase, deploy, micro
from models import get_model, micro_convnet
from tests.models.helpers import inbound_graph, layers_of_type

FLASH_BUDGET, ARENA_BUDGET = 256 * 1024, 64 * 1024


def hand_count(classes):
    """9 c_in c_out per 3x3 convolution (no bias), gamma and beta per channel, dense weights and biases."""
    widths = [3, 16, 32, 64, 128]
    convs = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out in zip(widths, widths[1:]))
    return convs + 128 * classes + classes


def test_parameter_count_layout_and_names():
    model = micro_convnet(classes=10)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == hand_count(10) == 98_970
    assert model.input_shape == (None, 32, 32, 3)
    graph = inbound_graph(micro_convnet(classes=10, activation=lambda: HardThreshold(), fuse_batch_norm=False))
    assert graph["conv1"] == ["pool0"] and graph["pool0"] == ["conv0_act"] and graph["conv0_act"] == ["conv0_bn"]
    assert graph["avg_pool"] == ["conv3_act"]
    assert [layer.name for layer in micro_convnet(classes=10).layers] == [
        layer.name for layer in micro_convnet(classes=10).layers]


@pytest.mark.parametrize("activation, steps", [("step", None), ("staircase", 3), ("staircase", 5)])
def test_int8_model_fits_a_microcontroller_and_runs_under_tflite_micro(activation, steps):
    keras.utils.set_random_seed(0)
    model = get_model("micro_convnet", activation=activation, steps=steps, classes=10)
    images = np.random.default_rng(0).uniform(0, 1, size=(24, 32, 32, 3)).astype(np.float32)
    flatbuffer = deploy.to_tflite(model, images, quantize="int8", io_dtype="int8")
    report = flatbuffer.report
    # conv0 reads the image; every later threshold reads the max pool of a threshold's codes: fused, unless
    # (untrained batch norm, 5 steps) some channel's levels fall between no two accumulator values.
    if activation == "step":  # decided on conv0's accumulator
        assert "model's input" in report.unfused["conv0_act"]
    else:  # conv0's one requantization (``input_staircases``), or one copy of conv0 per threshold
        assert report.fused.get("conv0_act") == "conv0" or "places channel" in report.unfused["conv0_act"]
    for site in ("conv1_act", "conv2_act", "conv3_act"):
        assert site in report.fused or "places channel" in report.unfused[site], site
    assert "conv1_act" in report.fused
    assert len(bytes(flatbuffer)) <= FLASH_BUDGET
    arena = micro.arena_bytes(flatbuffer)
    assert 16 * 1024 < arena <= ARENA_BUDGET  # conv0's 32x32x16 int8 output alone is 16 KB
    codes = np.clip(np.round(images / (1 / 255)) - 128, -128, 127).astype(np.int8)
    (logits,) = micro.run(flatbuffer, codes[:4])
    assert logits.shape == (4, 10) and logits.dtype == np.int8
    thresholds = layers_of_type(model, (HardThreshold, Staircase))
    assert len(thresholds) == 4
