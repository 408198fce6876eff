"""Tests of models/bireal.py: Bi-Real ResNet-18's layout, names, parameter count, training and export."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold, Staircase, deploy
from models import bireal_resnet18, get_model, resnet18
from tests.models.helpers import compile_for_one_step, inbound_graph, layers_of_type, tiny_batch


def hand_count(classes, stem_kernel, in_channels=3):
    """Trainable parameters, counted by hand (not from the builder):

        stem     k*k*3*64 + 2*64 (BN gamma, beta)
        stage s  four 3x3 convolutions with BN: c_in*c*9 + 3 * c*c*9 + 4 * 2*c,
                 stages 2-4 also a 1x1 shortcut with BN: c_in*c + 2*c (the average pool has none)
        fc       512*classes + classes
    """
    total = stem_kernel**2 * in_channels * 64 + 2 * 64
    c_in = 64
    for c in (64, 128, 256, 512):
        total += 9 * c_in * c + 3 * 9 * c * c + 4 * 2 * c
        if c != c_in:
            total += c_in * c + 2 * c
        c_in = c
    return total + 512 * classes + classes


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def step_net():
    return bireal_resnet18(input_shape=(32, 32, 3), classes=10, activation=lambda: HardThreshold())


@pytest.mark.parametrize("stem, kernel", [("imagenet", 7), ("cifar", 3)])
def test_parameter_count_is_the_hand_count_and_resnet18s(stem, kernel):
    model = bireal_resnet18(input_shape=(32, 32, 3), classes=10, stem=stem)
    assert trainable(model) == hand_count(10, kernel)
    assert trainable(model) == trainable(resnet18(input_shape=(32, 32, 3), classes=10, stem=stem))
    assert hand_count(1000, 7) == 11_689_512  # torchvision's ResNet-18


def test_every_3x3_convolution_reads_a_threshold_of_the_running_sum_and_adds_back(step_net):
    graph = inbound_graph(step_net)
    thresholds = layers_of_type(step_net, HardThreshold)
    assert len(thresholds) == 16 and len({id(t) for t in thresholds}) == 16
    convs = [layer for layer in step_net.layers
             if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3) and layer.name != "stem_conv"]
    assert len(convs) == 16
    previous_sum = "stem_bn"  # the stem ends in batch norm, no activation: the sum's first term
    for stage in (1, 2, 3, 4):
        for block in (1, 2):
            for index in (1, 2):
                p = f"stage{stage}_block{block}"
                assert graph[f"{p}_act{index}"] == [previous_sum]
                conv_input = graph[f"{p}_conv{index}"]
                assert conv_input in ([f"{p}_act{index}"], [f"{p}_conv{index}_pad"])
                assert graph[f"{p}_bn{index}"] == [f"{p}_conv{index}"]
                downsample = stage > 1 and block == 1 and index == 1
                shortcut = f"{p}_shortcut_bn" if downsample else previous_sum
                assert graph[f"{p}_add{index}"] == [f"{p}_bn{index}", shortcut]
                if downsample:  # real-valued: average pool -> 1x1 conv -> BN, from the sum itself
                    assert graph[f"{p}_shortcut_bn"] == [f"{p}_shortcut_conv"]
                    assert graph[f"{p}_shortcut_conv"] == [f"{p}_shortcut_pool"]
                    assert graph[f"{p}_shortcut_pool"] == [previous_sum]
                previous_sum = f"{p}_add{index}"
    assert graph["avg_pool"] == [previous_sum] and graph["predictions"] == ["avg_pool"]


@pytest.mark.parametrize("size, stem, stage4", [(32, "cifar", 4), (31, "cifar", 4), (64, "imagenet", 2),
                                                (224, "imagenet", 7)])
def test_auto_stem_and_feature_map_sizes(size, stem, stage4):
    model = bireal_resnet18(input_shape=(size, size, 3), classes=10)  # stem="auto"
    names = {layer.name for layer in model.layers}
    assert ("stem_pool" in names) == (stem == "imagenet")
    assert model.get_layer("stem_conv").kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))
    assert model.get_layer("stage4_block2_add2").output.shape[1:] == (stage4, stage4, 512)


def test_layer_names_are_deterministic_and_relu_is_the_default():
    def names():
        return [layer.name for layer in bireal_resnet18(input_shape=(32, 32, 3), classes=10).layers]

    assert names() == names()
    relus = layers_of_type(bireal_resnet18(input_shape=(32, 32, 3), classes=10), keras.layers.ReLU)
    assert len(relus) == 16


@pytest.mark.parametrize("activation", ["step", "staircase", "relu"])
def test_trains_and_round_trips_through_keras_files(activation, tmp_path):
    keras.utils.set_random_seed(0)
    model = compile_for_one_step(get_model("bireal_resnet18", activation=activation, input_shape=(16, 16, 3),
                                           classes=10))
    images, labels = tiny_batch((16, 16, 3))
    stem = model.get_layer("stem_conv").kernel
    before = stem.numpy()
    assert np.isfinite(float(model.train_on_batch(images, labels)))
    assert not np.array_equal(stem.numpy(), before)  # the update reached the stem through 16 thresholds
    path = tmp_path / "bireal.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    if activation == "staircase":
        assert all(layer.steps == 5 for layer in layers_of_type(loaded, Staircase))  # ResNet-18's staircase


def test_int8_export_compares_every_threshold_after_its_sum():
    """No threshold follows a convolution directly: each reads a residual sum that the next sum reads too, so
    none is fused, and each compares the sum's int8 code (its zero point exact) with GREATER."""
    keras.utils.set_random_seed(0)
    model = bireal_resnet18(input_shape=(16, 16, 3), classes=4, activation=lambda: HardThreshold())
    images = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
    report = deploy.to_tflite(model, images, quantize="int8").report
    assert report.fused == {}
    assert len(report.unfused) == 16
    assert set(report.unfused.values()) == {"its input is also read by another layer"}
    assert report.ops[("ADD", "INT8")] == 16
