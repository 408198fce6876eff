"""Hidden activations by name, as zero-argument layer factories.

    name              layer                                        paper name
    "step"            keras_ftprop.HardThreshold (-1/+1)           step
    "staircase"       keras_ftprop.Staircase(steps) on [0, 1]      quantized ReLU
    "relu"            keras.layers.ReLU                            ReLU
    "saturated_relu"  keras_ftprop.SaturatedReLU, min(max(x,0),1)  saturated ReLU

``target_loss`` and ``scale_by_grad`` configure the backward pass of "step" and
"staircase" (FTP-SH is ``target_loss="soft_hinge"``, the SSTE baseline is
``"sste"``); ``steps`` is the staircase's number of steps.
"""

import keras

import keras_ftprop

ACTIVATION_NAMES = ("step", "staircase", "relu", "saturated_relu")
"""The names `activation_factory` and `get_model` accept, as in the table above."""


def activation_factory(activation, target_loss="soft_hinge", steps=3,
                       scale_by_grad=True):
    """A zero-argument callable that returns a new activation layer per call.

    Raises ValueError for an unknown activation name, an unknown target loss
    (the error of ``keras_ftprop.target_losses.get``, raised whatever the
    activation so that a misspelt configuration fails early) or, for
    "staircase", invalid ``steps``.
    """
    keras_ftprop.target_losses.get(target_loss)

    if activation == "step":
        return lambda: keras_ftprop.HardThreshold(
            target_loss=target_loss, scale_by_grad=scale_by_grad
        )
    if activation == "staircase":
        steps, _, _ = keras_ftprop.ops.check_staircase_args(steps, 0.0, 1.0)
        return lambda: keras_ftprop.Staircase(
            steps=steps, target_loss=target_loss, scale_by_grad=scale_by_grad
        )
    if activation == "relu":
        return keras.layers.ReLU
    if activation == "saturated_relu":
        return keras_ftprop.SaturatedReLU
    raise ValueError(
        f"unknown activation {activation!r}; valid names are "
        f"{', '.join(repr(name) for name in ACTIVATION_NAMES)}"
    )

