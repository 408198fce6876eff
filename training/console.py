"""``once_each_on_stderr``: TensorFlow's start-up log lines, once each.

TensorFlow's shared libraries each log their start-up lines (oneDNN's "custom
operations are on", absl's "All log messages before absl::InitializeLog()...")
to file descriptor 2, from C++, before ``TF_CPP_MIN_LOG_LEVEL`` applies: two
libraries, each line twice. Inside the block, file descriptor 2 goes through a
pipe that drops a log line repeating an earlier one; every other line (a
traceback, say) passes unchanged. No TensorFlow import here.
"""

import contextlib
import os
import re
import sys
import threading

# absl's "I0000 00:00:1700000000.123456   12345 port.cc:153] message": compared by file and message.
_ABSL_LINE = re.compile(rb"^[IWEF]\d{4} [\d:.]+\s+\d+ ([^\]\s]+\] .*)$")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _key(line):
    """What makes a log line a repeat (without its time and thread), or None for a line always passed."""
    text = line.rstrip(b"\r\n")
    if text == _ABSL_PREAMBLE:
        return text
    match = _ABSL_LINE.match(text)
    return match.group(1) if match else None


def _forward(read_fd, write_fd):
    seen, pending = set(), b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                key = _key(line)
                if key is None or key not in seen:
                    seen.add(key)
                    os.write(write_fd, line + b"\n")
    if pending:
        os.write(write_fd, pending)


@contextlib.contextmanager
def once_each_on_stderr():
    """Within the block, a log line written to file descriptor 2 that repeats an earlier one is dropped."""
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, original), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the forwarder reads to its end
        forwarder.join()
        os.close(original)
