"""TFLite export of hard-threshold networks: full-integer (int8) with exact activation codes, or float.

    flatbuffer = to_tflite(model, images[:500], quantize="int8", path="model_int8.tflite")
    print(flatbuffer.report)            # ops by type and dtype, size, rewritten and folded layers

The export converts a functional clone of ``model`` in which each layer type of
``REWRITES`` is replaced by a forward-only graph of TFLite builtins (the
training-time ``tf.custom_gradient`` is not needed to predict)::

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
  a step's input is multiplied by k = 2**STEP_INPUT_BITS / max|x| through the
  weights that produce it (batch-norm gamma and beta, or a linear convolution's
  or dense layer's kernel and bias, across max pooling, padding, flatten and
  dropout) and pinned to [-128/127, 1]: the comparison of the (batch-norm
  folded) accumulator with a per-channel integer threshold, at 2**7 times the
  calibrated resolution, everything far from 0 saturated. Without such a
  producer (a residual sum) the input is pinned at that resolution but no
  finer than MIN_COMPARE_SCALE (int8 GREATER's resolution). A staircase's
  input is pinned to a grid on which every threshold is a code, one code
  beyond each end. The thresholds are codes of their input's grid, so every
  GREATER compares integers exactly. ``threshold_input="calibrated"`` keeps
  the converter's ranges (for comparison).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop import layers as ftprop_layers
from keras_ftprop import quantization

__all__ = ["to_tflite", "quantization_aware", "inspect_tflite", "exact_output_range", "ExportReport",
           "TFLiteExport", "REWRITES", "STEP_INPUT_BITS", "MIN_COMPARE_SCALE"]

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
    """Forward-only thresholds: y = levels[sum_k 1[x > t_k]] as nested selects, ranges pinned for int8."""

    def __init__(self, thresholds, levels, output_range=None, input_range=None, **kwargs):
        super().__init__(**kwargs)
        self.thresholds = [float(t) for t in thresholds]
        self.levels = [float(v) for v in levels]
        self.output_range = output_range
        self.input_range = input_range

    def call(self, x):
        x = tf.cast(x, tf.float32)
        if self.input_range is not None:
            x = tf.quantization.fake_quant_with_min_max_args(x, *self.input_range, num_bits=8)
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

    def compute_output_shape(self, input_shape):
        return input_shape


def pinned_input_range(threshold, max_abs, scaled):
    """[min, max] the export pins the input of ``threshold`` (a HardThreshold or Staircase) to.

    ``scaled``: a step whose input the export multiplies by k = 2**STEP_INPUT_BITS / max_abs through the
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
    export = REWRITES[type(threshold)](threshold, True, None)
    return _ExportThreshold(export.thresholds, export.levels, export.output_range, input_range,
                            name=f"{threshold.name}_int8")


def _thresholds_of(layer):
    if isinstance(layer, ftprop_layers.HardThreshold):
        return [0.0]
    if isinstance(layer, ftprop_layers.Staircase):
        return _staircase_thresholds(layer.steps, layer.low, layer.high)
    return None


def _rewrite_hard_threshold(layer, int8, max_abs):
    low = 0.0 if layer.zero_one else -1.0
    return _threshold_layer(layer, [0.0], [low, 1.0], 1, int8, max_abs)


def _rewrite_staircase(layer, int8, max_abs):
    thresholds = _staircase_thresholds(layer.steps, layer.low, layer.high)
    levels = _staircase_levels(layer.steps, layer.low, layer.high)
    return _threshold_layer(layer, thresholds, levels, layer.steps, int8, max_abs)


def _threshold_layer(layer, thresholds, levels, steps, int8, max_abs):
    output_range = input_range = None
    if int8:
        low, high, _, _ = exact_output_range(levels[0], levels[-1], steps)
        output_range = (low, high)
        if max_abs is not None:
            input_range = _input_range(thresholds, max_abs)
    return _ExportThreshold(thresholds, levels, output_range, input_range, name=layer.name)


# Layer type -> function(layer, int8, max_abs) -> export layer. ``max_abs`` is
# the calibrated max |input| (None: keep the converter's calibrated input range).
# A new threshold layer needs one entry here.
REWRITES = {
    ftprop_layers.HardThreshold: _rewrite_hard_threshold,
    ftprop_layers.Staircase: _rewrite_staircase,
}


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

    def __str__(self):
        lines = [f"TFLite {self.quantize} model: {self.size_bytes:,} bytes"]
        lines.append("ops: " + ", ".join(f"{name} {dtype.lower()} x{count}"
                                         for (name, dtype), count in sorted(self.ops.items())))
        for name, what in self.rewritten.items():
            lines.append(f"rewritten {name}: {what}")
        for name, into in self.folded.items():
            lines.append(f"folded {name} into {into}")
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
        if op["op"] in ("QUANTIZE", "DEQUANTIZE") or any(t["dtype"] not in _INTEGER_DTYPES for t in tensors):
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
        if isinstance(activation, tuple(REWRITES)) and not isinstance(layer, ftprop_layers.BatchNormThreshold):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) has a {type(activation).__name__} as its "
                "activation=; to export it, apply the activation as a separate layer")
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(isinstance(inner, tuple(REWRITES))
                                                  for inner in ftprop_layers.leaf_layers(layer)):
            raise ValueError(f"nested model {layer.name!r} holds threshold layers; export a flat model "
                             "(build it functionally, without nested models)")


def _threshold_input_max(model, targets, batches):
    """max |input| over ``batches`` of every layer in ``targets``."""
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


def to_tflite(model, representative_data=None, quantize="int8", path=None, io_dtype="float32",
              threshold_input="pinned", calibration_samples=500):
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
    _check_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)  # its layers, as a functional graph
    recorded = {}  # a quantization-aware model's thresholds: {name: (max_abs, scaled)} fixed in the copy
    if quantization.is_quantization_aware(model):
        model, recorded = quantization.plain_model(model)
    # Everything below works on this copy, whose layers are each called once.
    model, split = _unfused(model)

    targets = [layer for layer in model.layers if type(layer) in REWRITES]
    batches = list(_representative_batches(representative_data, calibration_samples)) if int8 else []
    producers, consumers = _graph(model)
    max_abs = {}
    if int8 and threshold_input == "pinned" and targets:
        # Pin only inputs no other layer reads: pinning saturates the tensor.
        pinnable = [layer for layer in targets
                    if _only_input(layer) is not None and consumers[id(_only_input(layer))] == 1]
        max_abs = _threshold_input_max(model, pinnable, batches)
        missing = set(recorded) - set(max_abs)
        if missing:
            raise ValueError(f"quantization-aware threshold(s) {sorted(missing)} cannot be pinned in the export")
        max_abs.update({name: value for name, (value, _) in recorded.items()})

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

    rewritten, folded = {}, _folded_batch_norms(model, producers, consumers)

    def clone(layer):
        rewrite = REWRITES.get(type(layer))
        if rewrite is None:  # the copy's own layer (the copy is not used after the export)
            return layer
        new = rewrite(layer, int8, max_abs.get(layer.name))
        rewritten[layer.name] = _describe(new)
        return new

    export_model = keras.models.clone_model(model, clone_function=clone)
    for name, factor in scale_producers.items():
        _scale_output(export_model.get_layer(name), factor)
    with tempfile.TemporaryDirectory() as saved_model:
        # Quiet where Keras has the option (Model.export's verbose came with Keras 3.6).
        quiet = {"verbose": False} if "verbose" in inspect.signature(export_model.export).parameters else {}
        export_model.export(saved_model, format="tf_saved_model", **quiet)
        flatbuffer = _convert(tf.lite.TFLiteConverter.from_saved_model(saved_model), model, quantize,
                              io_dtype, batches)
    graph = inspect_tflite(flatbuffer)
    layer_names = _layer_names(model)
    if int8:
        bad = _non_integer_ops(graph)
        if bad:
            op = bad[0]
            tensor = (op["outputs"] or op["inputs"])[0]
            name = _layer_of(tensor["name"], layer_names)
            where = f"layer {name!r} ({type(_find(model, name)).__name__})" if name else "a layer"
            raise ValueError(f"{where} does not convert to integer TFLite builtins: its {op['op']} op "
                             f"computes in {tensor['dtype'].lower()} (tensor {tensor['name']!r})")
    ops = collections.Counter()
    for op in graph["ops"]:
        ops[(op["op"], op["outputs"][0]["dtype"] if op["outputs"] else "-")] += 1
    activation_tensors = {}
    for name in rewritten:
        mine = [op for op in graph["ops"] if _layer_of(op["outputs"][0]["name"], [name]) == name]
        compares = [op for op in mine if op["op"] == "GREATER"]
        selects = [op for op in mine if op["op"] == "SELECT_V2"]
        if not (compares and selects):
            # The converter names each op's output after the TensorFlow name scope of its Keras layer; the
            # report's tensors and the error messages rely on it, so a converter that stops doing so is an error.
            raise RuntimeError(f"no GREATER + SELECT_V2 op of the TFLite model has a name of layer {name!r}: the "
                               "converter's tensor names no longer follow the Keras layer names, which "
                               "to_tflite needs to find each threshold's tensors")
        activation_tensors[name] = (compares[0]["inputs"][0]["name"], selects[-1]["outputs"][0]["name"])
    report = ExportReport(quantize=quantize, size_bytes=len(flatbuffer), ops=dict(ops),
                          rewritten={**split, **rewritten},
                          folded=folded, activation_tensors=activation_tensors)
    result = TFLiteExport(flatbuffer)
    result.report = report
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(flatbuffer)
    return result


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
    what = f"{len(layer.thresholds)} threshold(s) as GREATER + SELECT_V2, levels {_fmt(layer.levels)}"
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
