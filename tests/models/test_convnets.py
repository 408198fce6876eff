"""Tests of models/convnets.py: the paper's 4- and 8-layer CIFAR-10 convnets."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold
from models import convnet4, convnet8
from tests.models.helpers import chain_before, inbound_graph, layers_of_type


def trainable_parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def expected_convnet4_parameters(classes=10, batch_norm=False):
    """Trainable parameters of convnet4 at 32x32, counted from the spec.

        conv1 5*5*3*32 + 32                 =     2,432
        conv2 5*5*32*64 + 64                =    51,264
        fc1   8*8*64*1024 + 1024            = 4,195,328  (34 -> 17 -> 8)
        fc2   1024*10 + 10                  =    10,250
        total                               = 4,259,274
    batch_norm adds BN(64) and BN(1024): + 2*64 + 2*1024 = 4,261,450.
    """
    total = (5 * 5 * 3 * 32 + 32) + (5 * 5 * 32 * 64 + 64)
    total += 8 * 8 * 64 * 1024 + 1024 + 1024 * classes + classes
    return total + (2 * 64 + 2 * 1024 if batch_norm else 0)


def expected_convnet8_parameters(classes=10, batch_norm=True):
    """Trainable parameters of convnet8 at 32x32, counted from the spec.

        conv0 5*5*3*48 + 48 (bias, no BN)   =     3,648
        conv1 3*3*48*64   + BN 2*64         =    27,776
        conv2 3*3*64*64   + BN 2*64         =    36,992
        conv3 3*3*64*128  + BN 2*128        =    73,984
        conv4 3*3*128*128 + BN 2*128        =   147,712
        conv5 3*3*128*128 + BN 2*128        =   147,712
        conv6 4*4*128*512 + BN 2*512        = 1,049,600
        fc    512*10 + 10                   =     5,130
        total                               = 1,492,554
    Without batch norm conv1-conv6 have a bias (c_out) instead of BN (2 c_out).
    """
    convs = [(9, 48, 64), (9, 64, 64), (9, 64, 128), (9, 128, 128),
             (9, 128, 128), (16, 128, 512)]
    total = 5 * 5 * 3 * 48 + 48
    for area, c_in, c_out in convs:
        total += area * c_in * c_out + (2 * c_out if batch_norm else c_out)
    return total + 512 * classes + classes


def test_convnet4_parameter_counts():
    assert expected_convnet4_parameters() == 4_259_274
    assert trainable_parameters(convnet4()) == 4_259_274
    assert expected_convnet4_parameters(batch_norm=True) == 4_261_450
    assert trainable_parameters(convnet4(batch_norm=True)) == 4_261_450


def test_convnet8_parameter_counts():
    assert expected_convnet8_parameters() == 1_492_554
    assert trainable_parameters(convnet8()) == 1_492_554
    assert expected_convnet8_parameters(batch_norm=False) == 1_491_530
    assert trainable_parameters(convnet8(batch_norm=False)) == 1_491_530


def test_convnet4_cifar_sizes_follow_the_reference_pad_3():
    model = convnet4()
    assert model.input_shape == (None, 32, 32, 3)
    expected = {"conv1": (34, 34, 32), "conv1_pool": (17, 17, 32),
                "conv2": (17, 17, 64), "conv2_pool": (8, 8, 64),
                "flatten": (4096,), "fc1": (1024,), "predictions": (10,)}
    for name, shape in expected.items():
        assert model.get_layer(name).output.shape[1:] == shape, name
    assert model.get_layer("conv1_pad").padding == ((3, 3), (3, 3))


def test_convnet4_layer_order_and_optional_batch_norm():
    graph = inbound_graph(convnet4())
    assert chain_before(graph, "conv1_act", 4) == [
        "input", "conv1_pad", "conv1", "conv1_pool"]
    assert chain_before(graph, "conv2_act", 2) == ["conv2", "conv2_pool"]
    assert chain_before(graph, "predictions", 4) == [
        "conv2_act", "flatten", "fc1", "fc1_act"]

    with_bn = convnet4(batch_norm=True)
    graph = inbound_graph(with_bn)
    # The reference's batch norms follow activations, before the dense layers.
    assert chain_before(graph, "fc1", 3) == [
        "conv2_act", "fc1_input_bn", "flatten"]
    assert chain_before(graph, "predictions", 2) == [
        "fc1_act", "predictions_input_bn"]
    norms = layers_of_type(with_bn, keras.layers.BatchNormalization)
    assert all((n.epsilon, n.momentum) == (1e-5, 0.9) for n in norms)
    assert all(layer.use_bias for layer in with_bn.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)))


def test_convnet8_cifar_sizes():
    model = convnet8()
    expected = {"conv0": (32, 32, 48), "conv0_pool": (16, 16, 48),
                "conv1": (16, 16, 64), "conv2_pool": (8, 8, 64),
                "conv3": (6, 6, 128), "conv4": (6, 6, 128),
                "conv5": (4, 4, 128), "conv6": (1, 1, 512),
                "predictions": (10,)}
    for name, shape in expected.items():
        assert model.get_layer(name).output.shape[1:] == shape, name
    assert model.get_layer("conv6").kernel_size == (4, 4)


def test_convnet8_layer_order_bias_and_batch_norm():
    model = convnet8()
    graph = inbound_graph(model)
    assert chain_before(graph, "conv0_act", 3) == ["input", "conv0",
                                                   "conv0_pool"]
    assert chain_before(graph, "conv1_act", 2) == ["conv1", "conv1_bn"]
    assert chain_before(graph, "conv2_act", 3) == [
        "conv2", "conv2_bn", "conv2_pool"]
    assert chain_before(graph, "conv6_act", 4) == [
        "conv5_act", "conv6_dropout", "conv6", "conv6_bn"]
    assert chain_before(graph, "predictions", 2) == ["conv6_act", "flatten"]

    dropout = model.get_layer("conv6_dropout")
    assert isinstance(dropout, keras.layers.SpatialDropout2D)
    assert dropout.rate == 0.5
    assert model.get_layer("conv0").use_bias
    for index in range(1, 7):
        assert not model.get_layer(f"conv{index}").use_bias
        norm = model.get_layer(f"conv{index}_bn")
        assert (norm.epsilon, norm.momentum) == (1e-4, 0.9)
    assert "conv0_bn" not in [layer.name for layer in model.layers]


@pytest.mark.parametrize("builder, sites", [(convnet4, 3), (convnet8, 7)])
def test_every_hidden_activation_is_the_chosen_one(builder, sites):
    model = builder(activation=lambda: HardThreshold(target_loss="sste"))
    thresholds = layers_of_type(model, HardThreshold)
    assert len(thresholds) == sites
    assert all(layer.name.endswith("_act") for layer in thresholds)
    assert not layers_of_type(model, keras.layers.ReLU)


def test_convnet8_other_input_sizes_down_to_20():
    assert convnet8(input_shape=(20, 20, 3)).get_layer(
        "conv6").kernel_size == (1, 1)
    assert convnet8(input_shape=(40, 40, 3)).get_layer(
        "conv6").kernel_size == (6, 6)
    with pytest.raises(ValueError, match="at least 20x20"):
        convnet8(input_shape=(19, 32, 3))
    with pytest.raises(ValueError, match="fixed input height and width"):
        convnet8(input_shape=(None, None, 3))


def test_convnet4_other_input_sizes():
    mnist_like = convnet4(input_shape=(28, 28, 1))
    assert mnist_like.get_layer("flatten").output.shape[1:] == (7 * 7 * 64,)
    assert convnet4(input_shape=(16, 16, 3)).output_shape == (None, 10)


def test_include_top_false():
    assert convnet4(include_top=False).output_shape == (None, 8, 8, 64)
    assert convnet4(include_top=False, pooling="max").output_shape == (
        None, 64)
    assert convnet8(include_top=False).output_shape == (None, 1, 1, 512)


def test_classifier_activation():
    probs = convnet8(classes=3, classifier_activation="softmax")(
        np.zeros((2, 32, 32, 3), "float32"), training=False)
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-6)
