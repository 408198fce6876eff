"""Running the TFLite converter on the export model; its failures, and float ops in an int8 model, name the
Keras layer they come from."""

from __future__ import annotations

import inspect
import re
import tempfile

import keras
import tensorflow as tf

from keras_ftprop.deploy.flatbuffer import layer_of, non_integer_ops
from keras_ftprop.deploy.graph import find_layer, layer_names


def convert(export_model, model, quantize, io_dtype, batches):
    """The flatbuffer of ``export_model`` (through a SavedModel); errors name the layer of ``model``.

    ``quantize="int8"``: full-integer, calibrated on ``batches``; ``io_dtype="int8"``: int8 input and output,
    and a static batch of 1 (with a fixed input shape every shape fixed, as TFLite Micro plans its arena; no
    SHAPE, STRIDED_SLICE and PACK computing a reshape's batch at run time). Otherwise the batch stays dynamic
    (``resize_tensor_input``).
    """
    with tempfile.TemporaryDirectory() as saved_model:
        write_saved_model(export_model, saved_model, static_batch=io_dtype == "int8" and quantize == "int8")
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([b] for b in batches)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io_dtype == "int8":
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        try:
            return converter.convert()
        except Exception as error:  # the converter's own exception types are not public
            message = str(error)
            name = layer_of(message, layer_names(model))
            where = f"layer {name!r} ({type(find_layer(model, name)).__name__})" if name else "a layer of the model"
            found = re.search(r"'tf\.\w+' op [^\n]*", message)
            detail = found.group(0) if found else message.strip().splitlines()[0][:300]
            raise ValueError(f"{where} does not convert to {quantize} TFLite builtins: {detail}") from error


def write_saved_model(model, path, static_batch):
    """``model`` as a SavedModel at ``path`` whose one signature calls it in inference mode, with batch size 1
    if ``static_batch``."""
    parameters = inspect.signature(model.export).parameters
    # Quiet where Keras has the option (Model.export's verbose came with Keras 3.6, input_signature too).
    quiet = {"verbose": False} if "verbose" in parameters else {}
    if not static_batch:
        model.export(path, format="tf_saved_model", **quiet)
    elif "input_signature" in parameters:
        model.export(path, format="tf_saved_model", input_signature=static_batch_signature(model), **quiet)
    else:
        archive = keras.export.ExportArchive()
        archive.track(model)
        signature = keras.tree.map_structure(lambda spec: tf.TensorSpec(spec.shape, spec.dtype),
                                             static_batch_signature(model))
        archive.add_endpoint("serve", lambda inputs: model(inputs, training=False), input_signature=signature)
        archive.write_out(path)


def static_batch_signature(model):
    """``Model.export``'s input signature of the functional ``model`` with batch size 1: one argument, the
    structure of its inputs, each ``(1, *shape[1:])`` (a dimension the model leaves open stays open)."""
    return [keras.tree.map_structure(lambda tensor: keras.InputSpec(shape=(1, *tensor.shape[1:]), dtype=tensor.dtype),
                                     model.input)]


def check_integer(graph, model):
    """A ValueError naming the layer of the first op of an int8 model (``graph``, ``inspect_tflite``'s) that
    does not compute in integers."""
    bad = non_integer_ops(graph)
    if bad:
        op = bad[0]
        tensor = (op["outputs"] or op["inputs"])[0]
        name = layer_of(tensor["name"], layer_names(model))
        where = f"layer {name!r} ({type(find_layer(model, name)).__name__})" if name else "a layer"
        raise ValueError(f"{where} does not convert to integer TFLite builtins: its {op['op']} op "
                         f"computes in {tensor['dtype'].lower()} (tensor {tensor['name']!r})")
