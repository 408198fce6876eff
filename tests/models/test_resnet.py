"""Tests of models/resnet.py: ResNet-18/34 layout, sizes and parameter counts."""

import keras
import numpy as np
import pytest

from keras_ftprop import HardThreshold
from models import resnet18, resnet34
from models.resnet import RESNET18_BLOCKS, RESNET34_BLOCKS, STAGE_FILTERS, resolve_stem
from tests.models.helpers import chain_before, inbound_graph, layers_of_type


def expected_resnet_parameters(blocks_per_stage, classes, in_channels=3, stem_kernel=7):
    """Trainable parameters of a basic-block ResNet, counted from the spec.

    stem: conv 7x7 3->64 (no bias) + BN(64) (gamma, beta).
    block (c_in -> c): conv 3x3 c_in->c + BN(c) + conv 3x3 c->c + BN(c),
        plus a 1x1 c_in->c conv + BN(c) shortcut when c_in != c.
    head: dense 512 -> classes with bias.

    ResNet-18, 1000 classes:
        stem    7*7*3*64 + 2*64                                      =      9,536
        stage1  4 * 3*3*64*64 + 4 * 2*64                             =    147,968
        stage2  3*3*64*128 + 3 * 3*3*128*128 + 64*128 + 5 * 2*128    =    525,568
        stage3  3*3*128*256 + 3 * 3*3*256*256 + 128*256 + 5 * 2*256  =  2,099,712
        stage4  3*3*256*512 + 3 * 3*3*512*512 + 256*512 + 5 * 2*512  =  8,393,728
        fc      512*1000 + 1000                                      =    513,000
        total                                                        = 11,689,512
    """
    total = stem_kernel * stem_kernel * in_channels * 64 + 2 * 64
    channels = 64
    for filters, blocks in zip(STAGE_FILTERS, blocks_per_stage):
        for _ in range(blocks):
            total += 3 * 3 * channels * filters + 2 * filters
            total += 3 * 3 * filters * filters + 2 * filters
            if channels != filters:
                total += channels * filters + 2 * filters
            channels = filters
    return total + channels * classes + classes


def trainable_parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def imagenet_resnet18():
    return resnet18()


def test_resnet18_has_11_689_512_trainable_parameters(imagenet_resnet18):
    assert expected_resnet_parameters(RESNET18_BLOCKS, 1000) == 11_689_512
    assert trainable_parameters(imagenet_resnet18) == 11_689_512
    # Only batch-norm moving means and variances are non-trainable:
    # 64 + 4*64 + 5*128 + 5*256 + 5*512 = 4,800 channels.
    assert imagenet_resnet18.count_params() - 11_689_512 == 2 * 4_800


def test_resnet34_has_21_797_672_trainable_parameters():
    assert expected_resnet_parameters(RESNET34_BLOCKS, 1000) == 21_797_672
    assert trainable_parameters(resnet34()) == 21_797_672


def test_resnet18_imagenet_feature_map_sizes(imagenet_resnet18):
    model = imagenet_resnet18
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)
    expected = {
        "stem_conv": (112, 112, 64),
        "stem_pool": (56, 56, 64),
        "stage1_block2_act2": (56, 56, 64),
        "stage2_block2_act2": (28, 28, 128),
        "stage3_block2_act2": (14, 14, 256),
        "stage4_block2_act2": (7, 7, 512),
        "avg_pool": (512,),
    }
    for name, shape in expected.items():
        assert model.get_layer(name).output.shape[1:] == shape, name


def test_every_hidden_activation_is_the_chosen_one(imagenet_resnet18):
    model = resnet18(input_shape=(32, 32, 3), classes=10,
                     activation=lambda: HardThreshold())
    thresholds = layers_of_type(model, HardThreshold)
    # stem + 2 per basic block, including the one after each residual add.
    assert len(thresholds) == 1 + 2 * sum(RESNET18_BLOCKS) == 17
    assert not layers_of_type(model, keras.layers.ReLU)
    assert len({id(layer) for layer in thresholds}) == 17  # fresh layers
    # Same names with the default ReLU.
    relu_names = [layer.name for layer in
                  layers_of_type(imagenet_resnet18, keras.layers.ReLU)]
    assert [layer.name for layer in thresholds] == relu_names
    assert len(layers_of_type(resnet34(input_shape=(32, 32, 3)),
                              keras.layers.ReLU)) == 33


def test_layer_order_stem_and_blocks(imagenet_resnet18):
    graph = inbound_graph(imagenet_resnet18)
    assert chain_before(graph, "stem_pool", 5) == [
        "input", "stem_pad", "stem_conv", "stem_bn", "stem_act"]
    # Residual addition, then the activation.
    assert graph["stage1_block1_add"] == ["stage1_block1_bn2", "stem_pool"]
    assert graph["stage1_block1_act2"] == ["stage1_block1_add"]
    assert graph["stage2_block1_add"] == [
        "stage2_block1_bn2", "stage2_block1_shortcut_bn"]
    assert chain_before(graph, "stage2_block1_bn2", 6) == [
        "stage1_block2_act2", "stage2_block1_conv1_pad", "stage2_block1_conv1",
        "stage2_block1_bn1", "stage2_block1_act1", "stage2_block1_conv2"]
    assert chain_before(graph, "stage2_block1_shortcut_bn", 2) == [
        "stage1_block2_act2", "stage2_block1_shortcut_conv"]


def test_pytorch_padding_and_no_conv_bias(imagenet_resnet18):
    model = imagenet_resnet18
    assert model.get_layer("stem_pad").padding == ((3, 3), (3, 3))
    for stage in (2, 3, 4):
        pad = model.get_layer(f"stage{stage}_block1_conv1_pad")
        assert pad.padding == ((1, 1), (1, 1))
        assert model.get_layer(f"stage{stage}_block1_conv1").padding == "valid"
    pool = model.get_layer("stem_pool")
    assert (pool.pool_size, pool.strides, pool.padding) == (3, 2, 1)
    convs = layers_of_type(model, keras.layers.Conv2D)
    assert len(convs) == 20 and not any(conv.use_bias for conv in convs)
    for norm in layers_of_type(model, keras.layers.BatchNormalization):
        assert (norm.epsilon, norm.momentum) == (1e-5, 0.9)


def test_convolutions_use_the_reference_he_fan_out_initialisation(
        imagenet_resnet18):
    kernel = imagenet_resnet18.get_layer("stage4_block2_conv2").kernel.numpy()
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 512)), rel=0.02)
    assert abs(kernel.mean()) < 1e-3


@pytest.mark.parametrize("size", [32, 64])
def test_small_inputs(size):
    model = resnet18(input_shape=(size, size, 3), classes=10)
    assert model.output_shape == (None, 10)
    assert model.get_layer("stage4_block2_act2").output.shape[1:3] == (
        size // 32, size // 32)


def test_unknown_spatial_size_runs_on_any_input():
    model = resnet18(input_shape=(None, None, 3), classes=5)
    out = model(np.zeros((1, 40, 56, 3), "float32"), training=False)
    assert out.shape == (1, 5)


def test_include_top_false_and_pooling():
    features = resnet18(include_top=False, input_shape=(64, 64, 3))
    assert features.output_shape == (None, 2, 2, 512)
    assert "predictions" not in [layer.name for layer in features.layers]
    pooled = resnet18(include_top=False, pooling="avg",
                      input_shape=(64, 64, 3))
    assert pooled.output_shape == (None, 512)


def test_classifier_activation_and_logits_default():
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(
        "float32")
    probs = resnet18(input_shape=(32, 32, 3), classes=7,
                     classifier_activation="softmax")(x, training=False)
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-5)
    logits_model = resnet18(input_shape=(32, 32, 3), classes=7)
    assert logits_model.get_layer("predictions").activation is (
        keras.activations.linear)


def test_layer_names_are_deterministic():
    def names():
        model = resnet18(input_shape=(32, 32, 3), classes=10, name="net")
        return [layer.name for layer in model.layers]

    assert names() == names()
    assert resnet18(input_shape=(32, 32, 3)).name == "resnet18"


def test_invalid_classes_is_rejected():
    with pytest.raises(ValueError, match="classes"):
        resnet18(classes=0)


@pytest.mark.parametrize("blocks, builder", [(RESNET18_BLOCKS, resnet18), (RESNET34_BLOCKS, resnet34)])
def test_cifar_stem_parameter_count_and_layout(blocks, builder):
    model = builder(input_shape=(32, 32, 3), classes=10, stem="cifar")
    assert trainable_parameters(model) == expected_resnet_parameters(blocks, 10, stem_kernel=3)
    assert expected_resnet_parameters(RESNET18_BLOCKS, 1000, stem_kernel=3) == 11_689_512 - 7_680
    graph = inbound_graph(model)
    assert chain_before(graph, "stage1_block1_conv1", 4) == ["input", "stem_conv", "stem_bn", "stem_act"]
    names = {layer.name for layer in model.layers}
    assert "stem_pool" not in names and "stem_pad" not in names
    conv = model.get_layer("stem_conv")
    assert (conv.kernel_size, conv.strides, conv.padding) == ((3, 3), (1, 1), "same")
    assert model.get_layer("stage4_block2_act2").output.shape[1:] == (4, 4, 512)  # 1x1 with the ImageNet stem


@pytest.mark.parametrize("shape, stem", [((63, 224, 3), "cifar"), ((64, 64, 3), "imagenet"),
                                         ((32, 32, 3), "cifar"), ((None, None, 3), "imagenet"),
                                         ((None, 40, 3), "cifar")])
def test_auto_stem_takes_cifars_below_64_pixels(shape, stem):
    assert resolve_stem("auto", shape) == stem
    assert resolve_stem("imagenet", shape) == "imagenet" and resolve_stem("cifar", shape) == "cifar"


def test_the_builders_default_stem_is_the_papers_and_a_bad_one_is_named():
    assert "stem_pool" in {layer.name for layer in resnet18(input_shape=(32, 32, 3), classes=10).layers}
    with pytest.raises(ValueError, match="stem must be one of 'imagenet', 'cifar', 'auto', got 'tiny'"):
        resnet18(input_shape=(32, 32, 3), classes=10, stem="tiny")
