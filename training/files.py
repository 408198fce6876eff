"""The files of a run directory, written so that a kill never corrupts them.

Everything is written under a temporary name in the same directory and then
renamed over the target (``os.replace`` is atomic on POSIX file systems), so
a reader sees the old file or the new one, never half of one.

The metrics file (``metrics.csv``, one row per finished epoch, written by
``training.callbacks.MetricsLogger``, Keras's ``CSVLogger`` kept to the
file's columns) is the record of a run: ``trim_metrics`` drops the rows of
epochs a resumed run is about to redo, so that after any number of kills the
file lists each epoch once, in order. A value an epoch did not log is
``NA``, as CSVLogger writes it; readers skip it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile

import keras

METRICS_FILE = "metrics.csv"
SETTINGS_FILE = "settings.json"
FLAGS_FILE = "flags.txt"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
FINAL_MODEL = "final.keras"
EXPORT_DIR = "export"
MISSING = "NA"  # CSVLogger's cell for a key an epoch did not log


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary(path, suffix=""):
    """An empty file beside ``path``, with the mode a plain ``open`` would give."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix + ".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    tmp = _temporary(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def without_optimizer(model):
    """``model`` uncompiled: a functional one as a new ``keras.Model`` on the same layers (no copy of the
    weights), a ``Sequential`` one cloned with its weights.

    Saved, it writes the architecture and the weights but no optimizer state: Keras 3's ``.keras`` format has no
    ``include_optimizer=False``, and saves the optimizer of a compiled model.
    """
    if isinstance(model, keras.Sequential):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy
    try:
        inputs, outputs = model.input, model.output
    except (AttributeError, ValueError):
        raise TypeError(f"a functional or Sequential model is needed, got {type(model).__name__}") from None
    return keras.Model(inputs, outputs, name=model.name)


def atomic_save_model(model, path, include_optimizer=True):
    """``model.save(path)`` (a ``.keras`` file), atomically; ``include_optimizer=False``: architecture and
    weights alone (``without_optimizer``), loaded uncompiled."""
    tmp = _temporary(path, suffix=".keras")
    # Keras insists on the .keras extension; the temporary name ends with it.
    target = tmp[: -len(".tmp")]
    try:
        (model if include_optimizer else without_optimizer(model)).save(target)
        os.replace(target, path)
    finally:
        for leftover in (tmp, target):
            if os.path.exists(leftover):
                os.remove(leftover)


def atomic_copy(source, path):
    """Copy the file ``source`` to ``path`` atomically."""
    tmp = _temporary(path)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _replace_dir(path, write):
    """Fill a temporary directory beside ``path`` with ``write(tmp)``, then swap it in."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    old = None
    try:
        write(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


def atomic_export(model, path, verbose=False):
    """``model.export(path)`` (a SavedModel directory), replacing any old one whole.

    The old directory is moved aside and the new one renamed in: a kill
    leaves either of them under ``path`` (or, for an instant, none), never a
    mixture.
    """
    def export(tmp):
        try:
            model.export(tmp, verbose=verbose)
        except TypeError:  # Keras < 3.6: no verbose argument
            model.export(tmp)

    _replace_dir(path, export)


def _complete_rows(text):
    """(header, rows) of CSV ``text``; rows cut short by a kill are dropped."""
    header = next(csv.reader(io.StringIO(text)), None)
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        if None in raw or any(value in (None, "") for value in raw.values()):
            continue
        try:
            epoch = int(float(raw["epoch"]))
        except (KeyError, ValueError):
            continue
        rows.append((epoch, raw))
    return header, rows


def metrics_header(path):
    """The column names of a metrics CSV (``epoch`` first), or None if it is missing or empty."""
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)


def widen_metrics(path, columns):
    """Append ``columns`` to the metrics CSV's header; its rows get ``NA`` in them. Atomic."""
    with open(path, newline="") as f:
        original = f.read()
    header, rows = _complete_rows(original)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header + list(columns), restval=MISSING)
    writer.writeheader()
    writer.writerows(raw for _, raw in rows)
    atomic_write_text(path, out.getvalue())


def read_metrics(path):
    """The rows of a metrics CSV as dicts (values as float, ``epoch`` as int), by epoch.

    Rows that cannot be parsed (a line cut short by a kill) are dropped; an
    ``NA`` cell (a value that epoch did not log) leaves its key out of the row.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        _, rows = _complete_rows(f.read())
    out = []
    for epoch, raw in rows:
        try:
            row = {key: float(value) for key, value in raw.items() if value != MISSING}
        except ValueError:
            continue
        row["epoch"] = epoch
        out.append(row)
    return out


def trim_metrics(path, epochs_done):
    """Keep one row per epoch ``< epochs_done`` (0-based), in order; drop the rest.

    Run before a resumed ``fit``: the rows of the epochs it redoes (and any
    line cut short by a kill) go. The file is rewritten atomically, and only
    when something changes. Returns the number of rows kept.
    """
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        original = f.read()
    header, rows = _complete_rows(original)
    kept = {}
    for epoch, raw in rows:
        if epoch < epochs_done:
            kept[epoch] = raw  # a repeated epoch keeps its latest row
    if kept:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header)  # excel dialect, as CSVLogger
        writer.writeheader()
        for epoch in sorted(kept):
            writer.writerow(kept[epoch])
        text = out.getvalue()
    else:
        text = ""  # CSVLogger writes a fresh header into an empty file
    if text != original:
        atomic_write_text(path, text)
    return len(kept)


def write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
