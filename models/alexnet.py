"""AlexNet in the DoReFa-Net layout used by the paper (reference alexnet_dorefa).

Layer table at 224x224 (`act` is the chosen activation):

    name                          layer                               output
    conv0 -> conv0_act            conv 96 12x12 /4 valid, no bias     54x54x96
                                  (and no batch norm)
    conv1 -> conv1_bn             conv 256 5x5 same -> BN
      -> conv1_pool -> conv1_act  maxpool 3x3 /2, pad 1 (edge)        27x27x256
    conv2 -> conv2_bn             conv 384 3x3 same -> BN
      -> conv2_pool -> conv2_act  maxpool 3x3 /2 valid                13x13x384
    conv3 -> conv3_bn -> act      conv 384 3x3 same -> BN             13x13x384
    conv4 -> conv4_bn             conv 256 3x3 same -> BN
      -> conv4_pool -> conv4_act  maxpool 3x3 /2 valid                6x6x256
    flatten                                                           9216
    fc0 -> fc0_bn -> fc0_act      dense 4096, no bias -> BN           4096
    fc1 -> fc1_bn -> fc1_act      dense 4096, no bias -> BN           4096
    predictions                   dense classes (bias)

No grouped convolutions, no dropout. Batch norm epsilon 1e-4 (PyTorch momentum
0.1). Layers under batch norm have no bias, and, as in the reference, neither
does conv0 (its bias follows ``batch_norm``, not the absence of a BN after
it). Order conv -> BN -> pool -> act as in the reference. conv1_pool is
PyTorch's ``MaxPool2d(3, 2, padding=1)``: ``PaddedMaxPooling2D`` pads with
copies of the edge rows and columns, which gives the maxima of PyTorch's -inf
padding. With
``batch_norm=False`` every layer has a bias and there is no BN. Weights use
PyTorch's default initialisation.

Trainable parameters with 1000 classes and batch norm: 62,394,344.

The smallest input is 60x60 (conv0 -> 13x13 -> 7x7 -> 3x3 -> 1x1); smaller
inputs raise a ValueError.
"""

import keras

from models.layers import PaddedMaxPooling2D, batch_norm_layer, builder_start, conv2d, dense, pool_features, predictions
from models.regularization import resolve_batch_norm_weight_decay

BATCH_NORM_EPSILON = 1e-4
MIN_INPUT_SIZE = 60


def conv_tower_output_size(size):
    """Spatial size after conv4_pool for an input of ``size`` (None if empty)."""
    if size is None:
        return None
    sizes = [(size - 12) // 4 + 1]  # conv0, 12x12 /4 valid
    sizes.append((sizes[-1] + 2 - 3) // 2 + 1)  # conv1_pool, 3/2 pad 1
    sizes.append((sizes[-1] - 3) // 2 + 1)  # conv2_pool, 3/2 valid
    sizes.append((sizes[-1] - 3) // 2 + 1)  # conv4_pool, 3/2 valid
    return sizes[-1] if min(sizes) >= 1 and size >= 12 else None


def _check_input_size(inputs, include_top):
    height, width = inputs.shape[1], inputs.shape[2]
    for size in (height, width):
        if size is None and include_top:
            raise ValueError(
                "AlexNet with include_top=True needs a fixed input height and "
                f"width (the first dense layer flattens); got {inputs.shape[1:]}"
            )
        if size is not None and conv_tower_output_size(size) is None:
            raise ValueError(
                f"AlexNet needs inputs of at least {MIN_INPUT_SIZE}x"
                f"{MIN_INPUT_SIZE} (conv0 12x12/4 and three 3x3/2 max pools "
                f"leave nothing of smaller inputs); got {height}x{width}"
            )


def alexnet(include_top=True, input_shape=None, classes=1000, classifier_activation=None,
            activation=None, weight_decay=0.0, batch_norm=True, pooling=None, input_tensor=None,
            name="alexnet", fuse_batch_norm=True, batch_norm_weight_decay=None):
    """AlexNet (DoReFa layout); 62,394,344 parameters at 1000 classes.

    Takes the arguments of every builder (see [models][]); particular to this one:

    Args:
        include_top: add the three dense layers (fc0, fc1, predictions); with
            False the output is the 6x6x256 conv4_act feature map (at 224x224).
        input_shape: height and width must be >= 60.
        batch_norm: the reference's `use_bn` (True in the paper).
        fuse_batch_norm: fuses the sites conv3, fc0 and fc1.
    """
    inputs, activations = builder_start(input_shape, (224, 224, 3), input_tensor, include_top=include_top,
                                        classes=classes, activation=activation, fuse_batch_norm=fuse_batch_norm)
    bn_weight_decay = resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay)
    _check_input_size(inputs, include_top)
    use_bias = not batch_norm

    def conv_block(x, index, filters, kernel_size, pool=None):
        """conv -> [BN] -> [pool] -> act, as the reference orders them."""
        x = conv2d(filters, kernel_size, in_channels=x.shape[-1],
                   padding="same", use_bias=use_bias,
                   weight_decay=weight_decay, name=f"conv{index}")(x)
        if batch_norm:
            norm = batch_norm_layer(name=f"conv{index}_bn", epsilon=BATCH_NORM_EPSILON,
                                    weight_decay=bn_weight_decay)
            if pool is None:
                return activations.after_batch_norm(x, norm, f"conv{index}_act")
            x = norm(x)
        if pool is not None:
            x = pool(name=f"conv{index}_pool")(x)
        return activations(x, f"conv{index}_act")

    def fc_block(x, index):
        x = dense(4096, in_features=x.shape[-1], use_bias=use_bias,
                  weight_decay=weight_decay, name=f"fc{index}")(x)
        if batch_norm:
            norm = batch_norm_layer(name=f"fc{index}_bn", epsilon=BATCH_NORM_EPSILON,
                                    weight_decay=bn_weight_decay)
            return activations.after_batch_norm(x, norm, f"fc{index}_act")
        return activations(x, f"fc{index}_act")

    def pool_pad1(name):
        return PaddedMaxPooling2D(3, 2, padding=1, name=name)

    def pool_valid(name):
        return keras.layers.MaxPooling2D(3, 2, padding="valid", name=name)

    x = conv2d(96, 12, in_channels=inputs.shape[-1], strides=4,
               padding="valid", use_bias=use_bias, weight_decay=weight_decay,
               name="conv0")(inputs)
    x = activations(x, "conv0_act")
    x = conv_block(x, 1, 256, 5, pool=pool_pad1)
    x = conv_block(x, 2, 384, 3, pool=pool_valid)
    x = conv_block(x, 3, 384, 3)
    x = conv_block(x, 4, 256, 3, pool=pool_valid)

    if include_top:
        x = keras.layers.Flatten(name="flatten")(x)
        x = fc_block(x, 0)
        x = fc_block(x, 1)
        x = predictions(x, classes, classifier_activation, weight_decay)
    else:
        x = pool_features(x, pooling)
    return keras.Model(inputs, x, name=name)

