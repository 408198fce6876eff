"""Runs the Python blocks of README.md and docs/*.md (pytest-markdown-docs) in a scratch directory.

Each block runs in a fresh namespace, from a temporary working directory (so
files it writes land there) and with Keras's random seed fixed.
"""

import os

import pytest


@pytest.fixture(autouse=True)
def _markdown_example_sandbox(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("markdown-docs") is None:
        yield
        return
    import keras

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    keras.utils.set_random_seed(0)
    yield
