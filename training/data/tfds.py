"""Any tensorflow-datasets image-classification set (``cifar10``, ``imagenet2012``, ...).

Small images (side <= 64) are decoded by tfds and cached when they fit in
1 GiB; large ones stay encoded (``SkipDecoding``) for the crop-first decoder.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import logging

from training.data.base import (
    AUTOTUNE,
    KNOWN_STATS,
    SMALL_MAX_SIDE,
    DatasetError,
    DatasetInfo,
    base_name,
    channel_stats,
    derive_seed,
    large_recipe,
    small_recipe,
)
from training.data.pipelines import large_pipelines, small_pipelines

_STATS_SAMPLE = 10_000  # tfds images used to measure unknown statistics
_LARGE_SHUFFLE_BUFFER = 2_048  # encoded tfds examples (~110 kB each for ImageNet)
_CACHE_LIMIT_BYTES = 1 << 30  # small tfds sets up to 1 GiB of uint8 are cached


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError, ValueError, ...
        known = isinstance(e, tfds.core.registered.DatasetNotFoundError)
        raise DatasetError(
            f"unknown dataset '{name}': not 'digits', 'folder:PATH', 'idx:DIR' or a "
            "tensorflow-datasets name (list them with tfds.list_builders() or "
            "https://www.tensorflow.org/datasets/catalog/overview)"
            + ("" if known else f" [{_first_line(e)}]")) from e


def _image_label_features(name, builder):
    import tensorflow_datasets as tfds

    features = builder.info.features
    try:
        image, label = features["image"], features["label"]
    except (KeyError, TypeError):
        image = label = None
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        raise DatasetError(
            f"'{name}' is not an image-classification dataset (needs an 'image' Image "
            "feature and a 'label' ClassLabel feature)")
    return image, label


def _eval_split(name, available):
    order = ("validation", "test") if base_name(name).startswith("imagenet") else ("test", "validation")
    if not available:  # split names unknown (not prepared, or mocked)
        return order[0]
    for split in order:
        if split in available:
            return split
    raise DatasetError(f"'{name}' has no 'test' or 'validation' split (has {', '.join(available)})")


def _tfds_split(builder, split, *, train, seed, skip_decoding):
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=None if seed is None else derive_seed(seed, 2))
    decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
    ds = builder.as_dataset(split=split, shuffle_files=train, read_config=read_config,
                            decoders=decoders)
    count = int(ds.cardinality())
    if count < 0:
        split_info = builder.info.splits.get(split) if builder.info.splits else None
        count = split_info.num_examples if split_info is not None else None
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)),
                num_parallel_calls=AUTOTUNE)
    return ds, count


def _measured_stats(ds):
    """Per-channel stats of up to _STATS_SAMPLE images of an unshuffled (image, label) dataset."""
    images = np.concatenate(
        [x for x, _ in ds.take(_STATS_SAMPLE).batch(1000).as_numpy_iterator()])
    return channel_stats(images)


def load(name, *, data_dir, manual_dir, batch_size, image_size, seed, min_image_size,
         model_image_size=None):
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    image_feature, label_feature = _image_label_features(name, builder)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # network, manual files, disk: one line for the user
        raise DatasetError(
            f"could not prepare tfds dataset '{name}' in {data_dir or 'the default data_dir'}"
            f"{' (imagenet2012 needs manual_dir with the ILSVRC2012 tar files)' if 'imagenet' in name else ''}"
            f": {_first_line(e)}") from e
    available = tuple(builder.info.splits.keys()) if builder.info.splits else ()
    if available and "train" not in available:
        raise DatasetError(f"'{name}' has no 'train' split (has {', '.join(available)})")
    eval_split = _eval_split(name, available)
    height, width, channels = (tuple(image_feature.shape) + (None,) * 3)[:3]
    small = height is not None and width is not None and max(height, width) <= SMALL_MAX_SIDE
    if small and channels not in (1, 3, 4):
        raise DatasetError(f"'{name}': images with {channels} channels are not supported")
    class_names = tuple(label_feature.names) if label_feature.names else None
    options = dict(batch_size=batch_size, seed=seed)
    if small:
        train_ds, train_count = _tfds_split(builder, "train", train=True, seed=seed,
                                            skip_decoding=False)
        eval_ds, eval_count = _tfds_split(builder, eval_split, train=False, seed=seed,
                                          skip_decoding=False)
        stats = KNOWN_STATS.get(base_name(name))
        if stats is None:
            stats_ds, _ = _tfds_split(builder, "train", train=False, seed=seed, skip_decoding=False)
            stats = _measured_stats(stats_ds)
            logging.info("dataset %s: measured mean %s std %s", name,
                         np.round(stats[0], 4), np.round(stats[1], 4))
        recipe = small_recipe(max(height, width), name=name, mean=stats[0], std=stats[1],
                              image_size=image_size, min_image_size=min_image_size, grey=channels == 1)
        image_bytes = height * width * (channels or 3)
        cache = train_count is not None and train_count * image_bytes <= _CACHE_LIMIT_BYTES
        if cache:
            train_ds = train_ds.cache()
            eval_ds = eval_ds.cache()
        train, evaluation, train_from = small_pipelines(
            train_ds, eval_ds, recipe,
            shuffle_buffer=train_count if cache else _STATS_SAMPLE, train_count=train_count, **options)
    else:
        train_ds, train_count = _tfds_split(builder, "train", train=True, seed=seed,
                                            skip_decoding=True)
        eval_ds, eval_count = _tfds_split(builder, eval_split, train=False, seed=seed,
                                          skip_decoding=True)
        recipe = large_recipe(image_size=image_size, min_image_size=min_image_size,
                              model_image_size=model_image_size)
        train, evaluation, train_from = large_pipelines(
            train_ds, eval_ds, recipe, shuffle_buffer=_LARGE_SHUFFLE_BUFFER, train_count=train_count,
            **options)
    info = DatasetInfo(
        name=name, num_classes=int(label_feature.num_classes),
        image_shape=(recipe.size, recipe.size, 3), train_examples=train_count,
        eval_examples=eval_count, class_names=class_names, train_from=train_from, recipe=recipe,
        native_side=min(height, width) if height and width else None,
        size_from_model=not small and not image_size and bool(model_image_size))
    return train, evaluation, info
