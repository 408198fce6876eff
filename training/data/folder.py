"""``folder:PATH``: an ImageNet-style tree ``PATH/{train,val}/<class>/*.jpg``, large-image recipe.

Files that do not decode are found by one parallel pass before training and
left out (``DatasetInfo.skipped_files``). Not tfds.ImageFolder nor
keras.utils.image_dataset_from_directory: the first reads .jpg/.jpeg/.png
only, and neither leaves out unreadable files (one stops the epoch) nor
keeps images encoded for the crop-first decoder.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from training.data.base import AUTOTUNE, DatasetError, DatasetInfo, large_recipe
from training.data.pipelines import large_pipelines
from training.data.transforms import decode_rgb, is_jpeg

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _image_files(directory):
    """Sorted image files (by extension, case-insensitive) under directory, recursively."""
    found = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files)
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return found


def _class_dirs(directory):
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _short_list(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def scan_folder(root):
    """(class_names, {split: (paths, labels)}) of ROOT/{train,val}/<class>/*; raises DatasetError."""
    if not os.path.exists(root):
        raise DatasetError(f"folder: directory not found: {root}")
    if not os.path.isdir(root):
        raise DatasetError(f"folder: not a directory: {root}")
    layout = f"expected {os.path.join(root, 'train', '<class>', '*.jpg')} and " \
             f"{os.path.join(root, 'val', '<class>', '*.jpg')}"
    if not any(True for _ in os.scandir(root)):
        raise DatasetError(f"folder: directory is empty: {root}; {layout}")
    classes = {}
    for split in ("train", "val"):
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise DatasetError(f"folder: missing {split}/ in {root}; {layout}")
        classes[split] = _class_dirs(path)
        if not classes[split]:
            raise DatasetError(f"folder: no class sub-directories in {path}; {layout}")
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        parts = ([f"only in train/: {_short_list(only_train)}"] if only_train else []) + \
                ([f"only in val/: {_short_list(only_val)}"] if only_val else [])
        raise DatasetError(f"folder: class folders of train/ and val/ differ in {root}: "
                           + "; ".join(parts))
    class_names = tuple(classes["train"])
    splits = {}
    for split in ("train", "val"):
        paths, labels = [], []
        for label, name in enumerate(class_names):
            files = _image_files(os.path.join(root, split, name))
            if not files:
                logging.warning("folder: no images in %s", os.path.join(root, split, name))
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            raise DatasetError(f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                               f"under {os.path.join(root, split)}")
        splits[split] = (paths, np.asarray(labels, np.int32))
    return class_names, splits


def _probe(index, path):
    """(index, shorter side) if the file decodes, else (-1, 0) (or an error, dropped by ignore_errors).

    JPEG: decode at 1/8 scale (DCT scaling still walks the whole stream), the
    side from its header; other formats: full decode.
    """
    contents = tf.io.read_file(path)

    def jpeg():
        decoded = tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8))[:2]
        return tf.where(tf.reduce_min(decoded) > 0, tf.image.extract_jpeg_shape(contents)[:2], 0)

    shape = tf.cond(is_jpeg(contents), jpeg, lambda: tf.shape(decode_rgb(contents))[:2])
    side = tf.cast(tf.reduce_min(shape), tf.int64)
    return tf.where(side > 0, index, tf.constant(-1, tf.int64)), side


def _path_tensor(paths):
    """File names as a string tensor of their OS bytes (any name encoding survives)."""
    return tf.constant([os.fsencode(p) for p in paths], tf.string)


def probe_files(paths, batch=4096):
    """(mask of the files that decode as images, their shorter sides, 0 where they do not), one parallel
    tf.data pass."""
    ok, sides = np.zeros(len(paths), bool), np.zeros(len(paths), np.int64)
    if not paths:
        return ok, sides
    probes = tf.data.Dataset.from_tensor_slices(_path_tensor(paths)).enumerate()
    probes = probes.map(_probe, num_parallel_calls=AUTOTUNE, deterministic=False)
    probes = probes.ignore_errors().batch(batch)
    for indices, found in probes.as_numpy_iterator():
        good = indices >= 0
        ok[indices[good]] = True
        sides[indices[good]] = found[good]
    return ok, sides


def readable_files(paths, batch=4096):
    """Boolean mask of the files that decode as images (``probe_files``)."""
    return probe_files(paths, batch)[0]


def load(name, root, *, batch_size, image_size, seed, min_image_size, model_image_size=None):
    class_names, splits = scan_folder(root)
    kept, skipped, sides = {}, [], {}
    for split, (paths, labels) in splits.items():
        ok, sides[split] = probe_files(paths)
        skipped.extend(p for p, good in zip(paths, ok) if not good)
        kept[split] = ([p for p, good in zip(paths, ok) if good], labels[ok])
        sides[split] = sides[split][ok]
        if not kept[split][0]:
            raise DatasetError(f"folder: none of the {len(paths)} image files under "
                               f"{os.path.join(root, split)} could be decoded")
    if skipped:
        logging.warning("folder: skipped %d unreadable image file(s), e.g. %s",
                        len(skipped), ", ".join(skipped[:3]))
    recipe = large_recipe(image_size=image_size, min_image_size=min_image_size,
                          model_image_size=model_image_size)

    def examples(split):
        paths, labels = kept[split]
        return tf.data.Dataset.from_tensor_slices((_path_tensor(paths), labels))

    train, evaluation, train_from = large_pipelines(
        examples("train"), examples("val"), recipe, batch_size=batch_size, seed=seed,
        shuffle_buffer=len(kept["train"][0]), read_files=True, skip_errors=True,
        train_count=len(kept["train"][0]))
    info = DatasetInfo(
        name=name, num_classes=len(class_names), image_shape=(recipe.size, recipe.size, 3),
        train_examples=len(kept["train"][0]), eval_examples=len(kept["val"][0]),
        class_names=class_names, skipped_files=len(skipped), train_from=train_from, recipe=recipe,
        native_side=int(np.median(sides["train"])), size_from_model=not image_size and bool(model_image_size))
    return train, evaluation, info
