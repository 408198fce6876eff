"""Reading a TFLite flatbuffer: its operators and tensors, and which Keras layer a tensor comes from.

The only module that knows how the converter names things: it names each op's output tensor after the
TensorFlow name scope of its Keras layer (``<model>/<layer>_1/...``), and its errors likewise.
"""

from __future__ import annotations

import re

try:  # an optional dependency (the deploy extra), needed only to read a model
    from ai_edge_litert import schema_py_generated as _SCHEMA
except ImportError:  # pragma: no cover
    _SCHEMA = None

_INTEGER_DTYPES = {"INT8", "INT32", "BOOL"}


def _schema():
    if _SCHEMA is None:  # pragma: no cover
        raise ImportError("reading TFLite models needs ai-edge-litert: pip install ai-edge-litert")
    return _SCHEMA


def _enum_names(enum):
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def inspect_tflite(flatbuffer):
    """The operators of a TFLite model: {"ops": [{op, inputs, outputs}], "inputs": [...], "outputs": [...]},
    each tensor a dict {index, name, dtype, scale, zero_point} (scale and zero point lists, or None)."""
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


def non_integer_ops(graph):
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


def layer_of(name, layer_names):
    """The model layer whose name is a path segment of ``name`` (a TFLite tensor name or a converter message;
    None if none).

    TensorFlow's name scopes may add ``_1``, ``_2``, ... to a layer's name.
    """
    segments = set(re.split(r"[^\w.-]+", name))
    hits = [layer for layer in layer_names
            if any(re.fullmatch(rf"{re.escape(layer)}(_\d+)?", segment) for segment in segments)]
    return max(hits, key=len) if hits else None


def _ops_of(graph, layer):
    """The ops whose output tensor is named after ``layer`` (an older converter also names the next layer's
    RESHAPE after a layer's ops: those are left out)."""
    return [op for op in graph["ops"]
            if op["op"] != "RESHAPE" and layer_of(op["outputs"][0]["name"], [layer]) == layer]


def kernel_scales(graph, layer):
    """The weight scales (one per tensor or per output channel) of the FULLY_CONNECTED or CONV_2D op of
    ``layer``, found by its weights' name or, where the converter names neither the weights nor the output after
    the layer (its output may carry the model output's name), as the op that computes the model's output;
    None if there is none."""
    linear = [op for op in graph["ops"] if op["op"] in ("FULLY_CONNECTED", "CONV_2D") and len(op["inputs"]) > 1]
    for op in linear:
        if layer_of(op["inputs"][1]["name"], [layer]) == layer:
            return op["inputs"][1]["scale"]
    producers = {t["index"]: op for op in graph["ops"] for t in op["outputs"]}
    op = producers.get(graph["outputs"][0]["index"])
    if op is not None and op["op"] == "DEQUANTIZE":
        op = producers.get(op["inputs"][0]["index"])
    return op["inputs"][1]["scale"] if op is not None and op in linear else None


def activation_tensors(graph, threshold, fused_layers=None):
    """(input tensor name or None, output tensor name) of layer ``threshold`` in ``graph``.

    ``fused_layers``: the export layers that compute a fused threshold, from its producer on: its output is
    the output of the last op of the last of them with ops, and its input the int32 accumulator (None).
    Otherwise the input of its first GREATER and the output of its last SELECT_V2, or the input of its
    DEPTHWISE_CONV_2D (a requantized compare) and the output of its last op.

    Raises:
      RuntimeError: no op is named after the layer (the converter's tensor names no longer follow the Keras
        layer names).
    """
    if fused_layers is not None:
        found = [ops[-1] for ops in (_ops_of(graph, layer) for layer in fused_layers) if ops]
        if found:
            return None, found[-1]["outputs"][0]["name"]
    else:
        mine = _ops_of(graph, threshold)
        compares = [op for op in mine if op["op"] == "GREATER"]
        selects = [op for op in mine if op["op"] == "SELECT_V2"]
        if compares and selects:
            return compares[0]["inputs"][0]["name"], selects[-1]["outputs"][0]["name"]
        convolutions = [op for op in mine if op["op"] == "DEPTHWISE_CONV_2D"]
        if convolutions:  # compared by a requantization
            return convolutions[0]["inputs"][0]["name"], mine[-1]["outputs"][0]["name"]
    raise RuntimeError(f"no op of the TFLite model has a name of layer {threshold!r}: the converter's tensor "
                       "names no longer follow the Keras layer names, which to_tflite needs to find each "
                       "threshold's tensors")
