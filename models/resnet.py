"""ResNet-18 and ResNet-34 (torchvision layout) with a pluggable activation.

Layer table for ResNet-18 at 224x224 (ResNet-34: 3, 4, 6, 3 blocks per stage):

    name                       layer                                 output
    stem_pad, stem_conv        conv 64 7x7 /2, pad 3, no bias        112x112x64
    stem_bn, stem_act          BN -> act
    stem_pool                  maxpool 3x3 /2, pad 1 (edge)          56x56x64
    stage1_block{1,2}          basic block 64                        56x56x64
    stage2_block{1,2}          basic block 128 (first one /2)        28x28x128
    stage3_block{1,2}          basic block 256 (first one /2)        14x14x256
    stage4_block{1,2}          basic block 512 (first one /2)        7x7x512
    avg_pool                   global average pool                   512
    predictions                dense classes (bias)

    basic block stage{s}_block{b}_* (input x):
        conv1 3x3 (/2 in the first block of stages 2-4, pad 1) -> bn1 -> act1
        conv2 3x3 -> bn2;  shortcut = x, or shortcut_conv 1x1 /2 -> shortcut_bn
        add (conv path + shortcut) -> act2

Every hidden activation, including the stem's and the one after each residual
addition, is the chosen activation (17 sites in ResNet-18, 33 in ResNet-34).
Convolutions have no bias; batch norm uses PyTorch's defaults (epsilon 1e-5,
momentum 0.1). Padding is PyTorch's symmetric padding (explicit
``ZeroPadding2D`` before strided convolutions, ``PaddedMaxPooling2D`` for the
pool). Initialisation follows the reference: convolutions
N(0, 2 / (k * k * filters)) (He, fan-out), batch-norm gamma 1 and beta 0,
classifier PyTorch's default. The reference's fixed 7x7 average pool is a
global average pool here, identical at 224x224 and valid for any input size
(down to 32x32 and below; spatial dimensions may be None).

Trainable parameters with 1000 classes: ResNet-18 11,689,512; ResNet-34
21,797,672 (the torchvision numbers).

``stem`` chooses the layers before stage 1:

    "imagenet"  the paper's (above): conv 7x7 /2 -> BN -> act -> maxpool 3x3 /2; stage 1 at side / 4
    "cifar"     conv 3x3 /1 -> BN -> act, no pool; stage 1 at full size (He et al.'s CIFAR ResNets)
    "auto"      "cifar" when the smaller input side is below SMALL_INPUT_SIDE (64), else "imagenet"

At 32x32 the ImageNet stem leaves stage 4 a 1x1 map; the CIFAR stem keeps 4x4 there, for 16 times the
compute of the stages. The CIFAR stem has ``3*3*3*64`` = 1,728 stem weights instead of 9,408 (ResNet-18 with
1000 classes: 11,689,512 - 7,680 = 11,681,832).
"""

import keras

from models.layers import PaddedMaxPooling2D, batch_norm_layer, builder_start, conv2d, pool_features, predictions
from models.regularization import resolve_batch_norm_weight_decay

STEMS = ("imagenet", "cifar", "auto")
SMALL_INPUT_SIDE = 64  # "auto" takes the CIFAR stem below this side
STAGE_FILTERS = (64, 128, 256, 512)
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)

# The reference re-initialises every conv with normal(0, sqrt(2 / n)),
# n = kernel_height * kernel_width * out_channels.
_HE_FAN_OUT_NORMAL = dict(
    scale=2.0, mode="fan_out", distribution="untruncated_normal"
)


def _he_fan_out():
    return keras.initializers.VarianceScaling(**_HE_FAN_OUT_NORMAL)


def he_conv(x, filters, kernel_size, strides, name, weight_decay):
    """conv with PyTorch's padding kernel_size // 2, no bias, He (fan-out) initialised."""
    pad = kernel_size // 2
    in_channels = x.shape[-1]
    if pad == 0:
        padding = "valid"
    elif strides > 1:
        # Keras "same" would pad (0, 1) for a stride-2 conv on an even input;
        # PyTorch pads (1, 1). Pad explicitly and convolve "valid".
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # symmetric for stride 1 and an odd kernel
    return conv2d(
        filters,
        kernel_size,
        in_channels=in_channels,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=_he_fan_out(),
        weight_decay=weight_decay,
        name=name,
    )(x)


def resolve_stem(stem, input_shape):
    """"imagenet" or "cifar" for ``stem`` at ``input_shape`` (H, W, C); "auto" by the smaller known side.

    An input whose sides are unknown (None) takes the ImageNet stem under "auto".
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(repr(name) for name in STEMS)}, got {stem!r}")
    if stem != "auto":
        return stem
    sides = [side for side in tuple(input_shape)[:2] if side is not None]
    return "cifar" if sides and min(sides) < SMALL_INPUT_SIDE else "imagenet"


def stem_layers(inputs, stem, weight_decay, bn_weight_decay, activations=None):
    """The layers before stage 1 (``stem`` resolved: "imagenet" or "cifar"), named stem_*.

    With ``activations`` the stem's batch norm is followed by the activation "stem_act" (ResNet);
    without, by nothing (Bi-Real ResNet, whose first threshold is the first block's).
    """
    imagenet = stem == "imagenet"
    x = keras.layers.ZeroPadding2D(3, name="stem_pad")(inputs) if imagenet else inputs
    x = conv2d(
        64, 7 if imagenet else 3, in_channels=inputs.shape[-1], strides=2 if imagenet else 1,
        padding="valid" if imagenet else "same", use_bias=False, kernel_initializer=_he_fan_out(),
        weight_decay=weight_decay, name="stem_conv",
    )(x)
    bn = batch_norm_layer(name="stem_bn", weight_decay=bn_weight_decay)
    x = bn(x) if activations is None else activations.after_batch_norm(x, bn, "stem_act")
    if imagenet:
        x = PaddedMaxPooling2D(3, 2, padding=1, name="stem_pool")(x)
    return x


def _basic_block(x, filters, strides, prefix, activations, weight_decay, bn_weight_decay):
    def bn(name):
        return batch_norm_layer(name=f"{prefix}_{name}", weight_decay=bn_weight_decay)

    shortcut = x
    out = he_conv(x, filters, 3, strides, f"{prefix}_conv1", weight_decay)
    out = activations.after_batch_norm(out, bn("bn1"), f"{prefix}_act1")
    out = he_conv(out, filters, 3, 1, f"{prefix}_conv2", weight_decay)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = he_conv(x, filters, 1, strides, f"{prefix}_shortcut_conv",
                         weight_decay)
        shortcut = bn("shortcut_bn")(shortcut)
    return activations.after_batch_norm(out, bn("bn2"), f"{prefix}_act2",
                                        residual=shortcut,
                                        add_name=f"{prefix}_add")


def build_resnet(blocks_per_stage, *, include_top=True, input_shape=None, classes=1000,
                 classifier_activation=None, activation=None, weight_decay=0.0, pooling=None,
                 input_tensor=None, name="resnet", fuse_batch_norm=True,
                 batch_norm_weight_decay=None, stem="imagenet"):
    """A basic-block ResNet; see the module docstring for the layout."""
    inputs, activations = builder_start(input_shape, (224, 224, 3), input_tensor, include_top=include_top,
                                        classes=classes, activation=activation, fuse_batch_norm=fuse_batch_norm)
    bn_weight_decay = resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay)

    x = stem_layers(inputs, resolve_stem(stem, inputs.shape[1:]), weight_decay, bn_weight_decay,
                    activations)

    for stage, (filters, blocks) in enumerate(
        zip(STAGE_FILTERS, blocks_per_stage), start=1
    ):
        for block in range(1, blocks + 1):
            strides = 2 if (stage > 1 and block == 1) else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}",
                             activations, weight_decay, bn_weight_decay)

    if not include_top:
        return keras.Model(inputs, pool_features(x, pooling), name=name)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = predictions(x, classes, classifier_activation, weight_decay)
    return keras.Model(inputs, x, name=name)


def resnet18(include_top=True, input_shape=None, classes=1000, classifier_activation=None,
             activation=None, weight_decay=0.0, pooling=None, input_tensor=None,
             name="resnet18", fuse_batch_norm=True, batch_norm_weight_decay=None, stem="imagenet"):
    """ResNet-18 (2, 2, 2, 2 basic blocks); 11,689,512 parameters at 1000 classes.

    Takes the arguments of every builder (see [models][]); particular to this one:

    Args:
        include_top: add global average pooling and the classifier; with
            False the output is the 7x7x512 feature map (at 224x224).
        input_shape: spatial dimensions may be None (the network is fully
            convolutional up to the global pool).
        fuse_batch_norm: fuses every site; after bn2 the residual sum is
            inside the fused layer, so the `*_add` layers do not exist.
        stem: "imagenet" (the paper's 7x7 /2 convolution and max pool),
            "cifar" (3x3 /1 convolution, no pool) or "auto" (CIFAR's below
            64 pixels); see the module docstring.
    """
    return build_resnet(
        RESNET18_BLOCKS, include_top=include_top, input_shape=input_shape, classes=classes,
        classifier_activation=classifier_activation, activation=activation,
        weight_decay=weight_decay, pooling=pooling, input_tensor=input_tensor, name=name,
        fuse_batch_norm=fuse_batch_norm, batch_norm_weight_decay=batch_norm_weight_decay, stem=stem)


def resnet34(include_top=True, input_shape=None, classes=1000, classifier_activation=None,
             activation=None, weight_decay=0.0, pooling=None, input_tensor=None,
             name="resnet34", fuse_batch_norm=True, batch_norm_weight_decay=None, stem="imagenet"):
    """ResNet-34 (3, 4, 6, 3 basic blocks); 21,797,672 parameters at 1000
    classes. Not used in the paper; arguments as [resnet18][models.resnet.resnet18]."""
    return build_resnet(
        RESNET34_BLOCKS, include_top=include_top, input_shape=input_shape, classes=classes,
        classifier_activation=classifier_activation, activation=activation,
        weight_decay=weight_decay, pooling=pooling, input_tensor=input_tensor, name=name,
        fuse_batch_norm=fuse_batch_norm, batch_norm_weight_decay=batch_norm_weight_decay, stem=stem)
