"""Quantization-aware copies of threshold networks, importable from here: the names of
[`keras_ftprop.deploy.qat`][keras_ftprop.deploy.qat] (the copy), ``keras_ftprop.deploy.quantized_layers`` and
``keras_ftprop.deploy.pools`` (its layers) and ``keras_ftprop.deploy.grids`` (the kernel's int8 grid)."""

from keras_ftprop.deploy.grids import kernel_codes, nudged_range, quantized_kernel
from keras_ftprop.deploy.pools import ExactGlobalAveragePooling2D
from keras_ftprop.deploy.qat import plain_model, quantization_aware
from keras_ftprop.deploy.quantized_layers import (
    ExactStaircaseConv2D,
    ExactStepConv2D,
    FakeQuant,
    FoldedConv2D,
    QuantizedConv2D,
    QuantizedDense,
    QuantizedThreshold,
    is_quantization_aware,
)

__all__ = ["quantization_aware", "FakeQuant", "QuantizedConv2D", "QuantizedDense", "QuantizedThreshold",
           "FoldedConv2D", "ExactStepConv2D", "ExactStaircaseConv2D", "ExactGlobalAveragePooling2D",
           "quantized_kernel", "kernel_codes", "nudged_range", "is_quantization_aware", "plain_model"]
