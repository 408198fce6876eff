"""A precision-aware model summary: what a network of hard-threshold units costs to deploy.

For every layer, per example:

    output bits   1 (HardThreshold), log2(steps + 1) (Staircase), either one also inside a
                  BatchNormThreshold; the input's bits for layers that only move or select
                  values (max pooling, padding, reshape, dropout, ...; a custom layer says so
                  with ``preserves_precision = True``), log2(n + 1) for zero padding that adds
                  0 to n levels, else the width of the compute dtype (32 or 16)
    activations   prod(output shape)
    MACs          Conv: prod(output spatial) * filters * prod(kernel) * in_channels / groups
                  Dense: prod(input shape[:-1]) * in_features * units
                  counted under the precision of the layer's input: 1-bit, k-bit (1 < k < 16) or float;
                  zero padding of an input whose n levels do not include 0 (a +-1 step's)
                  adds a level: a convolution's windows that overlap the padding count
                  at log2(n + 1) bits (k-bit for a step), the others at log2(n)
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
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Identity,
)
_ZERO_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@dataclasses.dataclass
class LayerCost:
    """One layer's row of the summary: output precision, activations, MACs by input precision, parameters."""

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
                f"Params: {self.params:,} trainable ({self.param_bytes:,} bytes with the non-trainable weights)",
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


@dataclasses.dataclass(frozen=True)
class _Values:
    """What a tensor holds: ``levels`` values (None: floating point) including 0 or not, and
    ``border``, per spatial axis the (before, after) zeros that padding put around those values."""

    bits: float
    levels: int = None
    zero: bool = True
    border: tuple = None

    @property
    def padded_bits(self):
        """Bits of the tensor with its border: one level more, unless 0 was a level already."""
        return math.log2(self.levels + 1) if self.border else self.bits


def _float_values(bits):
    return _Values(float(bits))


def _activation_values(layer):
    """The output of a step or a staircase, None for anything else."""
    if isinstance(layer, HardThreshold):
        return _Values(1.0, 2, zero=layer.zero_one)
    if isinstance(layer, Staircase):  # levels low + j (high - low) / steps, j = 0..steps
        j = -layer.low * layer.steps / (layer.high - layer.low)
        zero = 0 <= j <= layer.steps and math.isclose(j, round(j), abs_tol=1e-9)
        return _Values(math.log2(layer.steps + 1), layer.steps + 1, zero=zero)
    return None


def _spatial(layer, shape):
    """The spatial part of a (batch-less) shape of a channels-last or channels-first layer."""
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    return tuple(shape[1:] if first else shape[:-1])


def _padded(layer, values):
    """Output of a zero-padding layer: a border around values without 0, else the same values."""
    if values.levels is None or values.zero:
        return values
    padding = layer.padding
    if isinstance(padding[0], int):  # ZeroPadding1D: (before, after)
        padding = (padding,)
    border = values.border or ((0, 0),) * len(padding)
    border = tuple((b0 + p0, b1 + p1) for (b0, b1), (p0, p1) in zip(border, padding))
    return dataclasses.replace(values, border=border)


def _interior_windows(layer, in_shape, out_shape, border):
    """Output positions of a convolution whose windows read neither its own padding nor ``border``."""
    count = 1
    for axis, (n, out) in enumerate(zip(_spatial(layer, in_shape), _spatial(layer, out_shape))):
        k = layer.dilation_rate[axis] * (layer.kernel_size[axis] - 1) + 1  # window span
        stride = layer.strides[axis]
        if layer.padding == "same":
            before = max((out - 1) * stride + k - n, 0) // 2
        else:
            before = k - 1 if layer.padding == "causal" else 0
        low, high = border[axis] if border else (0, 0)
        count *= sum(1 for i in range(out) if i * stride - before >= low and i * stride - before + k <= n - high)
    return count


def _precision_class(bits, float_bits):
    if bits <= 1:
        return "1-bit"
    return "k-bit" if bits < min(16, float_bits) else "float"


def _macs(layer, values, input_shape, output_shape, float_bits):
    """{precision class: MACs}; a convolution's windows over zero padding at the padded precision."""
    macs = {"1-bit": 0, "k-bit": 0, "float": 0}
    if isinstance(layer, _CONV):
        channels = input_shape[1 if getattr(layer, "data_format", None) == "channels_first" else -1]
        per_window = layer.filters * math.prod(layer.kernel_size) * channels // layer.groups
        windows = math.prod(_spatial(layer, output_shape))
        interior = windows
        if values.levels is not None and not values.zero:
            interior = _interior_windows(layer, input_shape, output_shape, values.border)
        macs[_precision_class(values.bits, float_bits)] += interior * per_window
        macs[_precision_class(math.log2(values.levels + 1) if interior < windows else values.bits,
                              float_bits)] += (windows - interior) * per_window
    elif isinstance(layer, keras.layers.Dense):
        count = math.prod(input_shape[:-1]) * input_shape[-1] * layer.units
        macs[_precision_class(values.padded_bits, float_bits)] += count
    return macs


def summary(model, print_fn=print):
    """Prints and returns a [ModelSummary][keras_ftprop.summary.ModelSummary] of a built functional or Sequential model.

    Only single-use layers are supported (each layer has one input and one output node).
    """
    if not model.built:
        raise ValueError("summary() needs a built model: call it on data or give it an Input first.")
    float_bits = _dtype_bits(model.compute_dtype)
    values_of = {id(tensor): _float_values(_dtype_bits(tensor.dtype)) for tensor in model.inputs}
    costs = []
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs = keras.tree.flatten(layer.input)
        values = max((values_of.get(id(t), _float_values(float_bits)) for t in inputs),
                     key=lambda v: v.padded_bits, default=_float_values(float_bits))
        in_shape = tuple(inputs[0].shape[1:])
        out = _activation_values(layer) or _activation_values(getattr(layer, "activation", None))
        if out is None and isinstance(layer, _ZERO_PADDING):
            out = _padded(layer, values)
        elif out is None and (isinstance(layer, _PASS_THROUGH) or getattr(layer, "preserves_precision", False)):
            # Moved or selected, a border's zeros are among the values from here on.
            out = _Values(values.padded_bits, values.levels + 1) if values.border else values
        elif out is None:
            out = _float_values(_dtype_bits(layer.compute_dtype))
        output = layer.output
        values_of[id(output)] = out
        out_shape = tuple(output.shape[1:])
        macs = _macs(layer, values, in_shape, out_shape, float_bits)
        bits = out.padded_bits
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
