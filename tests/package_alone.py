"""Load ``.keras`` files as a user who installed only ``keras_ftprop`` would: in a fresh interpreter whose
``sys.path`` holds a copy of the package and neither this checkout nor its ``models``/``training``."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np

import keras_ftprop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def predict_with_package_alone(cases, tmp_path):
    """``keras.saving.load_model(path).predict(images)`` for each ``(path, images)`` of ``cases``, in that
    interpreter."""
    site, work = tmp_path / "package_alone_site", tmp_path / "package_alone_work"
    if not site.exists():
        shutil.copytree(os.path.dirname(keras_ftprop.__file__), site / "keras_ftprop",
                        ignore=shutil.ignore_patterns("__pycache__"))
    work.mkdir(exist_ok=True)
    paths = [str(path) for path, _ in cases]
    inputs = [str(work / f"in{i}.npy") for i in range(len(cases))]
    outputs = [str(work / f"out{i}.npy") for i in range(len(cases))]
    for (_, images), name in zip(cases, inputs):
        np.save(name, images)
    script = work / "load.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, os, sys
        import numpy as np, keras
        assert {ROOT!r} not in [os.path.abspath(p) for p in sys.path], sys.path
        assert all(importlib.util.find_spec(name) is None for name in ("models", "training")), "a checkout is visible"
        import keras_ftprop
        assert keras_ftprop.__file__.startswith({str(site)!r}), keras_ftprop.__file__
        for path, inp, out in zip({paths!r}, {inputs!r}, {outputs!r}):
            np.save(out, keras.saving.load_model(path).predict(np.load(inp), verbose=0))
        """))
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return [np.load(out) for out in outputs]
