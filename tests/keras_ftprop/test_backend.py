"""keras_ftprop/_backend.py: another Keras backend is refused in one line, before Keras loads."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_with(**env):
    environment = {**os.environ, "PYTHONPATH": ROOT, **env}
    program = "import sys, keras_ftprop; print('keras' in sys.modules)"
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          env=environment, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_another_backend_is_an_import_error_that_says_so(backend):
    result = import_with(KERAS_BACKEND=backend)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: keras_ftprop needs Keras's TensorFlow backend, but KERAS_BACKEND "
                    f"selects '{backend}': set KERAS_BACKEND=tensorflow")
    assert "keras/src" not in result.stderr  # raised before Keras was imported


def test_tensorflow_backend_imports():
    result = import_with(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
