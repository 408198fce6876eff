"""TFLite export of hard-threshold networks: full-integer (int8) with exact activation codes, or float.

    flatbuffer = to_tflite(model, images[:500], quantize="int8", path="model_int8.tflite")
    print(flatbuffer.report)            # ops by type and dtype, size, rewritten and folded layers

The export converts a functional clone of ``model`` in which each layer type of
``REWRITES`` is replaced by a forward-only graph of TFLite builtins (the
training-time ``tf.custom_gradient`` is not needed to predict):

    HardThreshold   h = select(x > 0, 1, -1)            (zero_one: select(x > 0, 1, 0))
    Staircase       y = select(x > t_{n-1}, l_n, select(... select(x > t_0, l_1, l_0)))
                    t_k = a + (b - a) k / (n - 1),  l_k = a + (b - a) k / n   (n = 1: t_0 = a)

which is ``ops.hard_threshold`` / ``ops.staircase`` exactly (step(0) = -1; x > t is the only way up).
A ``BatchNormThreshold`` is first split into its ``BatchNormalization`` and
threshold (same weights, same ops), so that the converter folds the batch
norm and the threshold is rewritten like any other.

``quantize="int8"``: post-training full-integer quantization (int8 weights per
channel, int8 activations, int32 biases) calibrated on ``representative_data``,
except at the thresholds, whose ranges are pinned with fake-quant nodes:

* output: scale s = (b - a) / (n m), m the largest integer with n m <= 255 and
  a / s an integer (0 must be a code), so every level l_k is the code
  z + l_k / s: {-1, +1} -> s = 1/127, z = 0 (codes -127, 127); {0, 1/3, 2/3, 1}
  -> s = 1/255, z = -128; 7 steps on [0, 1] -> s = 1/252, z = -126.
* input (``threshold_input="pinned"``, the default): the int8 pre-activation
  is rounded, so x within half a step of a threshold can land on its other side
  and flip the unit. Only the side matters, so instead of the calibrated range:
  a step's input is multiplied by k = ``2**STEP_INPUT_BITS / max|x|`` through the
  weights that produce it (batch-norm gamma and beta, or a linear convolution's
  or dense layer's kernel and bias, across max pooling, padding, flatten and
  dropout) and pinned to [-128/127, 1]: the comparison of the (batch-norm
  folded) accumulator with a per-channel integer threshold, at ``2**7`` times the
  calibrated resolution, everything far from 0 saturated. Without such a
  producer (a residual sum) the input is pinned at that resolution but no
  finer than MIN_COMPARE_SCALE (int8 GREATER's resolution). A staircase's
  input is pinned to a grid on which every threshold is a code, one code
  beyond each end. The thresholds are codes of their input's grid, so every
  GREATER compares integers exactly. ``threshold_input="calibrated"`` keeps
  the converter's ranges (for comparison).

Fused thresholds (``fuse_thresholds=True``, the default for int8): a step or a staircase on [0, b] whose
input is a Conv2D or Dense (with its batch norm; max pooling, flatten and dropout may lie between, as they
commute with a monotone threshold) fed by another threshold's output becomes that layer's own
requantization. Its input codes (minus the zero point) are then multiples of m (127 for a {-1, +1} input,
255/n for an n-step staircase on [0, 1]), so its int32 accumulator is acc = m j for an integer j.

Step, with the exact threshold t = -b / (s_in s_w) per channel:

      h = 1[acc > t] = 1[acc + B > 0],  B = m//2 - m (floor(t / m) + 1),

  where acc + B is never within m//2 of 0. The export sets the bias to B and scales each output channel so
  that the requantization multiplier is M = 256 / (m//2 - m//4) (codes unchanged): every unit lands beyond
  the output range and the clamp (a fused RELU_N1_TO_1 for {-1, +1}, RELU and the int8 range for {0, 1})
  puts it exactly on the code of a level (the bias may round by up to m//4).

Staircase (n steps), level k + 1 iff x > t_k, i.e. iff j >= G_k = floor((t_k - b) / (s_in s_w m)) + 1:
  the producer writes one code per level (scale b / n, RELU at level 0, the int8 maximum at level n),

      level = clip(round(M (acc + B)), 0, n)  >= k + 1  iff  j >= (k + 1/2) / (M m) - B / m,

  and per channel an integer B and a multiplier M put each of these between G_k - 1 and G_k (a relative
  1e-5 from either), so the level is exact at every reachable accumulator; a channel without such a pair
  leaves the site unfused. An int8 LEAKY_RELU (identity on the levels) then requantizes the levels onto
  the threshold's own grid.

No GREATER or SELECT_V2 is left at a fused site. Sites that cannot be fused are listed, with the reason,
in ``report.unfused``: the first layer (its input is the image), a residual sum, a batch norm with a
negative scale behind a max pool, a staircase whose lowest level is not 0. They compare their pinned int8
input code q (thresholds at codes c_k): on a 4-D input with one 1x1 depthwise convolution whose
requantization rounds between c_k and c_k + 1 (``_requantized_compare``; one code per level and a
LEAKY_RELU onto the grid for a staircase), elsewhere with GREATER + SELECT_V2; both are the same function
of q.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import os
import re
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop import layers as ftprop_layers
from keras_ftprop import quantization

__all__ = ["to_tflite", "quantization_aware", "inspect_tflite", "exact_output_range", "fused_thresholds",
           "ExportReport", "TFLiteExport", "REWRITES", "STEP_INPUT_BITS", "MIN_COMPARE_SCALE"]

STEP_INPUT_BITS = 7  # a step's input range is 2**7 times finer than the calibrated one
# TFLite's int8 GREATER rescales both sides to (q - z) * scale * 2**8, rounded: a scale below
# 2**-8 merges codes, so a compare's input never gets a finer scale than this.
MIN_COMPARE_SCALE = 2.0**-8
# Layers with f(k x) = k f(x) for k > 0: a step after them may take a scaled input.
POSITIVELY_HOMOGENEOUS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.ZeroPadding2D,
                          keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                          keras.layers.SpatialDropout2D, keras.layers.GlobalAveragePooling2D,
                          keras.layers.GlobalMaxPooling2D)
QUANTIZE_CHOICES = ("int8", "float")


# ----------------------------------------------------------------------------- exact ranges


def exact_output_range(low, high, steps, codes=255):
    """(min, max, scale, zero_point) of an int8 range in which every point low + k (high - low)/steps is a code.

    scale = (high - low) / (steps m) for the largest m with steps m < codes whose
    grid also codes 0 (low / scale an integer, the zero point in [-128, 127]);
    the points are centred among the 256 codes, so ``codes=253`` leaves at least
    one code beyond each end.
    """
    for m in range(codes // steps, 0, -1):
        scale = (high - low) / (steps * m)
        lowest = min(low, 0.0) / scale  # codes below the zero point
        if abs(lowest - round(lowest)) > 1e-6 or abs(low / scale - round(low / scale)) > 1e-6:
            continue
        slack = 255 - round((max(high, 0.0) - min(low, 0.0)) / scale)  # unused codes
        if slack < 255 - codes:
            continue
        zero_point = -128 - round(lowest) + (slack + 1) // 2  # centred: {-1, +1} -> -127, 127
        return (-128 - zero_point) * scale, (127 - zero_point) * scale, scale, zero_point
    raise ValueError(f"no int8 range codes every point of {steps} steps on [{low}, {high}]")


def _staircase_thresholds(steps, low, high):
    if steps == 1:
        return [low]
    return [low + (high - low) * k / (steps - 1) for k in range(steps)]


def _staircase_levels(steps, low, high):
    return [low + (high - low) * k / steps for k in range(steps + 1)]


def _input_range(thresholds, max_abs):
    """The pinned [min, max] of a threshold's input (see the module docstring)."""
    if thresholds == [0.0]:
        e = max(max_abs / (127.0 * 2**STEP_INPUT_BITS), MIN_COMPARE_SCALE)
        return -128.0 * e, 127.0 * e
    if len(thresholds) == 1:
        low, high, steps = min(thresholds[0], 0.0), max(thresholds[0], 0.0), 1
    else:
        low, high, steps = thresholds[0], thresholds[-1], len(thresholds) - 1
    minimum, maximum, _, _ = exact_output_range(low, high, steps, codes=253)
    return minimum, maximum


# ----------------------------------------------------------------------------- export layers


class _ExportThreshold(keras.layers.Layer):
    """Forward-only thresholds: y = levels[sum_k 1[x > t_k]] as nested selects, ranges pinned for int8.

    ``requantize`` (int8, pinned input, 4-D input): the same function of the input's int8 code as one 1x1
    depthwise convolution whose requantization rounds between the codes of the thresholds
    (``_requantized_compare``), for a staircase followed by an int8 LEAKY_RELU onto its grid; where that
    does not apply, the selects.
    """

    def __init__(self, thresholds, levels, output_range=None, input_range=None, requantize=False, **kwargs):
        super().__init__(**kwargs)
        self.thresholds = [float(t) for t in thresholds]
        self.levels = [float(v) for v in levels]
        self.output_range = output_range
        self.input_range = input_range
        self.requantized = None
        if requantize and input_range is not None and output_range is not None:
            self.requantized = _requantized_compare(self.thresholds, self.levels, input_range)

    def call(self, x):
        x = tf.cast(x, tf.float32)
        if self.input_range is not None:
            x = tf.quantization.fake_quant_with_min_max_args(x, *self.input_range, num_bits=8)
        if self.requantized is not None and x.shape.rank == 4:
            return self._by_requantization(x)
        thresholds = [tf.constant(t, tf.float32) for t in self.thresholds]
        if self.input_range is not None:  # the thresholds are codes of the input's grid: integer compares
            thresholds = [tf.quantization.fake_quant_with_min_max_args(t, *self.input_range, num_bits=8)
                          for t in thresholds]
        y = tf.where(x > thresholds[0], self.levels[1], self.levels[0])
        for threshold, level in zip(thresholds[1:], self.levels[2:]):
            y = tf.where(x > threshold, level, y)
        if self.output_range is not None:
            y = tf.quantization.fake_quant_with_min_max_args(y, *self.output_range, num_bits=8)
        return y

    def _by_requantization(self, x):
        kernel, bias, clamp, levels_range = self.requantized
        channels = x.shape[-1]
        kernel = tf.fill([1, 1, channels, 1], tf.constant(kernel, tf.float32))
        y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")
        y = y + tf.fill([channels], tf.constant(bias, tf.float32))
        if levels_range is None:  # a step: straight onto its grid
            y = tf.clip_by_value(y, -1.0, 1.0) if clamp == "n1_to_1" else tf.nn.relu(y)
            return tf.quantization.fake_quant_with_min_max_args(y, *self.output_range, num_bits=8)
        y = tf.quantization.fake_quant_with_min_max_args(tf.nn.relu(y), *levels_range, num_bits=8)
        return _ExportRequantize.requantized(y, self.output_range)

    def compute_output_shape(self, input_shape):
        return input_shape


def _requantized_compare(thresholds, levels, input_range):
    """(kernel, bias, clamp, levels range or None) of a 1x1 depthwise convolution computing the threshold
    from its input's int8 code q, or None where it does not apply.

    Level k + 1 iff q > c_k (c_k the code of t_k). With the kernel's code 127 and the requantization
    v = M (127 (q - z_in) + B): a staircase (levels from 0) writes one code per level, M = 1 / (127 p)
    (p = c_1 - c_0 codes between thresholds, the real kernel (n - 1) / n) and B = 127 (z_in - c_0 - 1/2)
    + 127 p / 2, so that the rounding boundaries of v lie between the codes c_k and c_k + 1, then RELU and
    the int8 maximum clamp it to levels 0..n; a step has M = 4 (8 for {0, 1}) and B = 127 (z_in - c_0 - 1/2),
    beyond its output range one code away from c_0, clamped by RELU_N1_TO_1 (RELU).
    """
    low, high = input_range
    s_in = (high - low) / 255.0
    z_in = round(-128 - low / s_in)
    codes = [z_in + t / s_in for t in thresholds]
    if any(abs(c - round(c)) > 1e-6 for c in codes):
        return None
    codes = [round(c) for c in codes]
    n = len(thresholds)
    if n > 1 and levels[0] == 0.0:  # a staircase on [0, b]
        p = codes[1] - codes[0]
        if any(b - a != p for a, b in zip(codes, codes[1:])):
            return None
        s_out = levels[1] - levels[0]
        multiplier, bias_code = 1.0 / (127 * p), round(127 * (z_in - codes[0] - 0.5) + 127 * p / 2)
        levels_range = (-(255 - n) * s_out, n * s_out)
        clamp = "relu"
    elif n == 1 and levels in ([-1.0, 1.0], [0.0, 1.0]):  # a step
        low_level = levels[0]
        s_out = (1.0 / 127) if low_level == -1.0 else (1.0 / 255)
        multiplier, bias_code = (4.0 if low_level == -1.0 else 8.0), round(127 * (z_in - codes[0] - 0.5))
        levels_range, clamp = None, ("n1_to_1" if low_level == -1.0 else "relu")
    else:
        return None
    s_w = multiplier * s_out / s_in
    return float(127 * s_w), float(bias_code * s_in * s_w), clamp, levels_range


def pinned_input_range(threshold, max_abs, scaled):
    """[min, max] the export pins the input of ``threshold`` (a HardThreshold or Staircase) to.

    ``scaled``: a step whose input the export multiplies by k = ``2**STEP_INPUT_BITS / max_abs`` through the
    producer's weights, pinned there to [-128/127, 1]; in the unscaled input's units that is
    [-128/127, 1] / k. Otherwise ``_input_range`` of the calibrated ``max_abs``.
    """
    thresholds = _thresholds_of(threshold)
    if scaled:
        low, high = _input_range(thresholds, 2.0**STEP_INPUT_BITS)
        return low * max_abs / 2.0**STEP_INPUT_BITS, high * max_abs / 2.0**STEP_INPUT_BITS
    return _input_range(thresholds, max_abs)


def export_threshold(threshold, input_range):
    """The int8 export's forward of ``threshold`` with its input pinned to ``input_range``."""
    export = _rewrite(threshold, True, None)
    return _ExportThreshold(export.thresholds, export.levels, export.output_range, input_range,
                            name=f"{threshold.name}_int8")


def _thresholds_of(layer):
    if isinstance(layer, ftprop_layers.HardThreshold):
        return [0.0]
    if isinstance(layer, ftprop_layers.Staircase):
        return _staircase_thresholds(layer.steps, layer.low, layer.high)
    return None


def _levels_of(layer):
    """(levels, steps) of a HardThreshold's or Staircase's output."""
    if isinstance(layer, ftprop_layers.HardThreshold):
        return ([0.0, 1.0] if layer.zero_one else [-1.0, 1.0]), 1
    return _staircase_levels(layer.steps, layer.low, layer.high), layer.steps


def _rewrite(layer, int8, max_abs):
    thresholds, (levels, steps) = _thresholds_of(layer), _levels_of(layer)
    output_range = input_range = None
    if int8:
        low, high, _, _ = exact_output_range(levels[0], levels[-1], steps)
        output_range = (low, high)
        if max_abs is not None:
            input_range = _input_range(thresholds, max_abs)
    return _ExportThreshold(thresholds, levels, output_range, input_range, requantize=int8, name=layer.name)


# The threshold layer types: a layer is a threshold iff it is an instance of one of them (subclasses included).
THRESHOLD_TYPES = (ftprop_layers.HardThreshold, ftprop_layers.Staircase)


def is_threshold(layer):
    """Whether the export rewrites ``layer``: a HardThreshold or Staircase, or an instance of a subclass."""
    return isinstance(layer, THRESHOLD_TYPES)


# Threshold type -> function(layer, int8, max_abs) -> export layer. ``max_abs`` is
# the calibrated max |input| (None: keep the converter's calibrated input range).
REWRITES = dict.fromkeys(THRESHOLD_TYPES, _rewrite)


# ----------------------------------------------------------------------------- report


@dataclasses.dataclass
class ExportReport:
    """What ``to_tflite`` produced: ops by (type, output dtype), size, rewritten and folded layers."""

    quantize: str
    size_bytes: int
    ops: dict  # {(op name, output dtype): count}
    rewritten: dict  # {layer name: description}
    folded: dict  # {batch-norm layer name: layer it folds into}
    activation_tensors: dict = dataclasses.field(default_factory=dict)  # {layer: (input, output) tensor names}
    fused: dict = dataclasses.field(default_factory=dict)  # {step: producer whose requantization computes it}
    unfused: dict = dataclasses.field(default_factory=dict)  # {threshold: why it stays GREATER + SELECT_V2}

    def __str__(self):
        lines = [f"TFLite {self.quantize} model: {self.size_bytes:,} bytes"]
        lines.append("ops: " + ", ".join(f"{name} {dtype.lower()} x{count}"
                                         for (name, dtype), count in sorted(self.ops.items())))
        for name, what in self.rewritten.items():
            lines.append(f"rewritten {name}: {what}")
        for name, into in self.folded.items():
            lines.append(f"folded {name} into {into}")
        for name, why in self.unfused.items():
            lines.append(f"not fused {name}: {why}")
        return "\n".join(lines)


class TFLiteExport(bytes):
    """The TFLite flatbuffer (``bytes``), with its ``report``
    (an [`ExportReport`][keras_ftprop.deploy.ExportReport])."""

    report: ExportReport


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as error:  # pragma: no cover
        raise ImportError("reading TFLite models needs ai-edge-litert: pip install ai-edge-litert") from error
    return schema_py_generated


def _enum_names(enum):
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def inspect_tflite(flatbuffer):
    """The operators of a TFLite model: a list of dicts {op, inputs, outputs}, tensors as (name, dtype, scale, zp)."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytes(flatbuffer), 0)
    op_names, dtype_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
    graph = model.subgraphs[0]

    def tensor(index):
        t = graph.tensors[index]
        q = t.quantization
        scale = None if q is None or q.scale is None else [float(s) for s in q.scale]
        zero_point = None if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint]
        return dict(index=index, name=t.name.decode(), dtype=dtype_names[t.type], scale=scale,
                    zero_point=zero_point)

    result = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = "CUSTOM:" + (code.customCode or b"").decode()
        result.append(dict(op=name, inputs=[tensor(i) for i in op.inputs if i >= 0],
                           outputs=[tensor(i) for i in op.outputs]))
    return dict(ops=result, inputs=[tensor(i) for i in graph.inputs], outputs=[tensor(i) for i in graph.outputs])


_INTEGER_DTYPES = {"INT8", "INT32", "BOOL"}


def _non_integer_ops(graph):
    """Ops of an int8 model that compute in float or are not builtins (boundary (de)quantization excepted)."""
    model_inputs = {t["index"] for t in graph["inputs"]}
    model_outputs = {t["index"] for t in graph["outputs"]}
    bad = []
    for op in graph["ops"]:
        if op["op"].startswith("CUSTOM") or op["op"].startswith("FLEX"):
            bad.append(op)
            continue
        if op["op"] == "QUANTIZE" and all(t["index"] in model_inputs for t in op["inputs"]):
            continue
        if op["op"] == "DEQUANTIZE" and all(t["index"] in model_outputs for t in op["outputs"]):
            continue
        tensors = op["inputs"] + op["outputs"]
        requantize = op["op"] == "QUANTIZE" and all(t["dtype"] == "INT8" for t in tensors)  # int8 onto int8
        if (op["op"] in ("QUANTIZE", "DEQUANTIZE") and not requantize) or any(
                t["dtype"] not in _INTEGER_DTYPES for t in tensors):
            bad.append(op)
    return bad


# ----------------------------------------------------------------------------- export


def _layer_of(name, layer_names):
    """The model layer whose name is a path segment of TFLite tensor name ``name`` (None if none).

    TensorFlow's name scopes may add ``_1``, ``_2``, ... to a layer's name.
    """
    segments = set(re.split(r"[^\w.-]+", name))
    hits = [layer for layer in layer_names
            if any(re.fullmatch(rf"{re.escape(layer)}(_\d+)?", segment) for segment in segments)]
    return max(hits, key=len) if hits else None


def _representative_batches(data, limit):
    """float32 input batches from an array, a tf.data.Dataset of x or (x, y), or an iterable of them."""
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        data = [np.asarray(data)[i:i + 1] for i in range(len(data))]
    seen = 0
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = np.asarray(batch, dtype=np.float32)
        for i in range(len(batch)):
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield batch[i:i + 1]


def _graph(model):
    """({id(tensor): layer that outputs it}, {id(tensor): layer inputs and model outputs that take it}).

    ``model`` must call each layer once: a layer's ``input`` and ``output`` are
    then its only call's (a ValueError otherwise).
    """
    producers, consumers = {}, collections.Counter(id(t) for t in model.outputs)
    for layer in model.layers:
        for tensor in keras.tree.flatten(layer.output):
            producers[id(tensor)] = layer
        if not isinstance(layer, keras.layers.InputLayer):
            for tensor in keras.tree.flatten(layer.input):
                consumers[id(tensor)] += 1
    for layer in model.layers:  # a layer's later calls have outputs no layer's ``output`` names
        if not isinstance(layer, keras.layers.InputLayer) and any(
                id(tensor) not in producers for tensor in keras.tree.flatten(layer.input)):
            raise ValueError(f"layer {layer.name!r} takes the output of a layer called more than once (a shared "
                             "layer); to_tflite needs a model that calls each layer once")
    return producers, consumers


def _only_input(layer):
    """``layer``'s input tensor if it takes one, else None."""
    inputs = keras.tree.flatten(layer.input)
    return inputs[0] if len(inputs) == 1 else None


def _unfused(model):
    """A copy of functional ``model`` with each BatchNormThreshold as its two (three) layers, and what was split.

    BatchNormThreshold(z) -> BatchNormalization (the fused layer's name and
    weights) -> threshold (the activation's name); on [z, r] an ``Add`` named
    ``<name>_add`` joins r in between: the same forward pass, by the same ops.
    """
    split = {}

    def clone(layer):
        if not isinstance(layer, ftprop_layers.BatchNormThreshold):
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        del config["activation"]
        batch_norm = keras.layers.BatchNormalization.from_config(config)
        threshold = layer.activation.__class__.from_config(layer.activation.get_config())
        add = keras.layers.Add(name=f"{layer.name}_add")
        split[layer.name] = f"BatchNormThreshold as BatchNormalization {layer.name!r} + {threshold.name!r}"

        def call(inputs, **kwargs):
            if isinstance(inputs, (list, tuple)):
                z, residual = inputs
                return threshold(add([batch_norm(z), residual]))
            return threshold(batch_norm(inputs))

        return call

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:  # a BatchNormThreshold's are its batch norm's (its activation has none)
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy, split


def _check_model(model):
    if not isinstance(model, keras.Model) or not model.built or not model.inputs:
        raise ValueError("to_tflite needs a built functional or Sequential Keras model")
    for layer in ftprop_layers.leaf_layers(model):
        activation = getattr(layer, "activation", None)
        if is_threshold(activation) and not isinstance(layer, ftprop_layers.BatchNormThreshold):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) has a {type(activation).__name__} as its "
                "activation=; to export it, apply the activation as a separate layer")
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(is_threshold(inner)
                                                  for inner in ftprop_layers.leaf_layers(layer)):
            raise ValueError(f"nested model {layer.name!r} holds threshold layers; export a flat model "
                             "(build it functionally, without nested models)")


def _threshold_input_max(model, targets, batches):
    """max |input| over ``batches`` of every layer in ``targets``."""
    if not targets:  # e.g. every threshold reads a tensor that a residual sum reads too
        return {}
    probe = keras.Model(model.input, [layer.input for layer in targets])
    maxima = np.zeros(len(targets))
    for batch in batches:
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        maxima = np.maximum(maxima, [float(tf.reduce_max(tf.abs(o))) for o in outputs])
    return dict(zip((layer.name for layer in targets), maxima))


def _scalable_producer(layer, producers, consumers):
    """The layer whose weights scale ``layer``'s input by k > 0, or None.

    Walks back from ``layer`` through ``POSITIVELY_HOMOGENEOUS`` layers to a
    BatchNormalization (scale gamma and beta) or a linear Conv2D/Dense/
    DepthwiseConv2D (scale kernel and bias); every tensor on the way must have
    no other consumer.
    """
    while True:
        tensor = _only_input(layer)
        if tensor is None or consumers[id(tensor)] != 1:
            return None
        producer = producers[id(tensor)]
        if isinstance(producer, keras.layers.BatchNormalization):
            return producer if producer.scale and producer.center else None
        if isinstance(producer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)):
            linear = getattr(producer, "activation", None) in (None, keras.activations.linear)
            return producer if linear else None
        if not isinstance(producer, POSITIVELY_HOMOGENEOUS):
            return None
        layer = producer


def _scale_output(layer, factor):
    """Multiply ``layer``'s output by ``factor`` > 0 through its weights."""
    if isinstance(layer, keras.layers.BatchNormalization):
        scaled = [layer.gamma, layer.beta]
    else:
        scaled = [w for w in (getattr(layer, "kernel", None), getattr(layer, "depthwise_kernel", None),
                              getattr(layer, "bias", None)) if w is not None]
    for weight in scaled:
        weight.assign(weight * factor)


def _folded_batch_norms(model, producers, consumers):
    """{batch norm: producer} for each BatchNormalization fed only by a linear Conv2D/Dense/DepthwiseConv2D."""
    folded = {}
    for layer in model.layers:
        tensor = _only_input(layer) if isinstance(layer, keras.layers.BatchNormalization) else None
        if tensor is None:
            continue
        producer = producers[id(tensor)]
        linear = getattr(producer, "activation", None) in (None, keras.activations.linear)
        if (isinstance(producer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D))
                and linear and consumers[id(tensor)] == 1):
            folded[layer.name] = producer.name
    return folded


# ----------------------------------------------------------------------------- fused steps

# Layers that commute with a monotone threshold, h(f(x)) = f(h(x)): they may lie between a fused step and its
# producer (a max pool before a batch norm only if the batch norm's scale is positive).
_COMMUTE_WITH_STEP = (keras.layers.MaxPooling2D, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                      keras.layers.SpatialDropout2D)
# Layers that keep a threshold's output on its grid of codes (0, a padding value, is a code of every grid).
_KEEP_GRID = (keras.layers.ZeroPadding2D, keras.layers.MaxPooling2D, keras.layers.Flatten, keras.layers.Reshape,
              keras.layers.Dropout, keras.layers.SpatialDropout2D)
_PER_CHANNEL = (keras.layers.MaxPooling2D, keras.layers.Dropout, keras.layers.SpatialDropout2D)


def keeps_grid(layer):
    """Whether ``layer``'s int8 output codes are codes of its input (max pooling, padding with 0, reshapes);
    a layer of another library says so with a ``keeps_int8_grid = True`` attribute."""
    return isinstance(layer, _KEEP_GRID) or getattr(layer, "keeps_int8_grid", False) is True


def _grid_origin(tensor, producers):
    """The layer that computes ``tensor``, looking through layers that keep the grid (None: no producer)."""
    while True:
        source = producers.get(id(tensor))
        if source is None or isinstance(source, keras.layers.InputLayer) or is_threshold(source):
            return source
        tensor = _only_input(source)
        if not keeps_grid(source) or tensor is None:
            return source


def threshold_source(tensor, producers):
    """The threshold layer whose output ``tensor`` carries through layers that keep its grid, or None."""
    source = _grid_origin(tensor, producers)
    return source if is_threshold(source) else None


_MIN_FUSED_INPUT_STEP = 8  # m: the accumulator's margin m//2 must survive the bias rounding (m//4) with room


@dataclasses.dataclass(frozen=True)
class FusedThreshold:
    """A step or staircase computed by the requantization of ``producer`` (see the module docstring)."""

    threshold: str  # the HardThreshold or Staircase layer
    producer: str  # the Conv2D or Dense layer
    batch_norm: str | None  # folded into the producer by the export
    between: tuple  # names of the other layers from the producer to the threshold, in order
    input_scale: float  # s_in of the producer's input grid
    input_step: int  # m: the producer's input codes minus the zero point are multiples of m
    input_bound: int  # max |input code - zero point|


def _grid_of(layer):
    """(scale, m, max |code - zero point|) of the int8 grid of a threshold layer's exported output."""
    levels, steps = _levels_of(layer)
    _, _, scale, _ = exact_output_range(levels[0], levels[-1], steps)
    codes = [round(level / scale) for level in levels]
    return scale, int(np.gcd.reduce(codes)), max(abs(code) for code in codes)


def _batch_norm_factor(layer):
    """(f, c) per channel: the inference batch norm is f z + c."""
    gamma = layer.gamma.numpy() if layer.scale else 1.0
    beta = layer.beta.numpy() if layer.center else 0.0
    f = gamma / np.sqrt(layer.moving_variance.numpy().astype(np.float64) + layer.epsilon)
    return f * np.ones(layer.moving_mean.shape), beta - layer.moving_mean.numpy() * f


def _fusion_of(layer, producers, consumers):
    """(FusedThreshold, None) if ``layer`` can be its producer's requantization, else (None, the reason)."""
    staircase = isinstance(layer, ftprop_layers.Staircase)
    if staircase and layer.low != 0.0:
        return None, f"its lowest level is {layer.low:g}, not 0 (the requantization's clamp is a RELU)"
    after_norm, before_norm, batch_norm, current = [], [], None, layer
    while True:
        tensor = _only_input(current)
        if tensor is None:
            return None, f"{current.name!r} takes several inputs (a sum)"
        if consumers[id(tensor)] != 1:
            return None, "its input is also read by another layer"
        producer = producers[id(tensor)]
        if isinstance(producer, keras.layers.InputLayer):
            return None, "it reads the model's input"
        if type(producer) in (keras.layers.Conv2D, keras.layers.Dense):
            if getattr(producer, "activation", None) not in (None, keras.activations.linear):
                return None, f"{producer.name!r} has an activation"
            if staircase and type(producer) is keras.layers.Dense:  # its multiplier must be per channel
                return None, (f"a staircase after the dense layer {producer.name!r}, whose kernel some "
                              "converters quantize per tensor")
            break
        if isinstance(producer, keras.layers.BatchNormalization) and batch_norm is None:
            if producer.axis not in (-1, len(producer.input.shape) - 1):
                return None, f"batch norm {producer.name!r} is not per output channel"
            batch_norm = producer
        elif isinstance(producer, _COMMUTE_WITH_STEP):
            (before_norm if batch_norm is not None else after_norm).insert(0, producer)
        else:
            return None, f"{producer.name!r} ({type(producer).__name__}) lies between it and its convolution"
        current = producer
    if batch_norm is not None and before_norm:
        if not all(isinstance(b, _PER_CHANNEL) for b in before_norm):
            return None, f"batch norm {batch_norm.name!r} is not per output channel"
        if np.any(_batch_norm_factor(batch_norm)[0] <= 0):
            return None, f"batch norm {batch_norm.name!r} follows a max pool and has a non-positive scale"
    tensor = _only_input(producer)  # the producer's input must lie on a threshold's output grid
    source = _grid_origin(tensor, producers) if tensor is not None else None
    if source is None or isinstance(source, keras.layers.InputLayer):
        return None, f"{producer.name!r} reads the model's input, not a threshold's output"
    if not is_threshold(source):
        return None, f"{producer.name!r} reads {source.name!r} ({type(source).__name__}), not a threshold"
    scale, step, bound = _grid_of(source)
    if not staircase and step < _MIN_FUSED_INPUT_STEP:
        return None, f"the input grid of {producer.name!r} is too fine (codes {step} apart)"
    between = tuple(b.name for b in before_norm) + tuple(b.name for b in after_norm)
    return FusedThreshold(layer.name, producer.name, None if batch_norm is None else batch_norm.name, between,
                     scale, step, bound), None


def fused_thresholds(model):
    """({threshold name: FusedThreshold}, {threshold name: why it is not fused}) of the int8 export of ``model``.

    ``model``: a functional model as ``to_tflite`` converts it (each layer called once, BatchNormThreshold
    split into its layers). A staircase is fused only if every channel's thresholds can be placed exactly
    (``_fused_staircase_weights``), which depends on the weights.
    """
    producers, consumers = _graph(model)
    fused, unfused = {}, {}
    for layer in model.layers:
        if is_threshold(layer):
            site, reason = _fusion_of(layer, producers, consumers)
            if site is not None and isinstance(layer, ftprop_layers.Staircase):
                try:
                    _fused_weights(model, site)
                except _NotFusable as error:
                    site, reason = None, str(error)
            if site is None:
                unfused[layer.name] = reason
            else:
                fused[layer.name] = site
    return fused, unfused


class _NotFusable(ValueError):
    pass


def _folded_producer(model, site):
    """(kernel, bias) in float64 of the producer with its batch norm folded in: x = conv(z, kernel) + bias."""
    producer = model.get_layer(site.producer)
    kernel = producer.kernel.numpy().astype(np.float64)
    bias = producer.bias.numpy().astype(np.float64) if producer.use_bias else np.zeros(kernel.shape[-1])
    if site.batch_norm is not None:
        f, c = _batch_norm_factor(model.get_layer(site.batch_norm))
        kernel, bias = kernel * f, bias * f + c
    return kernel, bias


def _fused_weights(model, site):
    """(kernel, bias) of the producer that computes ``site``'s threshold as its requantization."""
    if isinstance(model.get_layer(site.threshold), ftprop_layers.Staircase):
        return _fused_staircase_weights(model, site)
    kernel, bias = _folded_producer(model, site)
    threshold = model.get_layer(site.threshold)
    out_scale = _grid_of(threshold)[0]
    m, margin = site.input_step, site.input_step // 4
    multiplier = 256.0 / (m // 2 - margin)  # output codes per accumulator unit
    fan_in = int(np.prod(kernel.shape[:-1]))
    bound = 127 * site.input_bound * fan_in + m  # > max |acc|
    new_kernel, new_bias = np.zeros_like(kernel), np.zeros_like(bias)
    new_weight_scale = multiplier * out_scale / site.input_scale  # s_w' = M s_out / s_in
    for c in range(kernel.shape[-1]):
        w = kernel[..., c]
        top = np.abs(w).max()
        if top == 0:  # a dead channel: the unit is h(bias), any constant beyond the output range
            new_bias[c] = 2.0 if bias[c] > 0 else -2.0
            continue
        weight_scale = top / 127  # the converter's per-channel scale
        t = np.clip(-bias[c] / (site.input_scale * weight_scale), -bound, bound)
        code = m // 2 - m * (np.floor(t / m) + 1)
        new_kernel[..., c] = w * (new_weight_scale / weight_scale)
        new_bias[c] = code * site.input_scale * new_weight_scale
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


# A fused staircase's requantized value v = M (acc + B) keeps a relative 1e-5 from each rounding boundary:
# room for the float32 scales and arithmetic of the runtime's requantization (XNNPACK multiplies
# float32(acc + B), exact while |acc + B| < 2**24 near the boundaries, by a float32 scale: relative
# errors of about 1e-7).
_STAIRCASE_MARGIN = 1e-5
_MAX_MULTIPLIER = 128.0  # XNNPACK's requantization scale must stay below 256


def staircase_output_range(layer):
    """(min, max) of the int8 grid a fused staircase's producer writes: one code per level, level 0 the RELU's
    zero, the top level the int8 maximum (code 127 - n + k for level k)."""
    span = layer.high - layer.low
    scale = span / layer.steps
    return -(255 - layer.steps) * scale, layer.steps * scale


def _fused_staircase_weights(model, site):
    """(kernel, bias) whose requantization computes the staircase exactly at every reachable accumulator.

    With the input codes multiples of m, acc = m j (integer j, |j| <= sum |w codes| * bound / m). The
    staircase (levels k s_out, thresholds t_k) reaches level k + 1 iff x = s_in s_w acc + b > t_k, i.e.
    iff j >= G_k = floor((t_k - b) / (s_in s_w m)) + 1. The requantization outputs
    level = clip(round(M (acc + B)), 0, n), which is >= k + 1 iff j >= R_k = (k + 1/2) P - B / m with
    P = 1 / (M m). Per channel, an integer B and a P with G_k - 1 < R_k < G_k for every k (margins
    ``_STAIRCASE_MARGIN``) make the two equal at every j; the kernel's scale is set to give that M (the
    codes are unchanged). ``_NotFusable`` if a channel has none.
    """
    threshold = model.get_layer(site.threshold)
    kernel, bias = _folded_producer(model, site)
    n, span = threshold.steps, threshold.high - threshold.low
    thresholds = np.array(_staircase_thresholds(n, threshold.low, threshold.high))
    out_scale = span / n
    m, s_in = site.input_step, site.input_scale
    ks = np.arange(n) + 0.5
    new_kernel, new_bias = np.zeros_like(kernel), np.zeros_like(bias)
    for c in range(kernel.shape[-1]):
        w = kernel[..., c]
        top = np.abs(w).max()
        if top == 0:  # a dead channel: the constant level of its bias
            new_bias[c] = np.sum(bias[c] > thresholds) * out_scale
            continue
        s_w = top / 127
        j_bound = np.abs(np.round(w / s_w)).sum() * site.input_bound / m
        gates = np.floor((thresholds - bias[c]) / (s_in * s_w * m)) + 1  # G_k
        # R_k must exceed the largest reachable j below G_k and not exceed the smallest at or above it.
        low = np.where(gates - 1 >= -j_bound, np.minimum(gates - 1, j_bound), -np.inf)
        high = np.where(gates <= j_bound, np.maximum(gates, -j_bound), np.inf)
        natural = (span / max(n - 1, 1)) / (s_in * s_w * m)  # P of the float staircase: j per level
        solution = _requantization_for(low, high, ks, m, natural)
        if solution is None:
            raise _NotFusable(f"no requantization of {site.producer!r} places channel {c}'s thresholds "
                              "exactly between its accumulator values")
        per_level, bias_code = solution
        new_scale = out_scale / (per_level * m * s_in)  # s_w' = M s_out / s_in
        new_kernel[..., c] = w * (new_scale / s_w)
        new_bias[c] = bias_code * s_in * new_scale
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def _requantization_for(low, high, ks, m, natural):
    """(P, B): B an integer and low_k < (k + 1/2) P - B / m < high_k for all k (with margins), P near
    ``natural`` and 1 / (P m) <= _MAX_MULTIPLIER; None if no B within reach has one."""
    finite = np.isfinite(low) & np.isfinite(high)
    if finite.any():  # R_0 in the middle of its gap, at the natural P
        k = np.argmax(finite)
        centre = round(m * (ks[k] * natural - (low[k] + high[k]) / 2))
    else:
        centre = round(m * (ks[0] * natural - (high[0] if np.isfinite(high[0]) else low[0])))
    candidates = centre + np.arange(-4 * m - 64, 4 * m + 65)
    shift = candidates[:, None] / m
    with np.errstate(invalid="ignore"):  # R_k = (k + 1/2) P - B / m in [low_k + margin_k, high_k - margin_k]
        lower = np.max((low + shift) / (ks * (1 - _STAIRCASE_MARGIN)), axis=1)
        upper = np.min((high + shift) / (ks * (1 + _STAIRCASE_MARGIN)), axis=1)
    lower = np.maximum(np.nan_to_num(lower, nan=-np.inf), 1.0 / (_MAX_MULTIPLIER * m))
    upper = np.minimum(np.nan_to_num(upper, nan=np.inf), 2.0**24 / (m * ks[-1]))  # acc + B exact in float32
    feasible = lower < upper
    if not feasible.any():
        return None
    chosen = np.clip(natural, lower, upper)  # the bounds hold the margins: any P in [lower, upper] is exact
    best = np.argmin(np.where(feasible, np.abs(np.log(np.where(feasible, chosen, natural) / natural)), np.inf))
    return float(chosen[best]), int(candidates[best])


class _ExportFusedOutput(keras.layers.Layer):
    """The output side of a fused threshold: the clamp the converter fuses into the producer, and its int8 range.

    ``clamp``: "n1_to_1" (a {-1, 1} step: RELU_N1_TO_1) or "relu" (a {0, 1} step, whose 1 saturates the
    range; a staircase, one code per level, whose top level is the int8 maximum).
    """

    def __init__(self, clamp, output_range, **kwargs):
        super().__init__(**kwargs)
        self.clamp, self.output_range = clamp, output_range

    def call(self, x):
        x = tf.cast(x, tf.float32)
        x = tf.clip_by_value(x, -1.0, 1.0) if self.clamp == "n1_to_1" else tf.nn.relu(x)
        return tf.quantization.fake_quant_with_min_max_args(x, *self.output_range, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape


class _ExportRequantize(keras.layers.Layer):
    """A fused staircase's levels (one code each, all >= 0) onto the threshold's own grid, right after the
    producer: an int8 LEAKY_RELU (the identity on levels >= 0) whose output has the grid's scale. XNNPACK
    runs it; a bare second fake quant would be merged into the first by the converter, and a RELU is not
    delegated."""

    def __init__(self, output_range, **kwargs):
        super().__init__(**kwargs)
        self.output_range = output_range

    def call(self, x):
        return self.requantized(x, self.output_range)

    @staticmethod
    def requantized(x, output_range):
        x = tf.nn.leaky_relu(tf.cast(x, tf.float32), alpha=0.5)
        return tf.quantization.fake_quant_with_min_max_args(x, *output_range, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape


def to_tflite(model, representative_data=None, quantize="int8", path=None, io_dtype="float32",
              threshold_input="pinned", calibration_samples=500, fuse_thresholds=True):
    """Convert ``model`` to TFLite; returns the flatbuffer
    ([`TFLiteExport`][keras_ftprop.deploy.TFLiteExport], ``bytes`` with ``.report``).

    Args:
      model: functional or Sequential Keras model (threshold layers applied as layers).
      representative_data: calibration inputs for int8: an array (N, ...), a ``tf.data.Dataset``
        of x or (x, y) batches, or an iterable of batches; a slice of the training data.
      quantize: "int8" (full-integer: every op an int8 builtin) or "float".
      path: also write the flatbuffer there.
      io_dtype: "float32" or "int8" input and output of the int8 model.
      threshold_input: "pinned" (threshold inputs on the thresholds' own range) or "calibrated".
      calibration_samples: at most this many examples of ``representative_data`` are used.
      fuse_thresholds: int8 only: compute each threshold that can be fused as its convolution's (dense
        layer's) requantization, and every other one on a pinned 4-D input as a 1x1 depthwise
        requantization (see the module docstring); False keeps GREATER + SELECT_V2 everywhere.

    Raises:
      ValueError: unknown option; a layer that does not convert to int8 builtins (named).
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}; got {quantize!r}")
    if io_dtype not in ("float32", "int8"):
        raise ValueError(f"io_dtype must be 'float32' or 'int8'; got {io_dtype!r}")
    if threshold_input not in ("pinned", "calibrated"):
        raise ValueError(f"threshold_input must be 'pinned' or 'calibrated'; got {threshold_input!r}")
    int8 = quantize == "int8"
    if int8 and representative_data is None:
        raise ValueError("quantize='int8' needs representative_data (a slice of the training inputs)")
    model, recorded, split = _prepared(model)
    batches = list(_representative_batches(representative_data, calibration_samples)) if int8 else []
    plan = _plan(model, recorded, batches, int8, threshold_input == "pinned", fuse_thresholds and int8)
    export_model, rewritten = _export_model(model, plan, int8)
    flatbuffer = _converted(export_model, model, quantize, io_dtype, batches)
    graph = inspect_tflite(flatbuffer)
    if int8:
        _check_integer(graph, model)
    result = TFLiteExport(flatbuffer)
    result.report = _report(graph, flatbuffer, quantize, plan, rewritten, split)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(flatbuffer)
    return result


def _prepared(model):
    """(the functional copy the export converts, QAT records {threshold: (max_abs, scaled, fused)}, split)."""
    _check_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)  # its layers, as a functional graph
    recorded = {}  # a quantization-aware model's thresholds, fixed in the copy
    if quantization.is_quantization_aware(model):
        model, recorded = quantization.plain_model(model)
    model, split = _unfused(model)  # each layer called once from here on
    return model, recorded, split


@dataclasses.dataclass
class _Plan:
    """What the export changes: threshold input ranges, producers to scale, fused steps, folded batch norms."""

    max_abs: dict  # {threshold: max |input| it is pinned by}
    scale_producers: dict  # {producer: factor}
    fused: dict  # {step: FusedThreshold}
    unfused: dict  # {threshold: reason}
    folded: dict  # {batch norm: producer}
    requantize: bool = True  # unfused thresholds as a depthwise requantization where they can be


def _plan(model, recorded, batches, int8, pinned, fuse):
    producers, consumers = _graph(model)
    targets = [layer for layer in model.layers if is_threshold(layer)]
    fused, unfused = fused_thresholds(model) if int8 else ({}, {})
    if not fuse:
        unfused.update({name: "fuse_thresholds=False" for name in fused})
        fused = {}
    for name, (_, _, was_fused) in (recorded.items() if int8 else ()):  # the export follows the copy
        if was_fused and name not in fused and isinstance(model.get_layer(name), ftprop_layers.Staircase):
            unfused[name] = (f"{unfused.get(name)}; the quantization-aware model compares it unrounded, so a unit "
                             "within half an input code of a threshold may differ")
            warnings.warn(f"quantization-aware staircase {name!r} was made to be fused, and the export compares "
                          f"it with GREATER instead ({unfused[name]})", stacklevel=3)
        elif was_fused and name not in fused:
            raise ValueError(f"quantization-aware threshold {name!r} was made to be fused into its producer's "
                             f"requantization, and the export does not fuse it ({unfused.get(name)})")
        if not was_fused and name in fused:
            unfused[name] = "the quantization-aware model compares it with GREATER"
            del fused[name]
    max_abs = {}
    if int8 and pinned and targets:
        # Pin only inputs no other layer reads: pinning saturates the tensor.
        pinnable = [layer for layer in targets if layer.name not in fused
                    and _only_input(layer) is not None and consumers[id(_only_input(layer))] == 1]
        max_abs = _threshold_input_max(model, pinnable, batches)
        missing = {name for name, (_, _, was_fused) in recorded.items() if not was_fused} - set(max_abs)
        if missing:
            raise ValueError(f"quantization-aware threshold(s) {sorted(missing)} cannot be pinned in the export")
        max_abs.update({name: value for name, (value, _, _) in recorded.items() if name in max_abs})

    # A step's sign survives a positive scale of its input: where the producer's weights can
    # carry it, the input is scaled to max |x| = 2**STEP_INPUT_BITS and pinned to [-128/127, 1]
    # (scale 1/127, fine enough for GREATER's rescaling); elsewhere pinned at MIN_COMPARE_SCALE or finer.
    scale_producers = {}
    for layer in targets:
        if layer.name in max_abs and _thresholds_of(layer) == [0.0]:
            producer = _scalable_producer(layer, producers, consumers)
            scaled = producer is not None and max_abs[layer.name] > 0
            if layer.name in recorded and recorded[layer.name][1] != scaled:
                raise ValueError(f"quantization-aware threshold {layer.name!r} was made for an input "
                                 f"{'' if recorded[layer.name][1] else 'not '}scaled through its producer's "
                                 "weights, and the export finds otherwise")
            if scaled:
                factor = 2.0**STEP_INPUT_BITS / max_abs[layer.name]
                scale_producers[producer.name] = factor
                max_abs[layer.name] *= factor
    folded = _folded_batch_norms(model, producers, consumers)
    for site in fused.values():  # the export folds these itself
        if site.batch_norm is not None:
            folded[site.batch_norm] = site.producer
    return _Plan(max_abs, scale_producers, fused, unfused, folded, requantize=fuse)


def _export_model(model, plan, int8):
    """(the forward-only model the converter sees, {threshold: what it became})."""
    rewritten = {}
    by_producer = {site.producer: site for site in plan.fused.values()}
    identities = {name for site in plan.fused.values() for name in (site.threshold, site.batch_norm) if name}

    def clone(layer):
        if layer.name in by_producer:  # the threshold as this layer's requantization
            site = by_producer[layer.name]
            new = type(layer).from_config({**layer.get_config(), "use_bias": True, "activation": None})
            threshold = model.get_layer(site.threshold)
            levels, steps = _levels_of(threshold)
            grid = exact_output_range(levels[0], levels[-1], steps)[:2]
            staircase = isinstance(threshold, ftprop_layers.Staircase)
            clamp = "n1_to_1" if levels[0] == -1.0 else "relu"
            output_range = staircase_output_range(threshold) if staircase else grid
            fused = _ExportFusedOutput(clamp, output_range, name=f"{site.threshold}_fused")
            rewritten[site.threshold] = (
                f"fused into the requantization of {site.producer!r}"
                + (f" (batch norm {site.batch_norm!r} folded)" if site.batch_norm else "")
                + f", levels {_fmt(levels)}, clamped by " + ("RELU_N1_TO_1" if clamp == "n1_to_1" else "RELU")
                + (f", one code per level, requantized onto [{grid[0]:.6g}, {grid[1]:.6g}]" if staircase
                   else f"; output range pinned to [{grid[0]:.6g}, {grid[1]:.6g}]"))
            if staircase:
                requantize = _ExportRequantize(grid, name=f"{site.threshold}_requantized")
                return lambda *args, **kwargs: requantize(fused(new(*args, **kwargs)))
            return lambda *args, **kwargs: fused(new(*args, **kwargs))
        if layer.name in identities:
            identity = keras.layers.Identity(name=layer.name)
            return lambda inputs, **kwargs: identity(inputs)
        if not is_threshold(layer):  # the copy's own layer (the copy is not used after the export)
            return layer
        new = _rewrite(layer, int8, plan.max_abs.get(layer.name))
        if not plan.requantize and isinstance(new, _ExportThreshold):
            new.requantized = None
        rewritten[layer.name] = _describe(new)
        return new

    export_model = keras.models.clone_model(model, clone_function=clone)
    for name, factor in plan.scale_producers.items():
        _scale_output(export_model.get_layer(name), factor)
    for site in plan.fused.values():
        export_model.get_layer(site.producer).set_weights(list(_fused_weights(model, site)))
    return export_model, rewritten


def _converted(export_model, model, quantize, io_dtype, batches):
    with tempfile.TemporaryDirectory() as saved_model:
        # Quiet where Keras has the option (Model.export's verbose came with Keras 3.6).
        quiet = {"verbose": False} if "verbose" in inspect.signature(export_model.export).parameters else {}
        export_model.export(saved_model, format="tf_saved_model", **quiet)
        return _convert(tf.lite.TFLiteConverter.from_saved_model(saved_model), model, quantize, io_dtype, batches)


def _check_integer(graph, model):
    """A ValueError naming the layer of the first op of an int8 model that does not compute in integers."""
    bad = _non_integer_ops(graph)
    if bad:
        op = bad[0]
        tensor = (op["outputs"] or op["inputs"])[0]
        name = _layer_of(tensor["name"], _layer_names(model))
        where = f"layer {name!r} ({type(_find(model, name)).__name__})" if name else "a layer"
        raise ValueError(f"{where} does not convert to integer TFLite builtins: its {op['op']} op "
                         f"computes in {tensor['dtype'].lower()} (tensor {tensor['name']!r})")


def _report(graph, flatbuffer, quantize, plan, rewritten, split):
    ops = collections.Counter()
    for op in graph["ops"]:
        ops[(op["op"], op["outputs"][0]["dtype"] if op["outputs"] else "-")] += 1

    def ops_of(name):
        return [op for op in graph["ops"] if _layer_of(op["outputs"][0]["name"], [name]) == name]

    activation_tensors = {}
    for name in rewritten:
        if name in plan.fused:  # the output of the last op from the producer to the threshold
            site = plan.fused[name]
            candidates = [site.producer, f"{name}_fused", f"{name}_requantized", *site.between]
            # (an older converter also names the next layer's RESHAPE after the fused layer's ops)
            found = [ops[-1] for ops in ([op for op in ops_of(c) if op["op"] != "RESHAPE"] for c in candidates) if ops]
            if found:
                activation_tensors[name] = (None, found[-1]["outputs"][0]["name"])
                continue
        else:
            mine = [op for op in ops_of(name) if op["op"] != "RESHAPE"]  # (see above)
            compares = [op for op in mine if op["op"] == "GREATER"]
            selects = [op for op in mine if op["op"] == "SELECT_V2"]
            if compares and selects:
                activation_tensors[name] = (compares[0]["inputs"][0]["name"], selects[-1]["outputs"][0]["name"])
                continue
            convolutions = [op for op in mine if op["op"] == "DEPTHWISE_CONV_2D"]
            if convolutions:  # compared by a requantization
                activation_tensors[name] = (convolutions[0]["inputs"][0]["name"], mine[-1]["outputs"][0]["name"])
                continue
        # The converter names each op's output after the TensorFlow name scope of its Keras layer; the
        # report's tensors and the error messages rely on it, so a converter that stops doing so is an error.
        raise RuntimeError(f"no op of the TFLite model has a name of layer {name!r}: the converter's tensor "
                           "names no longer follow the Keras layer names, which to_tflite needs to find each "
                           "threshold's tensors")
    return ExportReport(quantize=quantize, size_bytes=len(flatbuffer), ops=dict(ops), rewritten={**split, **rewritten},
                        folded=plan.folded, activation_tensors=activation_tensors,
                        fused={name: site.producer for name, site in plan.fused.items()},
                        unfused=dict(plan.unfused))


def _convert(converter, model, quantize, io_dtype, batches):
    """``converter.convert()``; a failure names the model's layer it mentions."""
    if quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([b] for b in batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_dtype == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    layer_names = _layer_names(model)
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter's own exception types are not public
        message = str(error)
        name = _layer_of(message, layer_names)
        where = f"layer {name!r} ({type(_find(model, name)).__name__})" if name else "a layer of the model"
        found = re.search(r"'tf\.\w+' op [^\n]*", message)
        detail = found.group(0) if found else message.strip().splitlines()[0][:300]
        raise ValueError(f"{where} does not convert to {quantize} TFLite builtins: {detail}") from error
    return flatbuffer


def _layer_names(model):
    """Names of the layers an op can come from (not the inputs: their names are generated)."""
    return [layer.name for layer in ftprop_layers.leaf_layers(model)
            if not isinstance(layer, keras.layers.InputLayer)]


def _find(model, name):
    return next(layer for layer in ftprop_layers.leaf_layers(model) if layer.name == name)


def _describe(layer):
    how = "GREATER + SELECT_V2"
    if layer.requantized is not None:
        how = "a 1x1 depthwise requantization" + (" + LEAKY_RELU" if layer.requantized[3] else "") + \
            " (GREATER + SELECT_V2 where the input is not 4-D)"
    what = f"{len(layer.thresholds)} threshold(s) as {how}, levels {_fmt(layer.levels)}"
    if layer.output_range is not None:
        low, high = layer.output_range
        what += f"; output range pinned to [{low:.6g}, {high:.6g}] (scale {(high - low) / 255:.6g})"
    if layer.input_range is not None:
        low, high = layer.input_range
        what += f"; input range pinned to [{low:.4g}, {high:.4g}]"
    return what


def _fmt(values):
    if len(values) > 4:
        return f"{{{values[0]:.4g}, {values[1]:.4g}, ..., {values[-1]:.4g}}}"
    return "{" + ", ".join(f"{v:.4g}" for v in values) + "}"


def quantization_aware(model, representative_data, calibration_samples=500):
    """A trainable copy of ``model`` whose forward pass is its int8 model's
    ([`keras_ftprop.quantization`][keras_ftprop.quantization])."""
    return quantization.quantization_aware(model, representative_data, calibration_samples)
