"""The SavedModels of a run serve raw images: the evaluation transform and normalization are in the graph.

``ServingModel(model, info).export(path)`` writes a SavedModel
(``keras.export.ExportArchive``) with four signatures, named and shaped as TF Serving expects:

    serving_default  images: uint8 [batch, height, width, 3]         -> evaluation transform, model
    serving_bytes    image_bytes: string [batch], encoded JPEG/PNG/   -> decode, evaluation transform, model
                     BMP/GIF, one image each, of any sizes
    serving_float    images: float32 [batch, S, S, 3], as the         -> model
                     evaluation pipeline yields them
    preprocessing    (no input)                                       -> the constants below

The evaluation transform is the data set's (``training.data.transforms``), with
u the pixels in 0..255 and y = (u / 255 - mean_c) / std_c:

* small-image recipe: the whole image resized to S x S (bilinear, antialiased when shrinking);
* large-image recipe: images with shorter side m >= 2R shrunk to shorter side R (JPEG bytes:
  decoded at 1/2, 1/4 or 1/8 scale, as in training), then the centre crop of side
  round(S m / R) resized to S x S (bilinear). Decoded (uint8) images are shrunk by an
  antialiased bilinear resize, as PNG files are in training.

Grey data sets (digits, MNIST-like ``idx:`` and tfds sets) take RGB like the others, converted to
Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, PIL's ``convert("L")``), computed as
G + 0.299 (R - G) + 0.114 (B - G) so that a grey image sent as R = G = B is served exactly.

Every serving signature returns ``logits`` float32 [batch, K], ``probabilities`` (their softmax),
``classes`` int64 [batch] (the argmax) and, when the data set names its classes,
``class_names`` string [batch]. ``preprocessing`` returns the constants: ``mean``, ``std``
(float32 [3], [0, 1] units), ``image_size`` (S), ``resize_size`` (R), ``transform``
("resize" or "centre_crop"), ``color`` ("rgb" or "grey"), ``rule`` (the above in words) and,
if any, all ``class_names`` [K]; settings.json holds the same, but the class names, under ``preprocessing``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from training.data.transforms import centre_crop_normalize, decode_rgb, decode_shrunk, normalize_rgb, resize_batch
from training.data.transforms import shrink as shrink_decoded

# BT.601 luma weights of R and B; G's is 1 - 0.299 - 0.114 = 0.587.
LUMA_RED, LUMA_BLUE = 0.299, 0.114


def preprocessing_settings(recipe):
    """The evaluation transform of ``recipe`` as settings.json records it (see the module docstring)."""
    size, resize = recipe.size, recipe.resize
    if recipe.family == "small":
        rule = f"resize to {size}x{size} (bilinear, antialiased when shrinking)"
    else:
        rule = (f"shrink to shorter side {resize} when it is at least {2 * resize}, centre crop of side "
                f"round({size} m / {resize}) (m the shorter side), resize to {size}x{size} (bilinear)")
    if recipe.grey:
        rule = f"grey Y = 0.299 R + 0.587 G + 0.114 B; {rule}; y = (Y / 255 - mean_c) / std_c, 3 equal channels"
    else:
        rule += "; y = (u / 255 - mean_c) / std_c"
    return {
        "transform": "resize" if recipe.family == "small" else "centre_crop",
        "image_size": size,
        "resize_size": resize,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "color": "grey" if recipe.grey else "rgb",
        "rule": rule,
    }


def grey(images):
    """float32 (..., 3) RGB -> (..., 1): Y = G + 0.299 (R - G) + 0.114 (B - G), exact when R = G = B."""
    red, green, blue = tf.unstack(images, axis=-1)
    return (green + LUMA_RED * (red - green) + LUMA_BLUE * (blue - green))[..., tf.newaxis]


def transform_images(images, recipe):
    """uint8 [B, H, W, 3] -> float32 [B, S, S, 3]: the evaluation transform of decoded images."""
    if recipe.family == "small":
        x = tf.cast(images, tf.float32)
        if recipe.grey:
            x = grey(x)
        return normalize_rgb(resize_batch(x, recipe.size), recipe.mean, recipe.std)
    return tf.map_fn(lambda image: centre_crop_normalize(shrink_decoded(image, recipe.resize), recipe),
                     images, fn_output_signature=_model_input(recipe))


def transform_bytes(image_bytes, recipe):
    """string [B] -> float32 [B, S, S, 3]: each image decoded and transformed as in evaluation."""
    if recipe.family == "small":
        def one(contents):
            return transform_images(decode_rgb(contents)[tf.newaxis], recipe)[0]
    else:
        def one(contents):  # what large_eval_example does with the bytes of a file
            return centre_crop_normalize(decode_shrunk(contents, recipe.resize), recipe)
    return tf.map_fn(one, image_bytes, fn_output_signature=_model_input(recipe))


def _model_input(recipe):
    return tf.TensorSpec([recipe.size, recipe.size, 3], tf.float32)


class ServingModel:
    """A Keras model with its data set's evaluation transform; ``export`` as ``keras.Model.export``.

    ``info`` is the ``training.data.DatasetInfo`` of the run (its ``recipe``,
    ``num_classes`` and ``class_names``).
    """

    def __init__(self, model, info):
        if info.recipe is None:
            raise ValueError(f"data set {info.name!r} records no preprocessing recipe to serve")
        if info.class_names is not None and len(info.class_names) != info.num_classes:
            raise ValueError(f"{len(info.class_names)} class names for {info.num_classes} classes")
        self.model, self.recipe, self.class_names = model, info.recipe, info.class_names

    def _outputs(self, x):
        logits = tf.cast(self.model(x, training=False), tf.float32)
        classes = tf.argmax(logits, axis=-1)
        out = {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": classes}
        if self.class_names is not None:
            out["class_names"] = tf.gather(tf.constant(self.class_names, tf.string), classes)
        return out

    def _constants(self):
        settings = preprocessing_settings(self.recipe)
        out = {key: tf.constant(settings[key]) for key in ("image_size", "resize_size", "transform",
                                                            "color", "rule")}
        out.update(mean=tf.constant(settings["mean"], tf.float32), std=tf.constant(settings["std"], tf.float32))
        if self.class_names is not None:
            out["class_names"] = tf.constant(self.class_names, tf.string)
        return out

    def export(self, path, verbose=False):
        """Write the SavedModel with the signatures of the module docstring to ``path``."""
        recipe, size = self.recipe, self.recipe.size
        # Not ``archive.track(self.model)``: it stores every variable a second time beside the endpoints' own
        # (a SavedModel twice the weights' size); the endpoints save the variables they capture.
        archive = keras.export.ExportArchive()
        archive.add_endpoint(
            "serving_default", lambda images: self._outputs(transform_images(images, recipe)),
            [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        archive.add_endpoint(
            "serving_bytes", lambda image_bytes: self._outputs(transform_bytes(image_bytes, recipe)),
            [tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.add_endpoint(
            "serving_float", lambda images: self._outputs(images),
            [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
        archive.add_endpoint("preprocessing", self._constants, [])
        archive.write_out(path, verbose=verbose)
