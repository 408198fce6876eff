"""Runs the Python blocks of README.md and docs/ (pytest-markdown-docs) as tests.

Each block runs in a fresh namespace and defines what it uses, from a
temporary working directory (so files it writes land there), with Keras's
random seed fixed. The blocks of the pages in `SLOW_PAGES` read a finished
`train.py` run, made by the command the page shows, and run with
`pytest -m slow`.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))

# docs/training.md: the run its blocks load, made by the command the page shows.
DEMO_RUN = ["train.py", "--model=convnet4", "--epochs=1", "--steps_per_epoch=2", "--eval_steps=1",
            "--model_dir=runs/demo"]

SLOW_PAGES = {"training.md"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("markdown-docs") is not None and item.path.name in SLOW_PAGES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def _demo_run(tmp_path_factory):
    """The directory holding runs/demo, trained once per session by the command docs/training.md shows."""
    with open(os.path.join(ROOT, "docs", "training.md")) as page:
        assert " ".join(["python", *DEMO_RUN]) in page.read(), "docs/training.md no longer shows the demo run"
    directory = tmp_path_factory.mktemp("train_py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, os.path.join(ROOT, DEMO_RUN[0]), *DEMO_RUN[1:]], cwd=directory, env=env,
                   check=True, capture_output=True)
    return directory


@pytest.fixture(autouse=True)
def _markdown_example_sandbox(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("markdown-docs") is None:
        yield
        return
    import keras

    page = request.node.path.name
    monkeypatch.chdir(request.getfixturevalue("_demo_run") if page in SLOW_PAGES else tmp_path)
    keras.utils.set_random_seed(0)
    yield
