import math

import keras
import pytest

from keras_ftprop import BatchNormThreshold, HardThreshold, Staircase, summary


def _small_net():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="c1"),
            HardThreshold(name="h1"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(6, 3, activation=Staircase(steps=3), name="c2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(5, name="out"),
        ],
        name="small",
    )


def test_per_layer_costs_by_hand():
    result = summary(_small_net(), print_fn=None)
    by_name = {layer.name: layer for layer in result.layers}
    assert [layer.bits for layer in result.layers] == [32, 1, 1, 2, 2, 32]
    # c1: 8*8 positions * 4 filters * (3*3*3) float inputs
    assert by_name["c1"].macs == {"1-bit": 0, "k-bit": 0, "float": 8 * 8 * 4 * 27}
    # c2 reads the pooled step outputs: 2*2 positions * 6 filters * (3*3*4) one-bit inputs
    assert by_name["c2"].macs == {"1-bit": 2 * 2 * 6 * 36, "k-bit": 0, "float": 0}
    # out reads the 2-bit staircase through Flatten: 24 * 5
    assert by_name["out"].macs == {"1-bit": 0, "k-bit": 24 * 5, "float": 0}
    assert by_name["c2"].params == 3 * 3 * 4 * 6 + 6
    assert by_name["out"].param_bytes == 4 * (24 * 5 + 5)


def test_totals_and_activation_saving():
    result = summary(_small_net(), print_fn=None)
    activations = [256, 256, 64, 24, 24, 5]
    bits = [32, 1, 1, 2, 2, 32]
    quantized = sum(a * b for a, b in zip(activations, bits)) / 8
    assert result.activations == sum(activations)
    assert result.activation_bytes == quantized
    assert result.float_activation_bytes == sum(activations) * 4
    assert result.activation_saving == pytest.approx(1 - quantized / (sum(activations) * 4))
    assert result.params == (27 * 4 + 4) + (36 * 6 + 6) + (24 * 5 + 5)
    assert sum(result.macs.values()) == 6912 + 864 + 120


def test_staircase_bits_are_log2_of_levels():
    model = keras.Sequential([keras.Input((4,)), Staircase(steps=5)])
    assert summary(model, print_fn=None).layers[0].bits == pytest.approx(math.log2(6))


def test_printed_table_names_layers_and_totals():
    lines = []
    summary(_small_net(), print_fn=lines.append)
    text = lines[0]
    assert "h1 (HardThreshold)" in text and "c2 (Conv2D)" in text
    assert "MACs: 7,896 = 1-bit 864 + k-bit 120 + float 6,912" in text
    assert "saving" in text


def test_custom_layers_can_declare_that_they_preserve_precision():
    class Shuffle(keras.layers.Layer):
        preserves_precision = True

        def call(self, x):
            return keras.ops.flip(x, axis=-1)

    model = keras.Sequential([keras.Input((4,)), HardThreshold(), Shuffle(), keras.layers.Dense(2)])
    result = summary(model, print_fn=None)
    assert result.layers[1].bits == 1 and result.layers[2].macs["1-bit"] == 8


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="built model"):
        summary(keras.Sequential([keras.layers.Dense(2)]), print_fn=None)


def _conv(out_h, out_w, filters, kernel, in_channels):
    return out_h * out_w * filters * kernel * kernel * in_channels


def _border(side, inner, filters, kernel, in_channels):
    """MACs of the side x side output windows that overlap zero padding (all but inner x inner)."""
    return (side * side - inner * inner) * filters * kernel * kernel * in_channels


def _expected_macs():
    """MACs per example of the paper's networks at their paper inputs, from their layer tables:
    (reading the float image or a global average, reading activations, the part of the latter
    whose windows overlap zero padding).

    Only the first layer reads the (float) image; every other conv/dense reads
    activation outputs, except ResNet's classifier, which reads a global average.
    A stride-1 "same" k x k convolution on an s x s map has (s - k + 1)^2 windows
    clear of its padding; ResNet's stride-2 3x3 convolutions pad (1, 1) explicitly,
    and only their first row and column of windows reads padding.
    """
    resnet_stage1 = 4 * _conv(56, 56, 64, 3, 64)
    resnet_later = [  # conv1 (/2), conv2, 1x1 downsample, block 2's two convs
        _conv(s, s, c, 3, c // 2) + _conv(s, s, c, 3, c) + _conv(s, s, c, 1, c // 2) + 2 * _conv(s, s, c, 3, c)
        for s, c in [(28, 128), (14, 256), (7, 512)]
    ]
    resnet_border = 4 * _border(56, 54, 64, 3, 64) + sum(
        _border(s, s - 1, c, 3, c // 2) + 3 * _border(s, s - 2, c, 3, c) for s, c in [(28, 128), (14, 256), (7, 512)]
    )
    return {
        "convnet4": (  # conv1 pad 3 -> 34x34, pool 17, conv2 pad 2 -> 17x17, pool 8, fc 4096 -> 1024 -> 10
            _conv(34, 34, 32, 5, 3),
            _conv(17, 17, 64, 5, 32) + 8 * 8 * 64 * 1024 + 1024 * 10,
            _border(17, 13, 64, 5, 32),
        ),
        "convnet8": (  # conv1, conv2 (16x16) and conv4 (6x6) are "same"; conv3, conv5 and conv6 "valid"
            _conv(32, 32, 48, 5, 3),
            _conv(16, 16, 64, 3, 48) + _conv(16, 16, 64, 3, 64) + _conv(6, 6, 128, 3, 64)
            + _conv(6, 6, 128, 3, 128) + _conv(4, 4, 128, 3, 128) + _conv(1, 1, 512, 4, 128) + 512 * 10,
            _border(16, 14, 64, 3, 48) + _border(16, 14, 64, 3, 64) + _border(6, 4, 128, 3, 128),
        ),
        "alexnet": (  # conv2 5x5, conv3 to conv5 3x3 "same"
            _conv(54, 54, 96, 12, 3),
            _conv(54, 54, 256, 5, 96) + _conv(27, 27, 384, 3, 256) + _conv(13, 13, 384, 3, 384)
            + _conv(13, 13, 256, 3, 384) + 9216 * 4096 + 4096 * 4096 + 4096 * 1000,
            _border(54, 50, 256, 5, 96) + _border(27, 25, 384, 3, 256) + _border(13, 11, 384, 3, 384)
            + _border(13, 11, 256, 3, 384),
        ),
        "resnet18": (
            _conv(112, 112, 64, 7, 3) + 512 * 1000,
            resnet_stage1 + sum(resnet_later),
            resnet_border,
        ),
    }


@pytest.mark.parametrize("name", ["convnet4", "convnet8", "alexnet", "resnet18"])
@pytest.mark.parametrize("activation, quantized", [("step", "1-bit"), ("staircase", "k-bit"), ("relu", "float")])
def test_paper_networks(name, activation, quantized):
    import models

    classes = 10 if name.startswith("convnet") else 1000
    model = models.get_model(name, activation=activation, classes=classes)
    result = summary(model, print_fn=None)
    float_macs, activation_macs, border_macs = _expected_macs()[name]
    expected = {"1-bit": 0, "k-bit": 0, "float": float_macs}
    expected[quantized] += activation_macs
    if activation == "step":  # {-1, 0, +1} under the windows that read padding; a staircase has 0 among its levels
        expected["1-bit"] -= border_macs
        expected["k-bit"] += border_macs
    assert result.macs == expected
    assert result.params == sum(math.prod(w.shape) for w in model.trainable_weights)
    bits = {}
    for layer in result.layers:
        bits.setdefault(layer.kind, set()).add(layer.bits)
    thresholds = bits.get("HardThreshold", set()) | bits.get("Staircase", set()) | bits.get("BatchNormThreshold", set())
    if activation == "step":
        assert thresholds == {1}
    if activation == "staircase":
        steps = models.MODELS[name].staircase_steps
        assert len(thresholds) == 1 and thresholds.pop() == pytest.approx(math.log2(steps + 1))
    if activation in ("step", "staircase") and name != "convnet4":  # thresholds after batch norm are fused
        assert "BatchNormThreshold" in bits
    if activation == "relu":
        assert result.activation_saving == 0.0
    else:
        assert 0.0 < result.activation_saving < 1.0


def test_batch_norm_threshold_counts_as_its_threshold_with_the_batch_norm_weights():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1"),
            BatchNormThreshold(Staircase(steps=3), name="bn"),
            keras.layers.Conv2D(6, 3, name="c2"),
        ]
    )
    result = summary(model, print_fn=None)
    bn = result.layers[1]
    assert (bn.name, bn.kind, bn.bits, bn.activations) == ("bn", "BatchNormThreshold", 2, 8 * 8 * 4)
    assert bn.params == 2 * 4 and bn.param_bytes == 4 * 4 * 4  # gamma, beta; moving mean and variance
    assert bn.macs == {"1-bit": 0, "k-bit": 0, "float": 0}
    assert result.layers[2].macs == {"1-bit": 0, "k-bit": 6 * 6 * 6 * 36, "float": 0}


def test_the_printout_gives_one_parameter_count_and_the_bytes_of_every_weight():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, use_bias=False),
                              BatchNormThreshold(Staircase(steps=3), name="bn")])
    lines = [line for line in str(summary(model, print_fn=None)).splitlines() if "Params" in line]
    trainable = 3 * 3 * 3 * 4 + 2 * 4  # kernel; gamma, beta
    every = trainable + 2 * 4  # and the moving mean and variance
    assert lines == [f"Params: {trainable:,} trainable ({4 * every:,} bytes with the non-trainable weights)"]


def _conv_after(activation, *layers, input_shape=(6, 6, 2)):
    return summary(keras.Sequential([keras.Input(input_shape), activation, *layers]), print_fn=None)


def test_zero_padding_of_a_plus_minus_one_input_counts_its_windows_as_ternary():
    # 6x6 "same" 3x3: the 4x4 inner windows read +-1 only, the other 20 also the padding's 0
    result = _conv_after(HardThreshold(), keras.layers.Conv2D(3, 3, padding="same"))
    per_window = 3 * 3 * 3 * 2
    assert result.layers[1].macs == {"1-bit": 16 * per_window, "k-bit": 20 * per_window, "float": 0}


def test_zero_padding_of_a_zero_one_step_or_a_staircase_through_zero_adds_no_level():
    per_window = 3 * 3 * 3 * 2
    for activation in (HardThreshold(zero_one=True), Staircase(steps=3)):
        macs = _conv_after(activation, keras.layers.Conv2D(3, 3, padding="same")).layers[1].macs
        assert sum(macs.values()) == 36 * per_window
        assert macs["k-bit" if isinstance(activation, Staircase) else "1-bit"] == 36 * per_window


def test_padding_layer_then_strided_valid_convolution_by_hand():
    # 6x6 padded to 9x7 (rows 1 above, 2 below; 1 column right): data rows [1, 7), columns [0, 6).
    # 3x2 kernel, strides (2, 1): window rows start at 0, 2, 4, 6 -> inside for 2 and 4;
    # columns start at 0..5 -> inside for 0..4. 2 x 5 of 4 x 6 windows read +-1 only.
    result = _conv_after(HardThreshold(), keras.layers.ZeroPadding2D(((1, 2), (0, 1))),
                         keras.layers.Conv2D(3, (3, 2), strides=(2, 1)))
    pad, conv = result.layers[1], result.layers[2]
    assert pad.bits == pytest.approx(math.log2(3)) and conv.output_shape == (4, 6, 3)
    per_window = 3 * 3 * 2 * 2
    assert conv.macs == {"1-bit": 10 * per_window, "k-bit": 14 * per_window, "float": 0}


def test_causal_dilated_convolution_by_hand():
    # kernel 3 at dilation 2 spans 5 positions; causal padding puts 4 zeros before: windows 0..3 read them
    result = _conv_after(HardThreshold(), keras.layers.Conv1D(2, 3, dilation_rate=2, padding="causal"),
                         input_shape=(8, 1))
    assert result.layers[1].macs == {"1-bit": 4 * 2 * 3, "k-bit": 4 * 2 * 3, "float": 0}


def test_zeros_of_a_border_moved_into_the_data_stay_there():
    # max pooling over the padded map puts 0s among its values: the dense layer reads three levels
    result = _conv_after(HardThreshold(), keras.layers.ZeroPadding2D(1), keras.layers.MaxPooling2D(),
                         keras.layers.Flatten(), keras.layers.Dense(2))
    assert [layer.bits for layer in result.layers[2:4]] == [pytest.approx(math.log2(3))] * 2
    assert result.layers[-1].macs == {"1-bit": 0, "k-bit": 4 * 4 * 2 * 2, "float": 0}


def test_staircase_without_zero_among_its_levels_pads_to_one_level_more():
    # levels -1, -1/3, 1/3, 1: zero padding makes five
    result = _conv_after(Staircase(steps=3, low=-1.0, high=1.0), keras.layers.ZeroPadding2D(1))
    assert result.layers[1].bits == pytest.approx(math.log2(5))
