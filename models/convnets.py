"""The paper's CIFAR-10 networks: the 4-layer and the 8-layer convnet.

`convnet4` (reference convnet4; 32x32 input, `act` = chosen activation):

    name                              layer                           output
    conv1_pad -> conv1                conv 32 5x5, pad 3 (bias)       34x34x32
      -> conv1_pool -> conv1_act      maxpool 2x2                     17x17x32
    conv2 -> conv2_pool -> conv2_act  conv 64 5x5, pad 2 -> maxpool  8x8x64
    [fc1_input_bn]                    BN (only with batch_norm=True)
    flatten -> fc1 -> fc1_act         dense 1024                      1024
    [predictions_input_bn]            BN (only with batch_norm=True)
    predictions                       dense classes

    The reference pads conv1 by 3 (not 2), so the 32x32 input becomes 34x34
    and the second pool floors 17 to 8. Its optional batch norms sit *after*
    activations, in front of the dense layers; all layers keep their biases.
    Trainable parameters (10 classes): 4,259,274; with batch_norm 4,261,450.

`convnet8` (reference convnet8, DoReFa-Net's SVHN net; 32x32 input):

    name                                    layer                     output
    conv0 -> conv0_pool -> conv0_act        conv 48 5x5 same (bias)   16x16x48
                                            -> maxpool 2 (no BN)
    conv1 -> conv1_bn -> conv1_act          conv 64 3x3 same          16x16x64
    conv2 -> conv2_bn -> conv2_pool         conv 64 3x3 same
      -> conv2_act                          -> maxpool 2              8x8x64
    conv3 -> conv3_bn -> conv3_act          conv 128 3x3 valid        6x6x128
    conv4 -> conv4_bn -> conv4_act          conv 128 3x3 same         6x6x128
    conv5 -> conv5_bn -> conv5_act          conv 128 3x3 valid        4x4x128
    conv6_dropout                           channel dropout 0.5
    conv6 -> conv6_bn -> conv6_act          conv 512 4x4 valid        1x1x512
    flatten -> predictions                  dense classes (bias)

    Convolutions under batch norm have no bias; BN epsilon 1e-4. conv6's
    kernel covers the whole remaining feature map (4x4 at 32x32), so the net
    also builds for other input sizes >= 20x20 (the reference's 40x40 SVHN
    variant, with an unpadded conv0, is not reproduced).
    Trainable parameters (10 classes): 1,492,554.

Both use PyTorch's default initialisation and PyTorch's BN momentum.
"""

import keras

from models.layers import batch_norm_layer, builder_start, conv2d, dense, pool_features, predictions
from models.regularization import resolve_batch_norm_weight_decay

CONVNET8_BATCH_NORM_EPSILON = 1e-4
CONVNET8_MIN_INPUT_SIZE = 20


def convnet4(include_top=True, input_shape=None, classes=10, classifier_activation=None,
             activation=None, weight_decay=0.0, batch_norm=False, pooling=None, input_tensor=None,
             name="convnet4", fuse_batch_norm=True, batch_norm_weight_decay=None):
    """The paper's 4-layer CIFAR-10 convnet (see the module docstring).

    Args:
        batch_norm: the reference's `use_bn`; False in the paper's recipe.
        include_top: with False the output is the 8x8x64 conv2_act feature
            map (at 32x32); fc1 and the optional batch norms belong to the top.
        fuse_batch_norm: accepted for a uniform interface; no activation of
            this net follows a batch norm, so there is nothing to fuse.

    The other arguments are those of every builder (see [models][]).
    """
    inputs, activations = builder_start(input_shape, (32, 32, 3), input_tensor, include_top=include_top,
                                        classes=classes, activation=activation, fuse_batch_norm=fuse_batch_norm)
    bn_weight_decay = resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay)

    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = conv2d(32, 5, in_channels=inputs.shape[-1], weight_decay=weight_decay,
               name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="conv1_pool")(x)
    x = activations(x, "conv1_act")
    x = conv2d(64, 5, in_channels=x.shape[-1], padding="same",
               weight_decay=weight_decay, name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="conv2_pool")(x)
    x = activations(x, "conv2_act")

    if not include_top:
        return keras.Model(inputs, pool_features(x, pooling), name=name)

    if batch_norm:
        x = batch_norm_layer(name="fc1_input_bn", weight_decay=bn_weight_decay)(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = dense(1024, in_features=x.shape[-1], weight_decay=weight_decay,
              name="fc1")(x)
    x = activations(x, "fc1_act")
    if batch_norm:
        x = batch_norm_layer(name="predictions_input_bn", weight_decay=bn_weight_decay)(x)
    x = predictions(x, classes, classifier_activation, weight_decay)
    return keras.Model(inputs, x, name=name)


def convnet8(include_top=True, input_shape=None, classes=10, classifier_activation=None,
             activation=None, weight_decay=0.0, batch_norm=True, pooling=None, input_tensor=None,
             name="convnet8", fuse_batch_norm=True, batch_norm_weight_decay=None):
    """The paper's 8-layer CIFAR-10 convnet (see the module docstring).

    Takes the arguments of every builder (see [models][]); particular to this one:

    Args:
        include_top: with False the output is the 1x1x512 conv6_act feature
            map (at 32x32).
        input_shape: height and width must be fixed and >= 20.
        batch_norm: the reference's `use_bn` (True in the paper). Without it
            every convolution has a bias.
        fuse_batch_norm: fuses the sites conv1 and conv3 to conv6 (into
            `conv{i}_bn`).
    """
    inputs, activations = builder_start(input_shape, (32, 32, 3), input_tensor, include_top=include_top,
                                        classes=classes, activation=activation, fuse_batch_norm=fuse_batch_norm)
    bn_weight_decay = resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay)
    _check_convnet8_input(inputs)
    use_bias = not batch_norm

    def conv_block(x, index, filters, kernel_size, padding, pool=False):
        """conv -> [BN] -> [maxpool 2] -> act, as the reference orders them."""
        x = conv2d(filters, kernel_size, in_channels=x.shape[-1],
                   padding=padding, use_bias=use_bias,
                   weight_decay=weight_decay, name=f"conv{index}")(x)
        if batch_norm:
            norm = batch_norm_layer(name=f"conv{index}_bn",
                                    epsilon=CONVNET8_BATCH_NORM_EPSILON,
                                    weight_decay=bn_weight_decay)
            if not pool:
                return activations.after_batch_norm(x, norm, f"conv{index}_act")
            x = norm(x)
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"conv{index}_pool")(x)
        return activations(x, f"conv{index}_act")

    x = conv2d(48, 5, in_channels=inputs.shape[-1], padding="same",
               weight_decay=weight_decay, name="conv0")(inputs)
    x = keras.layers.MaxPooling2D(2, name="conv0_pool")(x)
    x = activations(x, "conv0_act")
    x = conv_block(x, 1, 64, 3, "same")
    x = conv_block(x, 2, 64, 3, "same", pool=True)
    x = conv_block(x, 3, 128, 3, "valid")
    x = conv_block(x, 4, 128, 3, "same")
    x = conv_block(x, 5, 128, 3, "valid")
    x = keras.layers.SpatialDropout2D(0.5, name="conv6_dropout")(x)
    x = conv_block(x, 6, 512, tuple(x.shape[1:3]), "valid")

    if not include_top:
        return keras.Model(inputs, pool_features(x, pooling), name=name)
    x = predictions(keras.layers.Flatten(name="flatten")(x), classes, classifier_activation, weight_decay)
    return keras.Model(inputs, x, name=name)


def _check_convnet8_input(inputs):
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None:
        raise ValueError(
            "convnet8 needs a fixed input height and width (conv6's kernel "
            f"covers the whole remaining feature map); got {inputs.shape[1:]}"
        )
    if min(height, width) < CONVNET8_MIN_INPUT_SIZE:
        raise ValueError(
            f"convnet8 needs inputs of at least {CONVNET8_MIN_INPUT_SIZE}x"
            f"{CONVNET8_MIN_INPUT_SIZE} (two 2x2 pools and two valid 3x3 "
            f"convolutions leave nothing of smaller inputs); got {height}x{width}"
        )
