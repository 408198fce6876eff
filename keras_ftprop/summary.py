"""A precision-aware model summary: what a network of hard-threshold units costs to deploy.

For every layer, per example:

    output bits   1 (HardThreshold), log2(steps + 1) (Staircase), either one also inside a
                  BatchNormThreshold; the input's bits for layers that only move or select
                  values (max pooling, padding, reshape, dropout, ...; a custom layer says so
                  with ``preserves_precision = True``),
                  else the width of the compute dtype (32 or 16)
    activations   prod(output shape)
    MACs          Conv: prod(output spatial) * filters * prod(kernel) * in_channels / groups
                  Dense: prod(input shape[:-1]) * in_features * units
                  counted under the precision of the layer's input: 1-bit, k-bit (1 < k < 16) or float
    param bytes   sum over weights of size * itemsize (weights stay in floating point)

Totals add the activation memory at the output precisions against the same
outputs stored in the compute dtype: saving = 1 - quantized / float.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_ftprop.layers import HardThreshold, Staircase, leaf_layers

__all__ = ["summary", "ModelSummary", "LayerCost"]

_PASS_THROUGH = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Identity,
)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@dataclasses.dataclass
class LayerCost:
    name: str
    kind: str
    output_shape: tuple
    bits: float
    activations: int
    macs: dict  # {"1-bit": n, "k-bit": n, "float": n}
    params: int
    param_bytes: int


@dataclasses.dataclass
class ModelSummary:
    name: str
    layers: list
    float_bits: int

    @property
    def macs(self):
        totals = {"1-bit": 0, "k-bit": 0, "float": 0}
        for layer in self.layers:
            for key, value in layer.macs.items():
                totals[key] += value
        return totals

    @property
    def params(self):
        return sum(layer.params for layer in self.layers)

    @property
    def param_bytes(self):
        return sum(layer.param_bytes for layer in self.layers)

    @property
    def activations(self):
        return sum(layer.activations for layer in self.layers)

    @property
    def activation_bytes(self):
        """Bytes of every layer's output per example at its output precision."""
        return sum(layer.activations * layer.bits for layer in self.layers) / 8

    @property
    def float_activation_bytes(self):
        return self.activations * self.float_bits / 8

    @property
    def activation_saving(self):
        return 1.0 - self.activation_bytes / self.float_activation_bytes if self.activations else 0.0

    def __str__(self):
        header = ("layer (type)", "output shape", "bits", "activations", "MACs 1-bit", "MACs k-bit",
                  "MACs float", "param bytes")
        rows = [header] + [
            (f"{c.name} ({c.kind})", str((None,) + tuple(c.output_shape)), _bits(c.bits), f"{c.activations:,}",
             f"{c.macs['1-bit']:,}", f"{c.macs['k-bit']:,}", f"{c.macs['float']:,}", f"{c.param_bytes:,}")
            for c in self.layers
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        line = lambda row: "  ".join(  # noqa: E731
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        rule = "-" * len(line(header))
        macs = self.macs
        return "\n".join(
            [f'Model: "{self.name}" (per example)', rule, line(header), rule]
            + [line(row) for row in rows[1:]]
            + [
                rule,
                f"Params: {self.params:,} ({self.param_bytes:,} bytes)",
                f"MACs: {sum(macs.values()):,} = 1-bit {macs['1-bit']:,} + k-bit {macs['k-bit']:,}"
                f" + float {macs['float']:,}",
                f"Activation memory: {self.activation_bytes:,.0f} bytes vs {self.float_activation_bytes:,.0f} "
                f"in float{self.float_bits} (saving {100 * self.activation_saving:.1f}%)",
            ]
        )


def _bits(bits):
    return f"{bits:g}" if float(bits).is_integer() else f"{bits:.2f}"


def _dtype_bits(dtype):
    return 8 * np.dtype(keras.backend.standardize_dtype(dtype)).itemsize


def _activation_bits(layer):
    """1 for a step, log2(steps + 1) for a staircase, None for anything else."""
    if isinstance(layer, HardThreshold):
        return 1.0
    if isinstance(layer, Staircase):
        return math.log2(layer.steps + 1)
    return None


def _precision_class(bits, float_bits):
    if bits <= 1:
        return "1-bit"
    return "k-bit" if bits < min(16, float_bits) else "float"


def _macs(layer, input_shape, output_shape):
    if isinstance(layer, _CONV):
        kernel = math.prod(layer.kernel_size)
        in_channels = input_shape[-1]
        return math.prod(output_shape[:-1]) * layer.filters * kernel * in_channels // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return math.prod(input_shape[:-1]) * input_shape[-1] * layer.units
    return 0


def summary(model, print_fn=print):
    """Prints and returns a :class:`ModelSummary` of a built functional or Sequential model.

    Only single-use layers are supported (each layer has one input and one output node).
    """
    if not model.built:
        raise ValueError("summary() needs a built model: call it on data or give it an Input first.")
    float_bits = _dtype_bits(model.compute_dtype)
    bits_of = {}  # id(KerasTensor) -> bits
    for tensor in model.inputs:
        bits_of[id(tensor)] = _dtype_bits(tensor.dtype)
    costs = []
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs = keras.tree.flatten(layer.input)
        in_bits = max((bits_of.get(id(t), float_bits) for t in inputs), default=float_bits)
        bits = _activation_bits(layer) or _activation_bits(getattr(layer, "activation", None))
        if bits is None:
            preserves = isinstance(layer, _PASS_THROUGH) or getattr(layer, "preserves_precision", False)
            bits = in_bits if preserves else float(_dtype_bits(layer.compute_dtype))
        output = layer.output
        bits_of[id(output)] = bits
        out_shape = tuple(output.shape[1:])
        in_shape = tuple(inputs[0].shape[1:])
        macs = {"1-bit": 0, "k-bit": 0, "float": 0}
        macs[_precision_class(in_bits, float_bits)] = _macs(layer, in_shape, out_shape)
        weights = layer.weights
        costs.append(
            LayerCost(
                name=layer.name,
                kind=type(layer).__name__,
                output_shape=out_shape,
                bits=bits,
                activations=math.prod(out_shape),
                macs=macs,
                params=sum(math.prod(w.shape) for w in layer.trainable_weights),
                param_bytes=sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in weights),
            )
        )
    result = ModelSummary(model.name, costs, float_bits)
    if print_fn is not None:
        print_fn(str(result))
    return result
