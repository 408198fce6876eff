"""Run code as a user who installed only ``keras_ftprop`` would: in a fresh interpreter whose ``sys.path``
holds a copy of the package and neither this checkout nor its ``models``/``training``."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np

import keras_ftprop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_package_alone(code, tmp_path):
    """Runs ``code`` there (its working directory is a fresh one under ``tmp_path``); returns its stdout."""
    site, work = tmp_path / "package_alone_site", tmp_path / "package_alone_work"
    if not site.exists():
        shutil.copytree(os.path.dirname(keras_ftprop.__file__), site / "keras_ftprop",
                        ignore=shutil.ignore_patterns("__pycache__"))
    work.mkdir(exist_ok=True)
    script = work / "main.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, os, sys
        assert {ROOT!r} not in [os.path.abspath(p) for p in sys.path], sys.path
        assert all(importlib.util.find_spec(name) is None for name in ("models", "training")), "a checkout is visible"
        assert importlib.util.find_spec("keras_ftprop").origin.startswith({str(site)!r})
        """) + textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def predict_with_package_alone(cases, tmp_path, load="import keras, keras_ftprop\n"
                                                    "model = keras.saving.load_model({path!r})"):
    """``model.predict(images)`` for each ``(path, images)`` of ``cases``, ``model`` loaded there by ``load``
    (formatted with the ``path``)."""
    work = tmp_path / "package_alone_data"
    work.mkdir(exist_ok=True)
    code, outputs = ["import numpy as np"], []
    for i, (path, images) in enumerate(cases):
        np.save(work / f"in{i}.npy", images)
        outputs.append(work / f"out{i}.npy")
        code += [load.format(path=str(path)),
                 f"np.save({str(outputs[-1])!r}, model.predict(np.load({str(work / f'in{i}.npy')!r}), verbose=0))"]
    run_with_package_alone("\n".join(code) + "\n", tmp_path)
    return [np.load(out) for out in outputs]
