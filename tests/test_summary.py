import math

import keras
import pytest

from keras_ftprop import HardThreshold, Staircase, summary


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


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="built model"):
        summary(keras.Sequential([keras.layers.Dense(2)]), print_fn=None)
