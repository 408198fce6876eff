"""``to_tflite``: the export, from a Keras model to a TFLite flatbuffer with its report."""

from __future__ import annotations

import os

from keras_ftprop.deploy.calibration import representative_batches
from keras_ftprop.deploy.convert import check_integer, convert
from keras_ftprop.deploy.flatbuffer import inspect_tflite
from keras_ftprop.deploy.functional import check_model, functional, unfused
from keras_ftprop.deploy.plan import plan
from keras_ftprop.deploy.qat import plain_model
from keras_ftprop.deploy.quantized_layers import is_quantization_aware
from keras_ftprop.deploy.report import TFLiteExport, report
from keras_ftprop.deploy.rewrite import export_model

QUANTIZE_CHOICES = ("int8", "float")


def to_tflite(model, representative_data=None, quantize="int8", path=None, io_dtype="float32",
              threshold_input="pinned", calibration_samples=500, fuse_thresholds=True, exact_input_staircases=True):
    """Convert ``model`` to TFLite; returns the flatbuffer
    ([`TFLiteExport`][keras_ftprop.deploy.TFLiteExport], ``bytes`` with ``.report``: flash bytes, TFLite
    Micro arena, ops, what each threshold became).

    Args:
      model: functional or Sequential Keras model (threshold layers applied as layers).
      representative_data: calibration inputs for int8: an array (N, ...), a ``tf.data.Dataset``
        of x or (x, y) batches, or an iterable of batches; a slice of the training data.
      quantize: "int8" (full-integer: every op an int8 builtin) or "float".
      path: also write the flatbuffer there.
      io_dtype: "float32" or "int8" input and output of the int8 model; "int8" also fixes the batch at 1
        (every shape static if the input's is, as TensorFlow Lite Micro plans its arena), "float32" keeps it
        dynamic.
      threshold_input: "pinned" (threshold inputs on the thresholds' own range) or "calibrated".
      calibration_samples: at most this many examples of ``representative_data`` are used.
      fuse_thresholds: int8 only: compute each threshold that can be fused as its convolution's (dense
        layer's) requantization, and every other one on a pinned 4-D input as a 1x1 depthwise
        requantization (see [`keras_ftprop.deploy`][keras_ftprop.deploy]); False keeps GREATER + SELECT_V2
        everywhere.
      exact_input_staircases: int8 only: a staircase whose producer reads the image (convnet8's ``conv0``)
        is fused into that producer's requantization, placed so that every runtime decides alike
        (``keras_ftprop.deploy.input_staircases``; a channel it cannot place leaves one copy of the producer
        per threshold, summed by ADD, exact as well, for n times that convolution's cost). False: its input
        requantized, then compared (a unit at a requantization tie may differ between runtimes). A
        quantization-aware copy decides it as it was made (``quantization_aware``'s own
        ``exact_input_staircases``).

    Raises:
      ValueError: unknown option; a layer that does not convert to int8 builtins (named); a
        quantization-aware copy whose recorded thresholds the export cannot follow.
      RuntimeError: the converter's tensor names no longer name the Keras layers, so the report cannot find
        a threshold's tensors.
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
    batches = list(representative_batches(representative_data, calibration_samples)) if int8 else []
    export_plan = plan(model, recorded, batches, int8, threshold_input == "pinned", fuse_thresholds and int8,
                       staircases=exact_input_staircases)
    converted, rewritten = export_model(model, export_plan, int8)
    flatbuffer = convert(converted, model, quantize, io_dtype, batches)
    graph = inspect_tflite(flatbuffer)
    if int8:
        check_integer(graph, model)
    result = TFLiteExport(flatbuffer)
    result.report = report(graph, flatbuffer, quantize, model, export_plan, rewritten, split)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(flatbuffer)
    return result


def _prepared(model):
    """(the functional copy the export converts, QAT records {threshold: (max_abs, scaled, fused)}, split)."""
    check_model(model)
    model = functional(model)  # its layers, as a functional graph
    recorded = {}  # a quantization-aware model's thresholds, fixed in the copy
    if is_quantization_aware(model):
        model, recorded = plain_model(model)
    model, split = unfused(model)  # each layer called once from here on
    return model, recorded, split
