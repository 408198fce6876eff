"""A network for microcontrollers: 32x32 images in 256 KB of flash and a 64 KB TFLite Micro arena.

Not in the paper. Four 3x3 convolutions, each followed by batch norm and the activation; a 2x2 max pool
after the first three activations (a step's or staircase's output keeps its int8 codes through a max pool,
so the next convolution's threshold fuses into its requantization); global average pool; classifier.

    name                                      layer                            output (32x32 input)
    conv0 -> conv0_bn -> conv0_act -> pool0   conv 16 3x3 same, no bias        16x16x16
    conv1 -> conv1_bn -> conv1_act -> pool1   conv 32 3x3 same, no bias        8x8x32
    conv2 -> conv2_bn -> conv2_act -> pool2   conv 64 3x3 same, no bias        4x4x64
    conv3 -> conv3_bn -> conv3_act            conv 128 3x3 same, no bias       4x4x128
    avg_pool -> predictions                   global average pool, dense       classes

Trainable parameters (10 classes): ``9 * (3*16 + 16*32 + 32*64 + 64*128) + 2 * (16+32+64+128)
+ 128*10 + 10`` = 98,970. The int8 TFLite model holds one byte per weight: about 120 KB of flash.
The largest activation is conv0's 32x32x16 int8 output (16 KB).
"""

import keras

from models.layers import batch_norm_layer, builder_start, conv2d, pool_features, predictions
from models.regularization import resolve_batch_norm_weight_decay

MICRO_FILTERS = (16, 32, 64, 128)


def micro_convnet(include_top=True, input_shape=None, classes=10, classifier_activation=None,
                  activation=None, weight_decay=0.0, pooling=None, input_tensor=None,
                  name="micro_convnet", fuse_batch_norm=True, batch_norm_weight_decay=None):
    """The microcontroller network (see the module docstring); the arguments of every builder."""
    inputs, activations = builder_start(input_shape, (32, 32, 3), input_tensor, include_top=include_top,
                                        classes=classes, activation=activation, fuse_batch_norm=fuse_batch_norm)
    bn_weight_decay = resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay)
    x = inputs
    for index, filters in enumerate(MICRO_FILTERS):
        x = conv2d(filters, 3, in_channels=x.shape[-1], padding="same", use_bias=False,
                   weight_decay=weight_decay, name=f"conv{index}")(x)
        x = activations.after_batch_norm(
            x, batch_norm_layer(name=f"conv{index}_bn", weight_decay=bn_weight_decay), f"conv{index}_act")
        if index < len(MICRO_FILTERS) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
    if not include_top:
        return keras.Model(inputs, pool_features(x, pooling), name=name)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, predictions(x, classes, classifier_activation, weight_decay), name=name)
