"""Bi-Real ResNet-18: every 3x3 convolution wrapped in its own real-valued shortcut (Liu et al., ECCV 2018).

Not in Friesen & Domingos: the layout that binary-activation networks use to close most of the gap to full
precision, here with float weights (as in the paper) and the package's thresholds. The running sum ``x``
stays real-valued; each of the 16 convolutions reads its threshold ``h``:

    x_{k+1} = BN_k(conv3x3_k(h(x_k))) + shortcut_k(x_k)

    shortcut_k(x) = x                                    same size and width
                  = BN(conv1x1(avg_pool2x2(x)))          first convolution of stages 2-4 (/2, width x2;
                                                         "same" pooling: ceil(side / 2), as the conv)

Layer table at 32x32 (``stem="cifar"``, "auto" below 64 pixels; "imagenet" as ResNet-18's: 7x7 /2 and a
max pool), with ``p`` = stage{s}_block{b}:

    name                          layer                                          output
    stem_conv, stem_bn            conv 64 3x3 /1 (no bias) -> BN, no activation  32x32x64
    {p}_act1, {p}_conv1, {p}_bn1  h -> conv 3x3 (/2 in block 1 of stages 2-4)
    {p}_shortcut_pool, _conv, _bn avg pool 2x2 -> conv 1x1 -> BN (those blocks)
    {p}_add1                      x + shortcut
    {p}_act2, {p}_conv2, {p}_bn2  h -> conv 3x3
    {p}_add2                      x + shortcut (identity)
    stages 1-4                    64, 128, 256, 512 channels                     4x4x512
    avg_pool, predictions         global average pool of x -> dense classes (bias)

The stem has no activation: its output is the first term of the running sum, and the first threshold is
stage1_block1_act1's (16 activation sites). Convolutions, batch norm and initialisation are ResNet-18's, so
the trainable parameters equal ResNet-18's with the same stem (11,689,512 with the ImageNet stem and 1000
classes; the pool in front of the 1x1 shortcut adds none). With ReLU as the activation this is the
full-precision twin that the thresholds are measured against.
"""

import keras

from models.layers import batch_norm_layer, builder_start, pool_features, predictions
from models.regularization import resolve_batch_norm_weight_decay
from models.resnet import RESNET18_BLOCKS, STAGE_FILTERS, he_conv, resolve_stem, stem_layers


def _thresholded_conv(x, filters, strides, prefix, index, activations, weight_decay, bn_weight_decay):
    """x + BN(conv3x3(h(x))), with the downsampling shortcut when the size or the width changes."""
    out = activations(x, f"{prefix}_act{index}")
    out = he_conv(out, filters, 3, strides, f"{prefix}_conv{index}", weight_decay)
    out = batch_norm_layer(name=f"{prefix}_bn{index}", weight_decay=bn_weight_decay)(out)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        if strides != 1:
            shortcut = keras.layers.AveragePooling2D(strides, padding="same", name=f"{prefix}_shortcut_pool")(shortcut)
        shortcut = he_conv(shortcut, filters, 1, 1, f"{prefix}_shortcut_conv", weight_decay)
        shortcut = batch_norm_layer(name=f"{prefix}_shortcut_bn", weight_decay=bn_weight_decay)(shortcut)
    return keras.layers.Add(name=f"{prefix}_add{index}")([out, shortcut])


def bireal_resnet18(include_top=True, input_shape=None, classes=1000, classifier_activation=None,
                    activation=None, weight_decay=0.0, pooling=None, input_tensor=None,
                    name="bireal_resnet18", fuse_batch_norm=True, batch_norm_weight_decay=None,
                    stem="auto"):
    """Bi-Real ResNet-18 (see the module docstring for the layout).

    Takes the arguments of every builder (see [models][]); particular to this one:

    Args:
        stem: "imagenet", "cifar" or "auto" (the default: CIFAR's 3x3 /1 stem
            below 64 pixels), as [resnet18][models.resnet.resnet18]'s.
        fuse_batch_norm: accepted for a uniform signature; no threshold here
            follows a batch norm directly (each reads a residual sum).
    """
    del fuse_batch_norm  # every threshold reads an Add
    inputs, activations = builder_start(input_shape, (224, 224, 3), input_tensor, include_top=include_top,
                                        classes=classes, activation=activation, fuse_batch_norm=False)
    bn_weight_decay = resolve_batch_norm_weight_decay(weight_decay, batch_norm_weight_decay)
    x = stem_layers(inputs, resolve_stem(stem, inputs.shape[1:]), weight_decay, bn_weight_decay)
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, RESNET18_BLOCKS), start=1):
        for block in range(1, blocks + 1):
            prefix = f"stage{stage}_block{block}"
            strides = 2 if (stage > 1 and block == 1) else 1
            x = _thresholded_conv(x, filters, strides, prefix, 1, activations, weight_decay, bn_weight_decay)
            x = _thresholded_conv(x, filters, 1, prefix, 2, activations, weight_decay, bn_weight_decay)
    if not include_top:
        return keras.Model(inputs, pool_features(x, pooling), name=name)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, predictions(x, classes, classifier_activation, weight_decay), name=name)
