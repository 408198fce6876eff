"""Input pipelines of ``train.py``, one module per source; the recipes and their design: docs/data.md.

``load(spec, batch_size=...)`` returns ``(train, eval, info)``: two batched
``tf.data.Dataset`` of ``(images float32 (N, H, W, 3), labels int32 (N,))``
and a ``DatasetInfo``. ``spec`` is ``digits`` (``digits.py``), ``idx:DIR``
(``idx.py``), ``folder:PATH`` (``folder.py``) or a tensorflow-datasets name
(``tfds.py``); the transforms (``transforms.py``) and pipelines
(``pipelines.py``) of the two recipes are shared by all of them.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from training.data import digits, folder, idx, tfds
from training.data.base import (
    AUTOTUNE,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_CROP,
    IMAGENET_MEAN,
    IMAGENET_RESIZE,
    IMAGENET_STD,
    SMALL_MAX_SIDE,
    DatasetError,
    DatasetInfo,
    Recipe,
    channel_stats,
    large_recipe,
    small_recipe,
    upsampling,
)
from training.data.digits import digits_split
from training.data.folder import IMAGE_EXTENSIONS, probe_files, readable_files, scan_folder
from training.data.idx import find_idx_files, read_idx
from training.data.pipelines import large_pipelines, small_pipelines
from training.data.transforms import (
    crop_window,
    decode_rgb,
    decode_shrunk,
    normalize,
    normalize_rgb,
    pad_random_crop,
    random_flip,
    resize_batch,
    resize_normalize,
)

__all__ = [
    "AUTOTUNE",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DatasetError",
    "DatasetInfo",
    "IMAGENET_CROP",
    "IMAGENET_MEAN",
    "IMAGENET_RESIZE",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "Recipe",
    "SMALL_MAX_SIDE",
    "channel_stats",
    "crop_window",
    "dataset_names",
    "decode_rgb",
    "decode_shrunk",
    "digits_split",
    "find_idx_files",
    "large_pipelines",
    "large_recipe",
    "load",
    "normalize",
    "normalize_rgb",
    "pad_random_crop",
    "probe_files",
    "random_flip",
    "read_idx",
    "readable_files",
    "resize_batch",
    "resize_normalize",
    "scan_folder",
    "small_pipelines",
    "small_recipe",
    "upsampling",
]


def dataset_names() -> tuple:
    """The documented ``--dataset`` choices (for ``--help``)."""
    return ("digits", "<tfds name>", "folder:PATH", "idx:DIR")


def load(
    spec: str,
    *,
    batch_size: int,
    image_size: int | None = None,
    data_dir=None,
    manual_dir=None,
    seed: int | None = None,
    min_image_size: int | None = None,
    model_image_size: int | None = None,
):
    """Returns (train, eval, info) for ``spec`` (docs/data.md).

    Images are resized to ``image_size``, else: small ones (native side up to
    ``SMALL_MAX_SIDE``) keep their side, at least ``min_image_size``; large ones
    (a folder, ImageNet) are cropped to ``model_image_size`` (the network's
    own input side; 224 if None), at least ``min_image_size``.

    train: shuffled (seeded), augmented, batched with drop_remainder=True,
    prefetched, NOT repeated. eval: deterministic, batched (remainder kept),
    prefetched. Elements are (images float32 NHWC, labels int32 (N,)).
    ``batch_size`` is the global batch size.
    """
    _check_positive("batch_size", batch_size)
    if image_size is not None:
        _check_positive("image_size", image_size)
    for name, value in (("min_image_size", min_image_size), ("model_image_size", model_image_size)):
        if value is not None:
            _check_positive(name, value)
    spec = str(spec).strip()
    opts = dict(batch_size=int(batch_size), image_size=image_size, seed=seed,
                min_image_size=min_image_size)
    if spec == "digits":
        train, evaluation, info = digits.load(**opts)
    elif spec.startswith("folder:"):
        train, evaluation, info = folder.load(spec, _spec_path(spec, "folder:"), model_image_size=model_image_size,
                                              **opts)
    elif spec.startswith("idx:"):
        train, evaluation, info = idx.load(spec, _spec_path(spec, "idx:"), **opts)
    else:
        train, evaluation, info = tfds.load(spec, data_dir=data_dir, manual_dir=manual_dir,
                                            model_image_size=model_image_size, **opts)
    logging.info(
        "dataset %s: %s train / %s eval examples, %d classes, images %s%s",
        info.name, info.train_examples, info.eval_examples, info.num_classes,
        "x".join(str(d) for d in info.image_shape),
        f", {info.skipped_files} unreadable files skipped" if info.skipped_files else "",
    )
    return train, evaluation, info


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DatasetError(f"{name} must be a positive integer, got {value!r}")


def _spec_path(spec, prefix):
    path = spec[len(prefix):]
    if not path:
        raise DatasetError(f"'{spec}': missing path after '{prefix}'")
    return os.path.expanduser(path)
