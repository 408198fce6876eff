"""Input pipelines for ``train.py``: data sets, augmentation and normalization.

``load(spec, batch_size=...)`` returns ``(train, eval, info)``, two batched
``tf.data.Dataset`` of ``(images float32 (N, H, W, 3), labels int32 (N,))``
and a :class:`DatasetInfo`. ``spec`` is one of

* ``digits`` -- scikit-learn's bundled handwritten digits (1797 8x8 images
  with grey levels 0..16, 10 classes). Needs no download. Split 80/20,
  stratified by class, with a fixed seed (the split never depends on
  ``seed``), so the held-out 360 images are the same on every machine.
* any tensorflow-datasets image-classification name (``cifar10``,
  ``imagenet2012``, ``fashion_mnist``, ``mnist``, ``svhn_cropped``, ...), read
  from ``data_dir``; ``imagenet2012`` needs ``manual_dir`` holding the
  ILSVRC2012 tar files.
* ``folder:PATH`` -- an ImageNet-style tree ``PATH/train/<class>/*.jpg`` and
  ``PATH/val/<class>/*.jpg`` (also .jpeg, .png, .bmp, .gif; class index =
  position of the folder name in sorted order).
* ``idx:DIR`` -- MNIST-format IDX files in ``DIR``:
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
  gzipped (``.gz``); a common prefix (EMNIST's ``emnist-balanced-``), ``test``
  for ``t10k`` and ``.`` for the ``-`` before ``idx`` are accepted too.

Two recipe families (section "Data" of the FTPROP reference):

*Small images* (native side <= 64: digits, idx, cifar10/100, mnist-likes,
svhn...). Output side ``S = image_size`` if given, else
``max(native side, min_image_size)``. With ``u`` the uint8 pixel::

    x = resize_bilinear(u, S x S)                  (only if native != S)
    train: x = crop_S(pad_p(x)) at a uniform offset in [0, 2p]^2,
           p = max(1, round(S / 8))  (= 4 at S = 32), zero (black) padding;
           then x = x[:, ::-1] with probability 1/2 (flip family only)
    both:  y = (x / 255 - mean_c) / std_c,  grey images replicated to 3 channels.

Horizontal flips are used for natural images (CIFAR, Fashion-MNIST, unknown
tfds sets) but not for digits and characters (digits, idx, mnist, kmnist,
emnist, svhn_cropped): a mirrored "2" is not a "2", so those get the crop only.

*Large images* (imagenet2012, other tfds sets with unknown or > 64 px sizes,
``folder:``). Crop side ``C = image_size or max(224, min_image_size)``,
resize side ``R = round(256 / 224 * C)`` (256 for C = 224). The reference
recipe is "resize the shorter side to R, crop C x C (random + flip for
training, centre for eval)"; it is computed crop-first (the window that
becomes the C x C crop is cut from the decoded image, then only it is
resized), which gives the same crops up to sub-pixel placement for a
fraction of the resizing work. With m the shorter side of the decoded
image (H, W)::

    side = clip(round(C m / R), 1, m)               (C resized pixels, in decoded pixels)
    train: window = u[top:top+side, left:left+side], top ~ U{0..H-side},
           left ~ U{0..W-side}, mirrored left-right with probability 1/2
    eval:  top = (H - side) // 2, left = (W - side) // 2
    x = resize_bilinear(window, C x C)               (identity when side == C)
    y = (x / 255 - mean_c) / std_c,  ImageNet mean/std.

Images whose shorter side is >= 2R are shrunk first: JPEGs are decoded at
1/2, 1/4 or 1/8 scale in the DCT domain (largest factor keeping m >= R),
other formats resized with an antialiased bilinear filter to m = R; the
final bilinear resize then shrinks by less than 2x (except for JPEGs with
m >= 16R), where bilinear without antialiasing is adequate.

Mean/std per channel: CIFAR-10 and ImageNet from the reference; CIFAR-100,
MNIST and Fashion-MNIST from their usual published values; everything else
(digits, idx, other small tfds sets) measured on the training split
(up to 10 000 images for tfds) at native resolution.

Unreadable or corrupt files of a ``folder:`` set are found by one parallel
validation pass before training (every file is read and decoded; JPEGs at
1/8 scale, which still parses the whole entropy-coded stream but skips most
of the inverse DCT and colour work: about 0.7 of a full decode), dropped,
counted in
``DatasetInfo.skipped_files`` and logged once. The pipelines keep
``ignore_errors`` as a safety net for files that change after the pass.

Train pipelines are shuffled (seeded when ``seed`` is given, reshuffled every
epoch), augmented with stateless random ops fed by a seeded
``tf.data.Dataset.random`` stream (different every epoch, reproducible for a
fixed seed), batched with ``drop_remainder=True`` and prefetched; they are
not repeated. Eval pipelines are deterministic and keep the last partial
batch. No Python runs per element.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

AUTOTUNE = tf.data.AUTOTUNE

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per-channel statistics of the training split, in [0, 1] units.
_KNOWN_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,) * 3, (0.3081,) * 3),
    "fashion_mnist": ((0.2860,) * 3, (0.3530,) * 3),
}
# Digits and characters: mirroring changes the class, so no horizontal flip.
_NO_FLIP = frozenset(
    {"digits", "idx", "mnist", "kmnist", "emnist", "binarized_mnist",
     "svhn_cropped", "cmaterdb"}
)
SMALL_MAX_SIDE = 64  # native sides up to this use the CIFAR-style recipe
IMAGENET_CROP = 224
IMAGENET_RESIZE = 256
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_STATS_SAMPLE = 10_000  # tfds images used to measure unknown statistics
_LARGE_SHUFFLE_BUFFER = 2_048  # encoded tfds examples (~110 kB each for ImageNet)
_CACHE_LIMIT_BYTES = 1 << 30  # small tfds sets up to 1 GiB of uint8 are cached
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2


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


class DatasetError(ValueError):
    """One clear line for the user: unknown dataset, missing/empty dir, class mismatch..."""


def dataset_names() -> tuple:
    """The documented ``--dataset`` choices (for ``--help``)."""
    return ("digits", "<tfds name>", "folder:PATH", "idx:DIR")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Preprocessing constants of one pipeline (see the module docstring).

    ``family`` is "small" or "large"; ``size`` the output side (S or C);
    ``resize`` the side images are resized to before cropping (S for small,
    R = round(256 / 224 * C) for large); ``pad`` the zero padding p of the
    small random crop; ``flip`` whether training flips horizontally.
    """

    family: str
    size: int
    resize: int
    pad: int
    flip: bool
    mean: tuple
    std: tuple


def small_recipe(native_side, *, name, mean, std, image_size=None, min_image_size=None):
    """CIFAR-style recipe: S = image_size or max(native, min_image_size), p = max(1, round(S/8))."""
    size = image_size or max(int(native_side), int(min_image_size or 0))
    return Recipe(
        family="small",
        size=size,
        resize=size,
        pad=max(1, round(size / 8)),
        flip=_base_name(name) not in _NO_FLIP,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def large_recipe(*, image_size=None, min_image_size=None):
    """ImageNet-style recipe: C = image_size or max(224, min_image_size), R = round(256/224 C)."""
    crop = image_size or max(IMAGENET_CROP, int(min_image_size or 0))
    return Recipe(
        family="large",
        size=crop,
        resize=int(round(IMAGENET_RESIZE / IMAGENET_CROP * crop)),
        pad=0,
        flip=True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def load(
    spec: str,
    *,
    batch_size: int,
    image_size: int | None = None,
    data_dir=None,
    manual_dir=None,
    seed: int | None = None,
    min_image_size: int | None = None,
):
    """Returns (train, eval, info) for ``spec`` (see the module docstring).

    train: shuffled (seeded), augmented, batched with drop_remainder=True,
    prefetched, NOT repeated. eval: deterministic, batched (remainder kept),
    prefetched. Elements are (images float32 NHWC, labels int32 (N,)).
    ``batch_size`` is the global batch size.
    """
    _check_positive("batch_size", batch_size)
    if image_size is not None:
        _check_positive("image_size", image_size)
    if min_image_size is not None:
        _check_positive("min_image_size", min_image_size)
    spec = str(spec).strip()
    opts = dict(batch_size=int(batch_size), image_size=image_size, seed=seed,
                min_image_size=min_image_size)
    if spec == "digits":
        train, evaluation, info = _load_digits(**opts)
    elif spec.startswith("folder:"):
        train, evaluation, info = _load_folder(spec, _spec_path(spec, "folder:"), **opts)
    elif spec.startswith("idx:"):
        train, evaluation, info = _load_idx(spec, _spec_path(spec, "idx:"), **opts)
    else:
        train, evaluation, info = _load_tfds(spec, data_dir=data_dir, manual_dir=manual_dir, **opts)
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


def _base_name(name):
    """'cifar10/plain:3.0.2' -> 'cifar10'."""
    return name.split(":")[0].split("/")[0].strip().lower()


# --------------------------------------------------------------------------
# Batched small-image transforms
# --------------------------------------------------------------------------


def resize_batch(images, size):
    """uint8 (B, h, w[, c]) -> float32 (B, S, S, c) in [0, 255], S = size.

    Bilinear resize (antialiased when shrinking), skipped when h = w = S.
    """
    x = tf.cast(images, tf.float32)
    if x.shape.rank == 3:
        x = x[..., tf.newaxis]
    height, width = x.shape[1], x.shape[2]
    if (height, width) != (size, size):
        x = tf.image.resize(x, [size, size], method="bilinear",
                            antialias=size < max(height, width))
    return x


def normalize_rgb(x, mean, std):
    """float32 (B, S, S, c) in [0, 255] -> (B, S, S, 3): (x / 255 - mean_c) / std_c;
    grey (c = 1, equal statistics per channel) replicated to 3 channels, alpha dropped."""
    if x.shape[-1] == 1:
        return tf.tile(normalize(x, mean[:1], std[:1], max_value=255.0), [1, 1, 1, 3])
    return normalize(x[..., :3], mean, std, max_value=255.0)


def pad_random_crop(x, pad, seed):
    """x (B, S, S, C) -> crop_S(zero_pad_p(x)), offsets (dy, dx) uniform in [0, 2p]^2 per image.

    Vectorised: the rows/columns of each crop are gathered with per-image
    indices ``dy + arange(S)`` and ``dx + arange(S)``.
    """
    height, width = x.shape[1], x.shape[2]
    batch = tf.shape(x)[0]
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [2, batch], seed=seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    rows = offsets[0][:, tf.newaxis] + tf.range(height)[tf.newaxis, :]
    cols = offsets[1][:, tf.newaxis] + tf.range(width)[tf.newaxis, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def random_flip(x, seed):
    """x[b] -> x[b, :, ::-1] with probability 1/2, independently per image."""
    flip = tf.random.stateless_uniform([tf.shape(x)[0]], seed=seed) < 0.5
    return tf.where(flip[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(x, axis=[2]), x)


def normalize(x, mean, std, max_value=1.0):
    """y = (x / max_value - mean_c) / std_c per channel, for x (..., H, W, 3) with static H, W.

    Computed as y = x a - b with a = 1 / (max_value std_c), b = mean_c / std_c
    tiled to (H, W, 3): TensorFlow's kernels broadcast a leading batch axis
    (or nothing) fast, but a 3-vector along the last axis several times slower.
    """
    height, width = x.shape[-3], x.shape[-2]
    scale = np.tile(1.0 / (max_value * np.asarray(std, np.float64)), (height, width, 1))
    shift = np.tile(np.asarray(mean, np.float64) / np.asarray(std, np.float64), (height, width, 1))
    return x * tf.constant(scale, tf.float32) - tf.constant(shift, tf.float32)


def _batch_seeds(seed, count):
    """``count`` stateless seeds of shape [2] derived from one int64 stream element."""
    return [tf.stack([seed, tf.constant(k, tf.int64)]) for k in range(1, count + 1)]


def small_train_transform(recipe):
    """Batched train map: ((uint8 images, labels), int64 seed) -> (normalized augmented float32, labels)."""

    def transform(batch, seed):
        images, labels = batch
        crop_seed, flip_seed = _batch_seeds(seed, 2)
        x = resize_batch(images, recipe.size)
        x = pad_random_crop(x, recipe.pad, crop_seed)
        if recipe.flip:
            x = random_flip(x, flip_seed)
        return normalize_rgb(x, recipe.mean, recipe.std), labels

    return transform


def small_eval_transform(recipe):
    """Batched eval map: (uint8 images, labels) -> (normalize(resize(u)), labels)."""

    def transform(images, labels):
        return normalize_rgb(resize_batch(images, recipe.size), recipe.mean, recipe.std), labels

    return transform


def _seed_stream(seed):
    """Infinite int64 stream; the same for a given seed, fresh every iteration (epoch)."""
    return tf.data.Dataset.random(
        seed=None if seed is None else _derive_seed(seed, 1), rerandomize_each_iteration=True)


def _derive_seed(seed, k):
    return (int(seed) * 1_000_003 + k) % (2**31 - 1)


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def small_pipelines(train_examples, eval_examples, recipe, *, batch_size, seed, shuffle_buffer):
    """Batched pipelines over unbatched (uint8 image, int32 label) datasets."""
    train = train_examples.shuffle(
        shuffle_buffer, seed=None if seed is None else _derive_seed(seed, 0),
        reshuffle_each_iteration=True)
    train = train.batch(batch_size, drop_remainder=True)
    train = tf.data.Dataset.zip((train, _seed_stream(seed)))
    train = train.map(small_train_transform(recipe), num_parallel_calls=AUTOTUNE)
    train = train.prefetch(AUTOTUNE).with_options(_options(seed is not None))
    evaluation = eval_examples.batch(batch_size)
    evaluation = evaluation.map(small_eval_transform(recipe), num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.prefetch(AUTOTUNE).with_options(_options(True))
    return train, evaluation


def channel_stats(images):
    """Per-channel mean and std of uint8 images (..., h, w[, c]) in [0, 1] units, 3 values each.

    Exact and memory-light: mean = sum_v v n_v / N, var = sum_v v^2 n_v / N - mean^2
    from the 256-bin histogram n_v of each channel.
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


# --------------------------------------------------------------------------
# In-memory small sets: digits and IDX
# --------------------------------------------------------------------------


def digits_split():
    """Indices (train, test) of the fixed stratified 80/20 split of ``load_digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    indices = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        indices, test_size=_DIGITS_TEST_FRACTION, stratify=labels,
        random_state=_DIGITS_SPLIT_SEED)
    return np.sort(train_idx), np.sort(test_idx)


def _digits_arrays():
    """(x_train, y_train, x_test, y_test): uint8 u = round(255 v / 16) of the 0..16 grey levels v."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = digits_split()
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def _in_memory(name, arrays, *, num_classes, class_names, stats, batch_size, image_size,
               seed, min_image_size):
    x_train, y_train, x_eval, y_eval = arrays
    mean, std = stats
    recipe = small_recipe(max(x_train.shape[1:3]), name=name, mean=mean, std=std,
                          image_size=image_size, min_image_size=min_image_size)
    train, evaluation = small_pipelines(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        tf.data.Dataset.from_tensor_slices((x_eval, y_eval)),
        recipe, batch_size=batch_size, seed=seed, shuffle_buffer=len(x_train))
    info = DatasetInfo(
        name=name, num_classes=num_classes, image_shape=(recipe.size, recipe.size, 3),
        train_examples=len(x_train), eval_examples=len(x_eval), class_names=class_names)
    return train, evaluation, info


def _load_digits(**opts):
    arrays = _digits_arrays()
    return _in_memory("digits", arrays, num_classes=10,
                      class_names=tuple(str(d) for d in range(10)),
                      stats=channel_stats(arrays[0]), **opts)


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
            raise DatasetError(f"{path}: corrupt gzip data ({e})") from None
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


def _load_idx(name, directory, **opts):
    files = find_idx_files(directory)
    x_train, y_train = _idx_pair(files["train-images"], files["train-labels"])
    x_eval, y_eval = _idx_pair(files["t10k-images"], files["t10k-labels"])
    if x_train.shape[1:] != x_eval.shape[1:]:
        raise DatasetError(
            f"idx: train images are {x_train.shape[1:]} but test images are {x_eval.shape[1:]}")
    num_classes = int(max(y_train.max(), y_eval.max())) + 1
    return _in_memory(name, (x_train, y_train, x_eval, y_eval), num_classes=num_classes,
                      class_names=None, stats=channel_stats(x_train), **opts)


# --------------------------------------------------------------------------
# Large images: decode, resize the shorter side, crop
# --------------------------------------------------------------------------


def _is_jpeg(contents):
    return tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")


def decode_rgb(contents):
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 (H, W, 3) (grey replicated, alpha dropped)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


_DCT_RATIOS = (1, 2, 4, 8)


def decode_shrunk(contents, side):
    """Decodes to uint8 (H', W', 3), shrunk towards min(H', W') = side when that is 2x or more smaller.

    JPEG: decoded at 1/r scale in the DCT domain (a low-pass downscale that
    also skips much of the decoding work), r the largest of 1, 2, 4, 8 with
    min(H, W) >= r side, so H' = ceil(H / r). Other formats: fully decoded,
    then, if min(H, W) >= 2 side, resized (antialiased bilinear) to shorter
    side ``side``. Either way the remaining resize shrinks by less than 2x
    (unless a JPEG's shorter side is >= 16 side).
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        shorter = tf.minimum(shape[0], shape[1])
        index = tf.add_n([tf.cast(shorter >= r * side, tf.int32) for r in _DCT_RATIOS[1:]])
        return tf.switch_case(index, [
            (lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r)) for r in _DCT_RATIOS])

    def other():
        image = decode_rgb(contents)
        shape = tf.shape(image)
        shorter = tf.minimum(shape[0], shape[1])

        def shrink():
            size = tf.cast(tf.round(tf.cast(shape[:2] * side, tf.float64)
                                    / tf.cast(shorter, tf.float64)), tf.int32)
            out = tf.image.resize(image, size, method="bilinear", antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

        return tf.cond(shorter >= 2 * side, shrink, lambda: image)

    image = tf.cond(_is_jpeg(contents), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def crop_window(height, width, recipe, uniforms=None):
    """(top, left, side) of the crop in decoded pixels, m = min(H, W):

    side = clip(round(C m / R), 1, m), i.e. a C x C crop of the image resized to
    shorter side R, expressed before resizing. Train (``uniforms`` u0, u1 in
    [0, 1) given): top = floor(u0 (H - side + 1)), left = floor(u1 (W - side + 1)),
    uniform over all positions; eval: (H - side) // 2, (W - side) // 2.
    """
    shorter = tf.minimum(height, width)
    side = tf.cast(tf.round(tf.cast(recipe.size * shorter, tf.float64) / recipe.resize), tf.int32)
    side = tf.clip_by_value(side, 1, shorter)
    if uniforms is None:
        return (height - side) // 2, (width - side) // 2, side
    slack = tf.cast(tf.stack([height - side, width - side]) + 1, tf.float32)
    top_left = tf.minimum(tf.cast(tf.floor(uniforms * slack), tf.int32),
                          tf.stack([height - side, width - side]))
    return top_left[0], top_left[1], side


def resize_normalize(window, recipe):
    """uint8 (s, s, 3) -> float32 (C, C, 3): y = (resize(window) / 255 - mean_c) / std_c.

    Bilinear with half-pixel centres, which copies pixels exactly when s == C;
    ``decode_shrunk`` keeps the shrink factor below 2, where bilinear needs no
    antialiasing. Normalizing here, per image, avoids a second pass over every batch.
    """
    size = recipe.size
    x = tf.image.resize(window, [size, size], method="bilinear")
    x.set_shape([size, size, 3])
    return normalize(x, recipe.mean, recipe.std, max_value=255.0)


def large_train_example(recipe):
    """(encoded bytes, label), int64 seed -> normalized float32 C x C x 3:
    random crop of the image resized to shorter side R, mirrored with probability 1/2."""

    def transform(example, seed):
        contents, label = example
        u = tf.random.stateless_uniform([3], seed=tf.stack([seed, tf.constant(0, tf.int64)]))
        image = decode_shrunk(contents, recipe.resize)
        shape = tf.shape(image)
        top, left, side = crop_window(shape[0], shape[1], recipe, u[:2])
        window = image[top:top + side, left:left + side]
        if recipe.flip:
            window = tf.cond(u[2] < 0.5, lambda: tf.reverse(window, axis=[1]), lambda: window)
        return resize_normalize(window, recipe), label

    return transform


def large_eval_example(recipe):
    """(encoded bytes, label) -> normalized float32 C x C x 3: centre crop of the
    image resized to shorter side R."""

    def transform(contents, label):
        image = decode_shrunk(contents, recipe.resize)
        shape = tf.shape(image)
        top, left, side = crop_window(shape[0], shape[1], recipe)
        return resize_normalize(image[top:top + side, left:left + side], recipe), label

    return transform


def large_pipelines(train_examples, eval_examples, recipe, *, batch_size, seed, shuffle_buffer,
                    read_files=False, skip_errors=False):
    """Batched pipelines over unbatched (encoded bytes or file path, int32 label) datasets."""

    def read(path, label):
        return tf.io.read_file(path), label

    train = train_examples.shuffle(
        shuffle_buffer, seed=None if seed is None else _derive_seed(seed, 0),
        reshuffle_each_iteration=True)
    evaluation = eval_examples
    if read_files:
        train = train.map(read, num_parallel_calls=AUTOTUNE)
        evaluation = evaluation.map(read, num_parallel_calls=AUTOTUNE)
    train = tf.data.Dataset.zip((train, _seed_stream(seed)))
    train = train.map(large_train_example(recipe), num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.map(large_eval_example(recipe), num_parallel_calls=AUTOTUNE)
    if skip_errors:
        train = train.ignore_errors(log_warning=True)
        evaluation = evaluation.ignore_errors(log_warning=True)
    train = train.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    train = train.prefetch(AUTOTUNE).with_options(_options(seed is not None))
    evaluation = evaluation.batch(batch_size, num_parallel_calls=AUTOTUNE)
    evaluation = evaluation.prefetch(AUTOTUNE).with_options(_options(True))
    return train, evaluation


# --------------------------------------------------------------------------
# folder:PATH
# --------------------------------------------------------------------------


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
    """index if the file decodes, else -1 (or an error, dropped by ignore_errors).

    JPEG: decode at 1/8 scale (DCT scaling still walks the whole stream);
    other formats: full decode.
    """
    contents = tf.io.read_file(path)
    shape = tf.cond(
        _is_jpeg(contents),
        lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8))[:2],
        lambda: tf.shape(decode_rgb(contents))[:2])
    return tf.where(tf.reduce_min(shape) > 0, index, tf.constant(-1, tf.int64))


def _path_tensor(paths):
    """File names as a string tensor of their OS bytes (any name encoding survives)."""
    return tf.constant([os.fsencode(p) for p in paths], tf.string)


def readable_files(paths, batch=4096):
    """Boolean mask of the files that decode as images (one parallel tf.data pass)."""
    ok = np.zeros(len(paths), bool)
    if not paths:
        return ok
    probes = tf.data.Dataset.from_tensor_slices(_path_tensor(paths)).enumerate()
    probes = probes.map(_probe, num_parallel_calls=AUTOTUNE, deterministic=False)
    probes = probes.ignore_errors().batch(batch)
    for indices in probes.as_numpy_iterator():
        ok[indices[indices >= 0]] = True
    return ok


def _load_folder(name, root, *, batch_size, image_size, seed, min_image_size):
    class_names, splits = scan_folder(root)
    kept, skipped = {}, []
    for split, (paths, labels) in splits.items():
        ok = readable_files(paths)
        skipped.extend(p for p, good in zip(paths, ok) if not good)
        kept[split] = ([p for p, good in zip(paths, ok) if good], labels[ok])
        if not kept[split][0]:
            raise DatasetError(f"folder: none of the {len(paths)} image files under "
                               f"{os.path.join(root, split)} could be decoded")
    if skipped:
        logging.warning("folder: skipped %d unreadable image file(s), e.g. %s",
                        len(skipped), ", ".join(skipped[:3]))
    recipe = large_recipe(image_size=image_size, min_image_size=min_image_size)

    def examples(split):
        paths, labels = kept[split]
        return tf.data.Dataset.from_tensor_slices((_path_tensor(paths), labels))

    train, evaluation = large_pipelines(
        examples("train"), examples("val"), recipe, batch_size=batch_size, seed=seed,
        shuffle_buffer=len(kept["train"][0]), read_files=True, skip_errors=True)
    info = DatasetInfo(
        name=name, num_classes=len(class_names), image_shape=(recipe.size, recipe.size, 3),
        train_examples=len(kept["train"][0]), eval_examples=len(kept["val"][0]),
        class_names=class_names, skipped_files=len(skipped))
    return train, evaluation, info


# --------------------------------------------------------------------------
# tensorflow-datasets
# --------------------------------------------------------------------------


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
            + ("" if known else f" [{_first_line(e)}]")) from None


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
    order = ("validation", "test") if _base_name(name).startswith("imagenet") else ("test", "validation")
    if not available:  # split names unknown (not prepared, or mocked)
        return order[0]
    for split in order:
        if split in available:
            return split
    raise DatasetError(f"'{name}' has no 'test' or 'validation' split (has {', '.join(available)})")


def _tfds_split(builder, split, *, train, seed, skip_decoding):
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=None if seed is None else _derive_seed(seed, 2))
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


def _load_tfds(name, *, data_dir, manual_dir, batch_size, image_size, seed, min_image_size):
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
            f": {_first_line(e)}") from None
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
        stats = _KNOWN_STATS.get(_base_name(name))
        if stats is None:
            stats_ds, _ = _tfds_split(builder, "train", train=False, seed=seed, skip_decoding=False)
            stats = _measured_stats(stats_ds)
            logging.info("dataset %s: measured mean %s std %s", name,
                         np.round(stats[0], 4), np.round(stats[1], 4))
        recipe = small_recipe(max(height, width), name=name, mean=stats[0], std=stats[1],
                              image_size=image_size, min_image_size=min_image_size)
        image_bytes = height * width * (channels or 3)
        cache = train_count is not None and train_count * image_bytes <= _CACHE_LIMIT_BYTES
        if cache:
            train_ds = train_ds.cache()
            eval_ds = eval_ds.cache()
        train, evaluation = small_pipelines(
            train_ds, eval_ds, recipe,
            shuffle_buffer=train_count if cache else _STATS_SAMPLE, **options)
    else:
        train_ds, train_count = _tfds_split(builder, "train", train=True, seed=seed,
                                            skip_decoding=True)
        eval_ds, eval_count = _tfds_split(builder, eval_split, train=False, seed=seed,
                                          skip_decoding=True)
        recipe = large_recipe(image_size=image_size, min_image_size=min_image_size)
        train, evaluation = large_pipelines(
            train_ds, eval_ds, recipe, shuffle_buffer=_LARGE_SHUFFLE_BUFFER, **options)
    info = DatasetInfo(
        name=name, num_classes=int(label_feature.num_classes),
        image_shape=(recipe.size, recipe.size, 3), train_examples=train_count,
        eval_examples=eval_count, class_names=class_names)
    return train, evaluation, info
