"""The API reference (docs/api/*.md) renders every public module of keras_ftprop and models."""

import inspect
import os
import pkgutil
import re

import keras_ftprop
import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rendered_objects():
    api = os.path.join(ROOT, "docs", "api")
    text = "".join(open(os.path.join(api, name)).read() for name in sorted(os.listdir(api)) if name.endswith(".md"))
    return set(re.findall(r"^::: ([\w.]+)", text, re.MULTILINE))


def test_every_public_module_of_keras_ftprop_is_rendered():
    rendered = _rendered_objects()
    for name in keras_ftprop.__all__:
        obj = getattr(keras_ftprop, name)
        if name == "__version__":
            continue
        module = obj.__name__ if inspect.ismodule(obj) else obj.__module__
        assert module in rendered, f"keras_ftprop.{name} ({module}) has no page in docs/api"


def test_every_module_of_models_is_rendered():
    rendered = _rendered_objects()
    submodules = [info.name for info in pkgutil.iter_modules(models.__path__)]
    assert "registry" in submodules
    for name in submodules:
        assert f"models.{name}" in rendered, f"models.{name} has no page in docs/api"
