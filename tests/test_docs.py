"""The API reference (docs/api/*.md) renders every public module of keras_ftprop and models, and the
check CI runs on the built site (.ci/check_site.py) finds the faults it names."""

import importlib.util
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


def _check_site():
    """.ci/check_site.py, the check CI runs on the built site, as a module."""
    spec = importlib.util.spec_from_file_location("check_site", os.path.join(ROOT, ".ci", "check_site.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_site_passes_what_renders_as_written():
    page = ("<p>A <strong>bold</strong> word, <em>stress</em>, x = 2<sup>7</sup> and a list:</p>\n"
            "<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
            "<pre><code>def f(**kwargs): ...\nprint(a::b)\n</code></pre><p><code>2**7</code> and <code>* x</code></p>"
            "<blockquote><p>A quote.</p></blockquote>")
    assert _check_site().page_faults(page) == []


def test_check_site_finds_each_rendering_fault():
    def faults(page):
        return [fault.split(": ")[0] for fault in _check_site().page_faults(page)]

    assert faults("<p>not needed to predict)::</p>") == ["stray '::'"]
    assert faults("<p>k = 2**7 times finer</p>") == ["unbalanced bold ('**' in the text)"]
    assert faults("<p>k = 2<strong>STEP_INPUT_BITS / max at 2</strong>7 times</p>") == [
        "<strong> opens inside a word", "</strong> closes inside a word"]
    assert faults("<p>puts it on a level.\n* Staircase (n steps), level k</p>") == ["bullet run into the prose"]
    assert faults("<p>TensorFlow</p>\n<blockquote>\n<p>= 2.16 as Keras's backend.</p>\n</blockquote>") == [
        "blockquote starting with '=' (a wrapped '>=')"]


def test_check_site_finds_links_to_folders_and_to_nothing(tmp_path):
    check = _check_site()
    site = tmp_path / "site"
    for folder in ("results", "results/weight_decay", "results/weight_decay/run", "guide"):
        (site / folder).mkdir(parents=True)
    (site / "results" / "index.html").write_text("page")
    (site / "guide" / "index.html").write_text("page")
    (site / "results" / "weight_decay" / "run" / "metrics.csv").write_text("epoch\n")
    page = site / "results" / "index.html"
    fine = ('<a href="weight_decay/run/metrics.csv">csv</a> <a href="../guide/#install">guide</a> '
            '<a href="/guide/">from the root</a> <a href="#top">anchor</a> <a href="https://example.org/x">web</a>')
    assert check.link_faults(str(site), str(page), fine) == []
    broken = '<a href="weight_decay">folder</a> <a href="weight_decay/run/">folder</a> <a href="results/x">none</a>'
    assert check.link_faults(str(site), str(page), broken) == [
        "link to a folder: weight_decay", "link to a folder: weight_decay/run/", "link to nothing: results/x"]
    pages, faults = check.check_site(str(site))
    assert pages == 2 and faults == []
    page.write_text(broken)
    assert check.main(["check_site.py", str(site)]) == 1
