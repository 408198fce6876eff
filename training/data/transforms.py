"""Image transforms of the two recipes (docs/data.md): batched for small images, per image for large.

Pure TensorFlow ops, usable in ``tf.data.Dataset.map``; random ones are
stateless, fed with seeds from a seeded stream, so a seed fixes every crop and flip.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def resize_batch(images, size):
    """uint8 (B, h, w[, c]) -> float32 (B, S, S, c) in [0, 255], S = size.

    Bilinear resize (antialiased when shrinking, S < max(h, w)), skipped when
    h = w = S. h and w may be unknown until the graph runs (a served batch).
    """
    x = tf.cast(images, tf.float32)
    if x.shape.rank == 3:
        x = x[..., tf.newaxis]
    height, width = x.shape[1], x.shape[2]
    if height is not None and width is not None:
        if (height, width) != (size, size):
            x = tf.image.resize(x, [size, size], method="bilinear",
                                antialias=size < max(height, width))
        return x
    height, width = tf.shape(x)[1], tf.shape(x)[2]

    def resized(antialias):
        return lambda: tf.image.resize(x, [size, size], method="bilinear", antialias=antialias)

    same = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
    x = tf.cond(same, lambda: x,
                lambda: tf.cond(size < tf.maximum(height, width), resized(True), resized(False)))
    return tf.ensure_shape(x, [None, size, size, x.shape[-1]])


def normalize_rgb(x, mean, std):
    """float32 (B, S, S, c) in [0, 255] -> (B, S, S, 3): (x / 255 - mean_c) / std_c;
    grey (c = 1, equal statistics per channel) replicated to 3 channels, alpha dropped."""
    if x.shape[-1] == 1:
        return tf.tile(normalize(x, mean[:1], std[:1], max_value=255.0), [1, 1, 1, 3])
    return normalize(x[..., :3], mean, std, max_value=255.0)


def pad_random_crop(x, pad, seed):
    """x (B, S, S, C) -> crop_S(zero_pad_p(x)), offsets (dy, dx) uniform in [0, 2p]^2 per image.

    Vectorised: the rows/columns of each crop are gathered with per-image
    indices ``dy + arange(S)`` and ``dx + arange(S)``. Not tf.image.stateless_random_crop
    or keras.layers.RandomCrop: both draw one offset per call, for the whole batch.
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
    """x[b] -> x[b, :, ::-1] with probability 1/2, independently per image (u_b >= 1/2)."""
    return tf.image.stateless_random_flip_left_right(x, seed)


def normalize(x, mean, std, max_value=1.0):
    """y = (x / max_value - mean_c) / std_c per channel, for x (..., H, W, 3) with static H, W.

    Computed as y = x a - b with a = 1 / (max_value std_c), b = mean_c / std_c
    tiled to (H, W, 3): TensorFlow's kernels broadcast a leading batch axis
    (or nothing) fast, but a 3-vector along the last axis several times slower
    (which is what keras.layers.Normalization does, hence not it).
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


def is_jpeg(contents):
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
    (unless a JPEG's shorter side is >= 16 side). tf.io.decode_jpeg takes the
    ratio; choosing it from the wanted size is what this adds.
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        shorter = tf.minimum(shape[0], shape[1])
        index = tf.add_n([tf.cast(shorter >= r * side, tf.int32) for r in _DCT_RATIOS[1:]])
        return tf.switch_case(index, [
            (lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r)) for r in _DCT_RATIOS])

    image = tf.cond(is_jpeg(contents), jpeg, lambda: shrink(decode_rgb(contents), side))
    image.set_shape([None, None, 3])
    return image


def shrink(image, side):
    """uint8 (H, W, 3) -> uint8, resized (antialiased bilinear, rounded) to shorter side ``side``
    when min(H, W) >= 2 side, else unchanged: ``decode_shrunk`` for a decoded image."""
    shape = tf.shape(image)
    shorter = tf.minimum(shape[0], shape[1])

    def shrunk():
        size = tf.cast(tf.round(tf.cast(shape[:2] * side, tf.float64)
                                / tf.cast(shorter, tf.float64)), tf.int32)
        out = tf.image.resize(image, size, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    image = tf.cond(shorter >= 2 * side, shrunk, lambda: image)
    image.set_shape([None, None, 3])
    return image


def crop_window(height, width, recipe, uniforms=None):
    """(top, left, side) of the crop in decoded pixels, m = min(H, W):

    side = clip(round(C m / R), 1, m), i.e. a C x C crop of the image resized to
    shorter side R, expressed before resizing. Train (``uniforms`` u0, u1 in
    [0, 1) given): top = floor(u0 (H - side + 1)), left = floor(u1 (W - side + 1)),
    uniform over all positions; eval: (H - side) // 2, (W - side) // 2.
    (tf.image has the Inception random-area crop, not this fixed-scale one.)
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
        crop_seed, flip_seed = (tf.stack([seed, tf.constant(k, tf.int64)]) for k in (0, 1))
        u = tf.random.stateless_uniform([2], seed=crop_seed)
        image = decode_shrunk(contents, recipe.resize)
        shape = tf.shape(image)
        top, left, side = crop_window(shape[0], shape[1], recipe, u)
        window = image[top:top + side, left:left + side]
        if recipe.flip:
            window = tf.image.stateless_random_flip_left_right(window, flip_seed)
        return resize_normalize(window, recipe), label

    return transform


def large_eval_example(recipe):
    """(encoded bytes, label) -> normalized float32 C x C x 3: centre crop of the
    image resized to shorter side R."""

    def transform(contents, label):
        return centre_crop_normalize(decode_shrunk(contents, recipe.resize), recipe), label

    return transform


def centre_crop_normalize(image, recipe):
    """uint8 (H, W, 3), as ``decode_shrunk`` leaves it -> normalized float32 C x C x 3:
    the evaluation crop (``crop_window``), resized and normalized (``resize_normalize``)."""
    shape = tf.shape(image)
    top, left, side = crop_window(shape[0], shape[1], recipe)
    return resize_normalize(image[top:top + side, left:left + side], recipe)
