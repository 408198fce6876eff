"""TensorFlow Lite Micro: an int8 flatbuffer as a C array, its arena measured, and run as a microcontroller would.

    flatbuffer = deploy.to_tflite(model, x_train[:500], io_dtype="int8")
    micro.write_c_array(flatbuffer, "model_data")        # model_data.h, model_data.cc (as TFLM's examples)
    micro.arena_bytes(flatbuffer)                         # the arena TFLM's recording allocator uses
    micro.run(flatbuffer, images)                         # outputs of TFLM's reference kernels

``arena_bytes`` and ``run`` need the ``tflite-micro`` package (the ``deploy`` extra).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

import numpy as np

__all__ = ["c_array", "write_c_array", "arena_bytes", "run"]

_BYTES_PER_LINE = 12
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


def _bytes(flatbuffer):
    data = bytes(flatbuffer)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (its file identifier, bytes 4-7, is not 'TFL3')")
    return data


def c_array(flatbuffer, variable="g_model"):
    """(header, source) C++ texts that embed ``flatbuffer`` as ``alignas(16) const unsigned char variable[]``
    and its length ``variable_len``, as TensorFlow Lite Micro's examples do."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
        raise ValueError(f"variable must be a C identifier, got {variable!r}")
    data = _bytes(flatbuffer)
    guard = f"{variable.upper()}_H_"
    header = (f"#ifndef {guard}\n#define {guard}\n\n"
              f"extern const unsigned char {variable}[];\nextern const unsigned int {variable}_len;\n\n"
              f"#endif  // {guard}\n")
    lines = [", ".join(f"0x{byte:02x}" for byte in data[i:i + _BYTES_PER_LINE])
             for i in range(0, len(data), _BYTES_PER_LINE)]
    source = (f"// A TFLite flatbuffer of {len(data):,} bytes; 16-byte aligned, as TFLite Micro reads it in place.\n"
              f"alignas(16) const unsigned char {variable}[] = {{\n    " + ",\n    ".join(lines) + "\n};\n"
              f"const unsigned int {variable}_len = {len(data)};\n")
    return header, source


def write_c_array(flatbuffer, path, variable="g_model"):
    """Write ``path.h`` and ``path.cc`` (``c_array``); the .cc includes the .h. Returns the two paths."""
    header, source = c_array(flatbuffer, variable)
    header_path, source_path = f"{path}.h", f"{path}.cc"
    with open(header_path, "w") as f:
        f.write(header)
    with open(source_path, "w") as f:
        f.write(f'#include "{os.path.basename(header_path)}"\n\n' + source)
    return header_path, source_path


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as error:  # pragma: no cover - the deploy and test extras install it
        raise ImportError("running TFLite Micro needs the tflite-micro package: "
                          "pip install 'keras-ftprop[deploy]'") from error
    return runtime


@contextlib.contextmanager
def _captured_output():
    """What the process writes to file descriptors 1 and 2 (TFLM's C++ prints there), as a list that receives
    the text when the block ends."""
    text = []
    with tempfile.TemporaryFile(mode="w+") as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield text
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.append(sink.read())


def arena_bytes(flatbuffer, max_arena=1 << 24):
    """Bytes of the arena that TFLM's recording allocator uses for ``flatbuffer`` (one inference).

    Raises:
      ImportError: the ``tflite-micro`` package is not installed.
      RuntimeError: TFLite Micro cannot plan the model in ``max_arena`` bytes (an op it lacks, a larger
        arena); the message holds what it printed.
    """
    runtime = _runtime()
    data = _bytes(flatbuffer)
    with _captured_output() as text:
        try:
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=max_arena)
            interpreter.print_allocations()
        except RuntimeError as error:
            failure = error
        else:
            failure = None
    if failure is not None:
        printed = " ".join(text[0].split())[:300]
        raise RuntimeError(f"TFLite Micro could not allocate the model: {failure}"
                           + (f" ({printed})" if printed else "")) from failure
    match = _ARENA_TOTAL.search(text[0])
    if match is None:
        raise RuntimeError(f"TFLite Micro printed no arena total: {text[0][:200]!r}")
    return int(match.group(1))


def _output_count(interpreter):
    count = 0
    with _captured_output():  # TFLM prints "Output index ... out of range" where it raises
        while True:
            try:
                interpreter.get_output_details(count)
            except IndexError:
                return count
            count += 1


def run(flatbuffer, inputs, arena_size=None):
    """Outputs (one array per model output, examples stacked) of TFLM's kernels on ``inputs``.

    ``inputs``: an array of examples (or a list, one per model input) in the model's input dtype, leading axis
    the examples; each example is run alone, as a batch of 1. ``arena_size``: default twice ``arena_bytes``.
    """
    runtime = _runtime()
    data = _bytes(flatbuffer)
    arena_size = arena_size or 2 * arena_bytes(data)
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    count, outputs_per_example = len(inputs[0]), _output_count(interpreter)
    outputs = []
    for example in range(count):
        for index, array in enumerate(inputs):
            dtype = interpreter.get_input_details(index)["dtype"]
            value = np.asarray(array[example : example + 1])
            if value.dtype != dtype:
                raise ValueError(f"input {index} is {value.dtype}, the model takes {np.dtype(dtype).name}")
            interpreter.set_input(value, index)
        interpreter.invoke()
        outputs.append([np.array(interpreter.get_output(i)) for i in range(outputs_per_example)])
    return [np.concatenate([out[i] for out in outputs]) for i in range(len(outputs[0]))]
