"""Building blocks shared by the model builders.

Everything here reproduces a PyTorch behaviour the reference code relies on:

* ``PaddedMaxPooling2D``: ``torch.nn.MaxPool2d(k, s, padding=p)``, which pads
  with -inf (the same maxima, by repeating the edge rows and columns). It
  lives in the installed package, [keras_ftprop.pooling][], so that saved
  models load without this checkout; it is imported here for the builders.
* ``conv2d`` / ``dense`` / ``batch_norm_layer``: layers with PyTorch's default
  initialisation (weights and biases uniform in +-1/sqrt(fan_in)), PyTorch's
  batch-norm momentum (0.1 in PyTorch = 0.9 in Keras) and the coupled L2 weight
  decay of [models.regularization][] attached to every trainable weight.
* ``ActivationSites``: calls the user's zero-argument activation factory once
  per hidden activation and names the layer deterministically; a step or
  staircase right after batch norm becomes one ``BatchNormThreshold``.
"""

import math

import keras

from keras_ftprop import BatchNormThreshold, HardThreshold, Staircase
from keras_ftprop.pooling import PaddedMaxPooling2D  # noqa: F401 (the builders import it from here)
from models.regularization import l2_weight_decay

# PyTorch's BatchNorm momentum 0.1 weights the *new* batch statistic; Keras's
# momentum weights the *old* moving average.
TORCH_BATCH_NORM_MOMENTUM = 0.9
TORCH_BATCH_NORM_EPSILON = 1e-5


def torch_default_initializers(fan_in):
    """PyTorch's default Conv/Linear initialisation: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )  # limit sqrt(3 * scale / fan_in) = 1 / sqrt(fan_in)
    bias = keras.initializers.RandomUniform(-bound, bound)
    return kernel, bias


def conv2d(
    filters,
    kernel_size,
    *,
    in_channels,
    name,
    strides=1,
    padding="valid",
    use_bias=True,
    weight_decay=0.0,
    kernel_initializer=None,
):
    """A ``Conv2D`` initialised like PyTorch unless told otherwise."""
    kernel_height, kernel_width = _pair(kernel_size)
    default_kernel_init, bias_init = torch_default_initializers(
        in_channels * kernel_height * kernel_width
    )
    return keras.layers.Conv2D(
        filters,
        (kernel_height, kernel_width),
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer or default_kernel_init,
        bias_initializer=bias_init,
        kernel_regularizer=l2_weight_decay(weight_decay),
        bias_regularizer=l2_weight_decay(weight_decay) if use_bias else None,
        name=name,
    )


def dense(units, *, in_features, name, use_bias=True, activation=None,
          weight_decay=0.0):
    """A ``Dense`` layer initialised like PyTorch's ``nn.Linear``."""
    kernel_init, bias_init = torch_default_initializers(in_features)
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        activation=activation,
        kernel_initializer=kernel_init,
        bias_initializer=bias_init,
        kernel_regularizer=l2_weight_decay(weight_decay),
        bias_regularizer=l2_weight_decay(weight_decay) if use_bias else None,
        name=name,
    )


def batch_norm_layer(*, name, epsilon=TORCH_BATCH_NORM_EPSILON,
                     weight_decay=0.0):
    """``BatchNormalization`` with PyTorch's momentum (gamma=1, beta=0)."""
    return keras.layers.BatchNormalization(
        momentum=TORCH_BATCH_NORM_MOMENTUM,
        epsilon=epsilon,
        gamma_regularizer=l2_weight_decay(weight_decay),
        beta_regularizer=l2_weight_decay(weight_decay),
        name=name,
    )


class ActivationSites:
    """Creates one fresh activation layer per hidden activation of a model.

    ``factory`` is a zero-argument callable returning a Keras layer (``None``
    means ReLU). Each call ``sites(x, name)`` builds a new layer, renames it to
    ``name`` so that ``model.get_layer(name)`` is stable, and applies it.

    ``sites.after_batch_norm(z, batch_norm, name)`` applies ``batch_norm`` and
    then a new activation (adding ``residual`` in between, if given). With
    ``fuse_batch_norm`` and a ``HardThreshold`` or ``Staircase`` activation the
    pair is one ``keras_ftprop.BatchNormThreshold`` named as the batch norm (it
    holds the same weights), whose activation is named ``name``: it keeps no
    pre-activation for the backward pass. ReLU and other activations keep the
    separate layers.
    """

    def __init__(self, factory=None, fuse_batch_norm=True):
        if factory is None:
            factory = keras.layers.ReLU
        if not callable(factory):
            raise TypeError(
                "activation must be a zero-argument callable returning a Keras "
                f"layer (or None for ReLU), got {factory!r}; to choose an "
                "activation by name use models.get_model or "
                "models.activation_factory"
            )
        self._factory = factory
        self.fuse_batch_norm = bool(fuse_batch_norm)
        self.layers = []

    def __call__(self, inputs, name):
        return self._new(name)(inputs)

    def after_batch_norm(self, inputs, batch_norm, name, residual=None,
                         add_name=None):
        """activation(batch_norm(inputs) [+ residual]), fused when possible."""
        layer = self._new(name)
        if self.fuse_batch_norm and isinstance(layer, (HardThreshold, Staircase)):
            config = batch_norm.get_config()
            fused = BatchNormThreshold(activation=layer, **config)
            return fused(inputs if residual is None else [inputs, residual])
        x = batch_norm(inputs)
        if residual is not None:
            x = keras.layers.Add(name=add_name)([x, residual])
        return layer(x)

    def _new(self, name):
        layer = self._factory()
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "the activation factory must return a keras.layers.Layer, got "
                f"{type(layer).__name__}"
            )
        if any(layer is seen for seen in self.layers):
            raise ValueError(
                "the activation factory returned the same layer object twice; "
                "it must create a new layer on every call (e.g. "
                "`lambda: HardThreshold()`, not `lambda: shared_layer`)"
            )
        layer.name = name
        self.layers.append(layer)
        return layer


def model_input(input_shape, default_shape, input_tensor=None):
    """The ``keras.Input`` of a builder (channels-last ``(H, W, C)``)."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "these models are channels-last only; got "
            f"image_data_format={keras.config.image_data_format()!r}"
        )
    if input_tensor is not None:
        if not keras.utils.is_keras_tensor(input_tensor):
            raise TypeError(
                "input_tensor must be a symbolic Keras tensor (keras.Input), got "
                f"{type(input_tensor).__name__}"
            )
        if input_shape is not None and tuple(input_tensor.shape[1:]) != tuple(
            input_shape
        ):
            raise ValueError(
                f"input_shape={tuple(input_shape)} disagrees with the shape of "
                f"input_tensor {tuple(input_tensor.shape[1:])}"
            )
        return input_tensor
    shape = tuple(default_shape if input_shape is None else input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {shape}"
        )
    return keras.Input(shape=shape, name="input")


def builder_start(input_shape, default_shape, input_tensor, *, include_top, classes,
                  activation, fuse_batch_norm=True):
    """A builder's ``keras.Input`` and ``ActivationSites``; ``classes`` checked if ``include_top``."""
    if include_top:
        validate_classes(classes)
    return (model_input(input_shape, default_shape, input_tensor),
            ActivationSites(activation, fuse_batch_norm))


def pool_features(features, pooling):
    """``pooling`` of the keras.applications API, for ``include_top=False``."""
    if pooling is None:
        return features
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")


def predictions(features, classes, activation, weight_decay):
    """The ``classes``-way dense classifier of flat ``features``, named "predictions"."""
    return dense(classes, in_features=features.shape[-1], activation=activation,
                 weight_decay=weight_decay, name="predictions")(features)


def validate_classes(classes):
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be a positive integer, got {classes!r}")


def _pair(value):
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)
