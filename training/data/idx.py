"""``idx:DIR``: MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), gzipped or not.

Neither TensorFlow, Keras nor tensorflow-datasets reads a local IDX file
(their MNIST loaders download), so the parser is here: a 4-byte header and numpy.
"""

from __future__ import annotations

import gzip
import os
import re

import numpy as np

from training.data.base import DatasetError, channel_stats
from training.data.pipelines import in_memory

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_NAME = re.compile(
    r"^(?P<prefix>.*?)(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]"
    r"idx(?P<ndim>[13])-ubyte(?:\.gz)?$")


def read_idx(path) -> np.ndarray:
    """Parses one IDX file (gzipped or not) into a numpy array.

    Layout: bytes 0-1 zero, byte 2 the element type (0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of
    dimensions d, then d big-endian uint32 sizes, then the big-endian data.
    Raises DatasetError when the header or the length do not match.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({e})") from e
    name = os.path.basename(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{name}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise DatasetError(f"{name}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{name}: IDX header truncated or with 0 dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{name}: IDX dims {dims} need {expected} bytes, file has {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'})")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def find_idx_files(directory):
    """{'train-images': path, 'train-labels': ..., 't10k-images': ..., 't10k-labels': ...} in directory."""
    if not os.path.isdir(directory):
        raise DatasetError(f"idx: directory not found: {directory}")
    groups = {}
    for entry in sorted(os.listdir(directory)):
        match = _IDX_NAME.match(entry)
        if match and (match["kind"] == "images") == (match["ndim"] == "3"):
            split = "train" if match["split"] == "train" else "t10k"
            groups.setdefault(match["prefix"], {}).setdefault(
                f"{split}-{match['kind']}", os.path.join(directory, entry))
    needed = ("train-images", "train-labels", "t10k-images", "t10k-labels")
    complete = {p: g for p, g in groups.items() if all(k in g for k in needed)}
    if len(complete) > 1:
        raise DatasetError(
            f"idx: {directory} holds several IDX sets ({', '.join(repr(p) for p in complete)}); "
            "put one set per directory")
    if not complete:
        found = groups.get("", next(iter(groups.values()), {}))
        missing = [k for k in needed if k not in found]
        names = ", ".join(f"{k.replace('images', 'images-idx3').replace('labels', 'labels-idx1')}-ubyte[.gz]"
                          for k in missing)
        raise DatasetError(f"idx: missing {names} in {directory}")
    return next(iter(complete.values()))


def _idx_pair(images_path, labels_path):
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{os.path.basename(images_path)}: expected uint8 images (N, rows, cols), "
            f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{os.path.basename(labels_path)}: expected integer labels (N,), "
            f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{os.path.basename(images_path)} has {len(images)} images but "
            f"{os.path.basename(labels_path)} has {len(labels)} labels")
    if len(images) == 0:
        raise DatasetError(f"{os.path.basename(images_path)}: no images")
    if labels.min() < 0:
        raise DatasetError(f"{os.path.basename(labels_path)}: negative label {labels.min()}")
    return images, labels.astype(np.int32)


def load(name, directory, **opts):
    files = find_idx_files(directory)
    x_train, y_train = _idx_pair(files["train-images"], files["train-labels"])
    x_eval, y_eval = _idx_pair(files["t10k-images"], files["t10k-labels"])
    if x_train.shape[1:] != x_eval.shape[1:]:
        raise DatasetError(
            f"idx: train images are {x_train.shape[1:]} but test images are {x_eval.shape[1:]}")
    num_classes = int(max(y_train.max(), y_eval.max())) + 1
    return in_memory(name, (x_train, y_train, x_eval, y_eval), num_classes=num_classes,
                      class_names=None, stats=channel_stats(x_train), **opts)
