"""Tests of models/alexnet.py: the DoReFa-layout AlexNet of the paper."""

import keras
import numpy as np
import pytest

from keras_ftprop import Staircase
from models import PaddedMaxPooling2D, alexnet
from models.alexnet import MIN_INPUT_SIZE, conv_tower_output_size
from tests.models.helpers import chain_before, inbound_graph, layers_of_type

# (name, kernel height * width, input channels, output channels)
CONVS = [("conv0", 12 * 12, 3, 96), ("conv1", 5 * 5, 96, 256),
         ("conv2", 3 * 3, 256, 384), ("conv3", 3 * 3, 384, 384),
         ("conv4", 3 * 3, 384, 256)]
DENSES = [("fc0", 6 * 6 * 256, 4096), ("fc1", 4096, 4096)]


def expected_alexnet_parameters(classes, batch_norm=True):
    """Trainable parameters of AlexNet at 224x224, counted from the spec.

    With batch norm (the paper's setting): no biases except the classifier's,
    BN (gamma, beta) after every layer but conv0 and the classifier.
        conv0 12*12*3*96                       =     41,472
        conv1 5*5*96*256     + BN 2*256        =    614,912
        conv2 3*3*256*384    + BN 2*384        =    885,504
        conv3 3*3*384*384    + BN 2*384        =  1,327,872
        conv4 3*3*384*256    + BN 2*256        =    885,248
        fc0   6*6*256*4096   + BN 2*4096       = 37,756,928
        fc1   4096*4096      + BN 2*4096       = 16,785,408
        fc2   4096*1000 + 1000                 =  4,097,000
        total                                  = 62,394,344
    Without batch norm every layer has a bias and there is no BN.
    """
    total = 0
    for _, kernel_area, c_in, c_out in CONVS:
        total += kernel_area * c_in * c_out
        total += c_out if not batch_norm else 0
        total += 2 * c_out if batch_norm and c_in != 3 else 0
    for _, f_in, f_out in DENSES:
        total += f_in * f_out + (2 * f_out if batch_norm else f_out)
    return total + 4096 * classes + classes


def trainable_parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def imagenet_alexnet():
    return alexnet()


def test_alexnet_parameter_count(imagenet_alexnet):
    assert expected_alexnet_parameters(1000) == 62_394_344
    assert trainable_parameters(imagenet_alexnet) == 62_394_344


def test_alexnet_without_batch_norm_parameter_count():
    model = alexnet(batch_norm=False)
    assert expected_alexnet_parameters(1000, batch_norm=False) == 62_384_968
    assert trainable_parameters(model) == 62_384_968
    assert not layers_of_type(model, keras.layers.BatchNormalization)
    assert model.get_layer("conv0").use_bias  # bias follows batch_norm


def test_alexnet_imagenet_feature_map_sizes(imagenet_alexnet):
    model = imagenet_alexnet
    expected = {
        "conv0": (54, 54, 96),
        "conv1": (54, 54, 256),
        "conv1_pool": (27, 27, 256),
        "conv2_pool": (13, 13, 384),
        "conv3": (13, 13, 384),
        "conv4_pool": (6, 6, 256),
        "flatten": (9216,),
        "fc1": (4096,),
        "predictions": (1000,),
    }
    for name, shape in expected.items():
        assert model.get_layer(name).output.shape[1:] == shape, name


def test_layer_order_conv_bn_pool_act_and_first_conv_alone(imagenet_alexnet):
    graph = inbound_graph(imagenet_alexnet)
    assert chain_before(graph, "conv0_act", 2) == ["input", "conv0"]
    assert chain_before(graph, "conv1_act", 3) == [
        "conv1", "conv1_bn", "conv1_pool"]
    assert chain_before(graph, "conv2_act", 3) == [
        "conv2", "conv2_bn", "conv2_pool"]
    assert chain_before(graph, "conv3_act", 3) == [
        "conv2_act", "conv3", "conv3_bn"]
    assert chain_before(graph, "conv4_act", 3) == [
        "conv4", "conv4_bn", "conv4_pool"]
    assert chain_before(graph, "fc0_act", 4) == [
        "conv4_act", "flatten", "fc0", "fc0_bn"]
    assert chain_before(graph, "predictions", 3) == ["fc1", "fc1_bn", "fc1_act"]


def test_biases_batch_norm_epsilon_and_pools(imagenet_alexnet):
    model = imagenet_alexnet
    for name in ("conv0", "conv1", "conv2", "conv3", "conv4", "fc0", "fc1"):
        assert not model.get_layer(name).use_bias, name
    assert model.get_layer("predictions").use_bias
    norms = layers_of_type(model, keras.layers.BatchNormalization)
    assert [norm.name for norm in norms] == [
        "conv1_bn", "conv2_bn", "conv3_bn", "conv4_bn", "fc0_bn", "fc1_bn"]
    assert all((n.epsilon, n.momentum) == (1e-4, 0.9) for n in norms)
    pool1 = model.get_layer("conv1_pool")
    assert isinstance(pool1, PaddedMaxPooling2D) and pool1.padding == 1
    for name in ("conv2_pool", "conv4_pool"):
        pool = model.get_layer(name)
        assert isinstance(pool, keras.layers.MaxPooling2D)
        assert (pool.pool_size, pool.strides, pool.padding) == (
            (3, 3), (2, 2), "valid")
    assert not layers_of_type(model, keras.layers.Dropout)


def test_every_hidden_activation_is_the_chosen_one():
    model = alexnet(input_shape=(60, 60, 3), classes=10,
                    activation=lambda: Staircase(steps=3))
    assert [layer.name for layer in layers_of_type(model, Staircase)] == [
        "conv0_act", "conv1_act", "conv2_act", "conv3_act", "conv4_act",
        "fc0_act", "fc1_act"]
    assert not layers_of_type(model, keras.layers.ReLU)


def test_minimum_input_size_is_60():
    assert MIN_INPUT_SIZE == 60
    # 60 -> conv0 13 -> pool 7 -> pool 3 -> pool 1
    assert conv_tower_output_size(60) == 1
    assert conv_tower_output_size(59) is None
    assert conv_tower_output_size(224) == 6
    assert alexnet(input_shape=(60, 60, 3), classes=10).get_layer(
        "flatten").output.shape[1:] == (256,)
    assert alexnet(input_shape=(60, 100, 3), classes=10).get_layer(
        "conv4_pool").output.shape[1:3] == (1, 2)  # 100: 23 -> 12 -> 5 -> 2


@pytest.mark.parametrize("shape", [(59, 59, 3), (100, 59, 3), (32, 32, 3)])
def test_too_small_inputs_raise_a_clear_error(shape):
    with pytest.raises(ValueError, match="at least 60x60"):
        alexnet(input_shape=shape)


def test_unknown_spatial_size_only_without_top():
    features = alexnet(include_top=False, input_shape=(None, None, 3),
                       pooling="avg")
    assert features(np.zeros((1, 67, 80, 3), "float32")).shape == (1, 256)
    with pytest.raises(ValueError, match="fixed input height and width"):
        alexnet(input_shape=(None, None, 3))


def test_include_top_false_returns_conv_features(imagenet_alexnet):
    features = alexnet(include_top=False)
    assert features.output_shape == (None, 6, 6, 256)
    assert features.layers[-1].name == "conv4_act"
