"""What every source shares: the recipes' constants, ``Recipe``, ``DatasetInfo``, ``DatasetError``.

The recipes in formulas, and why the pipelines are built as they are: docs/data.md.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the training split, in [0, 1] units.
KNOWN_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,) * 3, (0.3081,) * 3),
    "fashion_mnist": ((0.2860,) * 3, (0.3530,) * 3),
}
# Digits and characters: mirroring changes the class, so no horizontal flip.
NO_FLIP = frozenset(
    {"digits", "idx", "mnist", "kmnist", "emnist", "binarized_mnist",
     "svhn_cropped", "cmaterdb"}
)
SMALL_MAX_SIDE = 64  # native sides up to this use the CIFAR-style recipe
IMAGENET_CROP = 224
IMAGENET_RESIZE = 256


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What ``load`` produced. ``image_shape`` is (H, W, 3) of its output."""

    name: str
    num_classes: int
    image_shape: tuple
    train_examples: int | None
    eval_examples: int | None
    class_names: tuple | None = None
    skipped_files: int = 0
    recipe: Recipe | None = None  # the preprocessing of the pipelines (their evaluation transform is served)
    # The shorter side of the source images (a folder's: the median over its training files; None if unknown).
    native_side: int | None = None
    size_from_model: bool = False  # the side is the model's input side (large images, no --image_size)
    # The training stream from global batch g (pass g // B, batch g % B of it, B batches a pass),
    # a function of the seed and g alone (pipelines.seekable_stream); None if the split's size is unknown.
    train_from: Callable[[int], tf.data.Dataset] | None = dataclasses.field(default=None, repr=False,
                                                                           compare=False)


def upsampling(info):
    """How many times the source images are enlarged: the recipe's resize side / their shorter side (None if
    either is unknown)."""
    if not info.native_side or info.recipe is None:
        return None
    return info.recipe.resize / info.native_side


class DatasetError(ValueError):
    """One clear line for the user: unknown dataset, missing/empty dir, class mismatch..."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Preprocessing constants of one pipeline (docs/data.md).

    ``family`` is "small" or "large"; ``size`` the output side (S or C);
    ``resize`` the side images are resized to before cropping (S for small,
    R = round(256 / 224 * C) for large); ``pad`` the zero padding p of the
    small random crop; ``flip`` whether training flips horizontally;
    ``grey`` whether the source images have one channel (replicated to 3).
    """

    family: str
    size: int
    resize: int
    pad: int
    flip: bool
    mean: tuple
    std: tuple
    grey: bool = False


def small_recipe(native_side, *, name, mean, std, image_size=None, min_image_size=None, grey=False):
    """CIFAR-style recipe: S = image_size or max(native, min_image_size), p = max(1, round(S/8))."""
    size = image_size or max(int(native_side), int(min_image_size or 0))
    return Recipe(
        family="small",
        size=size,
        resize=size,
        pad=max(1, round(size / 8)),
        flip=base_name(name) not in NO_FLIP,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        grey=bool(grey),
    )


def large_recipe(*, image_size=None, min_image_size=None, model_image_size=None):
    """ImageNet-style recipe: C = image_size or max(model_image_size (default 224), min_image_size),
    R = round(256/224 C)."""
    crop = image_size or max(int(model_image_size or IMAGENET_CROP), int(min_image_size or 0))
    return Recipe(
        family="large",
        size=crop,
        resize=int(round(IMAGENET_RESIZE / IMAGENET_CROP * crop)),
        pad=0,
        flip=True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def base_name(name):
    """'cifar10/plain:3.0.2' -> 'cifar10'."""
    return name.split(":")[0].split("/")[0].strip().lower()


def derive_seed(seed, k):
    return (int(seed) * 1_000_003 + k) % (2**31 - 1)


def channel_stats(images):
    """Per-channel mean and std of uint8 images (..., h, w[, c]) in [0, 1] units, 3 values each.

    Exact and memory-light: mean = sum_v v n_v / N, var = sum_v v^2 n_v / N - mean^2
    from the 256-bin histogram n_v of each channel (keras.layers.Normalization.adapt
    would accumulate float32 moments over float copies of the images).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"channel_stats expects uint8 images, got {images.dtype}")
    if images.ndim == 3:  # (N, h, w) grey
        images = images[..., np.newaxis]
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(min(images.shape[-1], 3)):
        counts = np.bincount(np.ascontiguousarray(images[..., c]).ravel(), minlength=256)
        total = counts.sum()
        mean = float(values @ counts / total)
        var = float((values**2) @ counts / total - mean**2)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    if len(means) == 1:
        means, stds = means * 3, stds * 3
    return tuple(means), tuple(stds)
