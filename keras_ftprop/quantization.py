"""Quantization-aware copies of threshold networks: the Keras model computes what its int8 TFLite model computes.

    qat = deploy.quantization_aware(model, x_train[:500])   # same weights, the int8 rounding in the loop
    qat.compile(...); qat.fit(...)                          # fine-tune
    deploy.to_tflite(qat, x_train[:500])                    # the same integer codes

Each rounding that the int8 model applies is a TensorFlow fake-quant op in the copy, with the range the
export uses (so the export and the copy agree by construction, up to requantization ties):

    kernel     w_q = s round(w / s),  s = max|w| / 127 per output channel, codes in [-127, 127]
               (the converter's; batch norm folded in multiplies s by |f| and the codes by sign f);
               gradient straight through, d w_q / d w = 1
    input      x_q on the 256-code grid of its calibrated [min, max] (nudged so that 0 is a code)
    threshold  forward h(x_q), x_q on the export's pinned input range (``deploy``): the int8 compare;
               a step that the export fuses into its producer's requantization compares x itself
               (the int8 accumulator is exact); backward the threshold's own (FTPROP) at the unrounded x
    sum        each operand of an ``Add`` that is not a threshold's output (a residual branch's batch norm)
               on the 256-code grid of its calibrated range, as the int8 ADD requantizes its operands
    output     the logits on the 256-code grid of their calibrated range

The ranges are fixed when the copy is made (calibrated on ``representative_data``) and saved with it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_ftprop import layers as ftprop_layers

__all__ = ["quantization_aware", "FakeQuant", "QuantizedConv2D", "QuantizedDense", "QuantizedThreshold",
           "quantized_kernel", "kernel_codes", "nudged_range"]

_PACKAGE = "keras_ftprop"
KERNEL_LEVELS = 127  # narrow range: codes -127..127, zero point 0


def nudged_range(low, high):
    """[min, max] of 256 codes, scale (max - min)/255, containing [low, high] and 0, with 0 a code exactly.

    TensorFlow's fake quant and the converter nudge a range the same way; a range
    that is already nudged stays as it is in both.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high == low:
        high = low + 1.0
    scale = (high - low) / 255.0
    zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def quantized_kernel(kernel):
    """w_q = s round(w / s), s = max|w| / 127 per output channel (last axis); d w_q / d w = 1."""
    kernel = tf.convert_to_tensor(kernel)
    axes = list(range(len(kernel.shape) - 1))
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), 1e-30))
    # TensorFlow's per-channel fake quant (what keras.quantizers.fake_quant_with_min_max_vars, Keras >= 3.7,
    # calls on this backend): the converter recognises it, and it is in every TensorFlow we support.
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.cast(kernel, tf.float32), tf.cast(-bound, tf.float32), tf.cast(bound, tf.float32), num_bits=8,
        narrow_range=True)
    return tf.cast(quantized, kernel.dtype)


def kernel_codes(kernel):
    """(int codes in [-127, 127], per-channel scales) of ``quantized_kernel(kernel)``."""
    kernel = np.asarray(kernel, np.float32)
    scale = np.maximum(np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0), 1e-30) / KERNEL_LEVELS
    codes = np.round(np.asarray(quantized_kernel(kernel)) / scale).astype(np.int32)
    return codes, scale


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FakeQuant(keras.layers.Layer):
    """x_q on the int8 grid of [minimum, maximum] (256 codes); gradient 1 inside the range, 0 outside."""

    def __init__(self, minimum, maximum, **kwargs):
        super().__init__(**kwargs)
        self.minimum, self.maximum = float(minimum), float(maximum)

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_args(tf.cast(x, tf.float32), self.minimum, self.maximum,
                                                            num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "minimum": self.minimum, "maximum": self.maximum}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedConv2D(keras.layers.Conv2D):
    """``Conv2D`` whose kernel is ``quantized_kernel(kernel)`` (the int8 codes times their scales)."""

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, quantized_kernel(kernel))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedDense(keras.layers.Dense):
    """``Dense`` whose kernel is ``quantized_kernel(kernel)``: y = act(x w_q + b)."""

    def call(self, inputs, training=None):
        x = keras.ops.matmul(inputs, quantized_kernel(self.kernel))
        if self.bias is not None:
            x = keras.ops.add(x, self.bias)
        return x if self.activation is None else self.activation(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedThreshold(keras.layers.Layer):
    """A HardThreshold or Staircase that compares its input as the int8 model does.

    forward  y = h(x_q)  (the export's pinned compare; ``deploy`` builds the same ops)
    backward dy/dx = the threshold's own gradient at x (x_q only decides the side)

    ``max_abs``: the calibrated max|x| that fixes the step's pinned input range;
    ``scaled``: the export scales the input through the producer's weights (see ``deploy``);
    ``fused``: the export computes the step as its producer's requantization, on the exact accumulator:
    the forward is h(x), unrounded.
    """

    def __init__(self, threshold, max_abs, scaled, fused=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(threshold, dict):
            threshold = keras.saving.deserialize_keras_object(threshold)
        from keras_ftprop import deploy

        if not deploy.is_threshold(threshold):
            raise ValueError(f"QuantizedThreshold needs a HardThreshold or Staircase; got {threshold!r}")
        self.threshold = threshold
        self.max_abs, self.scaled, self.fused = float(max_abs), bool(scaled), bool(fused)

        self.input_range = None if self.fused else deploy.pinned_input_range(threshold, self.max_abs, self.scaled)
        self._compare = deploy.export_threshold(threshold, self.input_range)

    def build(self, input_shape):
        self.threshold.build(input_shape)

    def call(self, inputs):
        exact = self.threshold(inputs)  # the FTPROP backward
        rounded = self._compare(inputs)
        return tf.stop_gradient(rounded) + (exact - tf.stop_gradient(exact))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "threshold": keras.saving.serialize_keras_object(self.threshold),
                "max_abs": self.max_abs, "scaled": self.scaled, "fused": self.fused}


QUANTIZED = {keras.layers.Conv2D: QuantizedConv2D, keras.layers.Dense: QuantizedDense}
# Layers with weights that the int8 model computes as the float model does (batch norm folds into the kernel).
_EXACT_WITH_WEIGHTS = (keras.layers.BatchNormalization,)


def is_quantization_aware(model):
    return any(isinstance(layer, (FakeQuant, QuantizedConv2D, QuantizedDense, QuantizedThreshold))
               for layer in ftprop_layers.leaf_layers(model))


def quantization_aware(model, representative_data, calibration_samples=500):
    """A trainable copy of ``model`` (same weights) whose forward pass is its int8 TFLite model's.

    See the module docstring. ``representative_data`` (as ``deploy.to_tflite``'s)
    fixes the ranges of the input, the logits and the thresholds' inputs.

    Raises:
      ValueError: a layer with weights other than Conv2D, Dense and BatchNormalization (named), a threshold
        given as ``activation=``, a nested model holding thresholds, a layer called more than once.
    """
    from keras_ftprop import deploy

    if representative_data is None:
        raise ValueError("quantization_aware needs representative_data (a slice of the training inputs)")
    deploy._check_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    model, _ = deploy._unfused(model)
    for layer in ftprop_layers.leaf_layers(model):
        if (layer.weights and type(layer) not in QUANTIZED and not isinstance(layer, _EXACT_WITH_WEIGHTS)) \
                or isinstance(layer, keras.Model):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) cannot be made quantization-aware: only Conv2D "
                "and Dense kernels (and batch norms, which the export folds into them) are quantized")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("quantization_aware needs a model with one input and one output")
    producers, consumers = deploy._graph(model)
    fused, _ = deploy.fused_thresholds(model)
    pinned = [layer for layer in model.layers if deploy.is_threshold(layer)
              and deploy._only_input(layer) is not None and consumers[id(deploy._only_input(layer))] == 1]
    batches = list(deploy._representative_batches(representative_data, calibration_samples))
    # Operands of a sum that the int8 model requantizes before adding (a threshold's output is exact).
    # A threshold's output (through max pools and padding, as a residual shortcut) is already on its grid.
    summed = {layer.name: [i for i, t in enumerate(layer.input) if deploy.threshold_source(t, producers) is None]
              for layer in model.layers if isinstance(layer, keras.layers.Add)}
    operands = [(name, i) for name, indices in summed.items() for i in indices]
    max_abs, (input_low, input_high), (output_low, output_high), operand_ranges = _calibrate(
        model, pinned, [model.get_layer(name).input[i] for name, i in operands], batches)
    operand_quant = {key: FakeQuant(*nudged_range(*bounds), name=f"{key[0]}_in{key[1]}")
                     for key, bounds in zip(operands, operand_ranges)}

    def clone(layer):
        if type(layer) in QUANTIZED:
            return QUANTIZED[type(layer)].from_config(layer.get_config())
        if layer in pinned:
            is_fused = layer.name in fused
            scaled = (not is_fused and deploy._thresholds_of(layer) == [0.0] and max_abs[layer.name] > 0
                      and deploy._scalable_producer(layer, producers, consumers) is not None)
            threshold = layer.__class__.from_config({**layer.get_config(), "name": f"{layer.name}_unit"})
            return QuantizedThreshold(threshold, max_abs[layer.name], scaled, is_fused, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    inputs = keras.Input(batch_shape=model.inputs[0].shape, name=model.inputs[0].name.split(":")[0])
    input_quant = FakeQuant(*nudged_range(input_low, input_high), name="input_quant")
    rounded = []

    def call(layer, *args, **kwargs):  # every reader of the input reads it rounded
        def round_input(tensor):
            if tensor is not inputs:
                return tensor
            if not rounded:
                rounded.append(input_quant(inputs))
            return rounded[0]

        args = keras.tree.map_structure(round_input, args)
        if isinstance(layer, keras.layers.Add):
            args = ([operand_quant[(layer.name, i)](t) if (layer.name, i) in operand_quant else t
                     for i, t in enumerate(args[0])], *args[1:])
        return layer(*args, **kwargs)

    body = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone, call_function=call)
    logits = FakeQuant(*nudged_range(output_low, output_high), name="output_quant")(body.outputs[0])
    copy = keras.Model(inputs, logits, name=f"{model.name}_qat")
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def _calibrate(model, pinned, tensors, batches):
    """({threshold: max|input|}, (min, max) of the input, of the output, [(min, max) of each of ``tensors``])."""
    watched = [model.outputs[0]] + list(tensors)
    probe = keras.Model(model.inputs[0], watched + [layer.input for layer in pinned])
    maxima = np.zeros(len(pinned))
    low = high = 0.0
    lows, highs = np.zeros(len(watched)), np.zeros(len(watched))
    for batch in batches:
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        low, high = min(low, float(batch.min())), max(high, float(batch.max()))
        lows = np.minimum(lows, [float(tf.reduce_min(o)) for o in outputs[:len(watched)]])
        highs = np.maximum(highs, [float(tf.reduce_max(o)) for o in outputs[:len(watched)]])
        maxima = np.maximum(maxima, [float(tf.reduce_max(tf.abs(o))) for o in outputs[len(watched):]])
    ranges = list(zip(lows, highs))
    return dict(zip((layer.name for layer in pinned), maxima)), (low, high), ranges[0], ranges[1:]


def plain_model(model):
    """(the model the export converts, {threshold name: (max_abs, scaled, fused)}) of a quantization-aware
    ``model``.

    Quantized layers become their plain layer with the kernel w_q (on the int8 grid, so the converter
    rounds it to the same codes); each QuantizedThreshold becomes its threshold under the wrapper's name;
    FakeQuant layers stay (the converter takes their ranges).
    """
    recorded = {}

    def clone(layer):
        if isinstance(layer, QuantizedThreshold):
            recorded[layer.name] = (layer.max_abs, layer.scaled, layer.fused)
            return layer.threshold.__class__.from_config({**layer.threshold.get_config(), "name": layer.name})
        for plain, quantized in QUANTIZED.items():
            if type(layer) is quantized:
                return plain.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = layer.get_weights()
        if type(layer) in QUANTIZED.values():
            weights[0] = np.asarray(quantized_kernel(layer.kernel))
        copy.get_layer(layer.name).set_weights(weights)
    return copy, recorded
