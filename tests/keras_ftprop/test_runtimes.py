"""Every threshold decision of the int8 export is the same under XNNPACK's float32 requantization and TFLite's
fixed-point one (reference kernels, TFLite Micro): proved per op over every reachable accumulator value against
an independent numpy requantization, and observed on all three runtimes, tensor by tensor."""

import re

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from sklearn.datasets import load_digits

from keras_ftprop import HardThreshold, Staircase, deploy, micro
from keras_ftprop.deploy import input_staircases
from keras_ftprop.deploy.fused_weights import batch_norm_factor
from keras_ftprop.deploy.grids import kernel_codes
from keras_ftprop.deploy.quantized_layers import ExactStaircaseConv2D, QuantizedThreshold
from keras_ftprop.deploy.thresholds import levels_of, thresholds_of
from tests.keras_ftprop import requantization


def test_the_numpy_requantization_rounds_as_tflite_defines_it():
    assert requantization.quantize_multiplier(0.5) == (2**30, 0)
    assert requantization.quantize_multiplier(3.0) == (3 * 2**29, 2)
    acc = np.array([6, -6, 10, -10, 14])  # x / 4 = 1.5, -1.5, 2.5, -2.5, 3.5
    # M = 1/4 = 2**30 2**(-1 - 31): the high multiply is exact, the rounding shift rounds half away from 0
    np.testing.assert_array_equal(requantization.fixed_point(acc, 0.25), [2, -2, 3, -3, 4])
    np.testing.assert_array_equal(requantization.fixed_point(acc, 0.25, single=True), [2, -1, 3, -2, 4])  # half up
    np.testing.assert_array_equal(requantization.float32(acc, 0.25), [2, -2, 2, -2, 4])  # half to even
    # M = 1/2 (shift 0): the high multiply's nudge 1 - 2**30 rounds a negative half up, -1.5 to -1
    np.testing.assert_array_equal(requantization.fixed_point(acc // 2, 0.5), [2, -1, 3, -2, 4])
    # Double rounding: 3 / 8 = 0.375, the high multiply gives 3 / 2 -> 2, the shift 2 / 4 = 0.5 -> 1 (an error of
    # M = 1/8 before the last rounding); one rounding gives 0.
    assert requantization.fixed_point(np.array([3]), 0.125)[0] == 1
    assert requantization.fixed_point(np.array([3]), 0.125, single=True)[0] == 0


@pytest.fixture(scope="module")
def digits_network():
    """image -> conv1 -> pool -> step (decided on conv1's accumulator) -> conv2 -> BN -> step (fused) -> conv3
    -> BN -> pool -> staircase(3) (fused behind the pool) -> conv4 -> staircase(5) (fused) -> logits."""
    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 1), name="x")
    h = keras.layers.Conv2D(12, 3, padding="same", name="conv1")(x)
    h = HardThreshold(name="act1")(keras.layers.MaxPooling2D(name="pool1")(h))
    h = keras.layers.Conv2D(12, 3, padding="same", use_bias=False, name="conv2")(h)
    h = HardThreshold(name="act2")(keras.layers.BatchNormalization(name="bn2")(h))
    h = keras.layers.Conv2D(12, 3, padding="same", name="conv3")(h)
    h = keras.layers.MaxPooling2D(name="pool3")(keras.layers.BatchNormalization(name="bn3")(h))
    h = Staircase(3, name="act3")(h)
    h = Staircase(5, name="act4")(keras.layers.Conv2D(8, 3, padding="same", name="conv4")(h))
    model = keras.Model(x, keras.layers.Dense(10, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, digits.target, epochs=2, batch_size=64, verbose=0)
    for name in ("bn2", "bn3"):  # positive scales (the staircase behind the pool needs it), varied
        bn = model.get_layer(name)
        bn.gamma.assign(np.abs(bn.gamma.numpy()) + 0.1)
    flatbuffer = deploy.to_tflite(model, images[:300], io_dtype="int8")
    return model, images, flatbuffer


def _operators(flatbuffer):
    """[(op name, {inputs, outputs: tensors with name, scale, zero point, data}, fused activation)]."""
    m = schema.ModelT.InitFromPackedBuf(bytes(flatbuffer), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = m.subgraphs[0]

    def tensor(i):
        t = graph.tensors[i]
        data = m.buffers[t.buffer].data
        dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}.get(t.type)
        q = t.quantization
        return dict(name=t.name.decode(), scale=np.asarray(q.scale if q and q.scale is not None else [], np.float32),
                    zero_point=np.asarray(q.zeroPoint if q and q.zeroPoint is not None else [], np.int64),
                    data=None if data is None or dtype is None else np.frombuffer(bytes(data), dtype))

    ops = []
    for op in graph.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        ops.append((name, [tensor(i) for i in op.inputs if i >= 0], tensor(op.outputs[0]), activation))
    return ops


def _producer_op(ops, producer):
    found = [op for op in ops if op[0] == "CONV_2D" and re.search(rf"/{producer}_\d+/", op[2]["name"])]
    assert len(found) == 1, producer
    return found[0]


def _clamp(output, activation):
    z, s = int(output["zero_point"][0]), float(output["scale"][0])
    if activation == 1:  # RELU
        return max(z, -128), 127
    if activation == 2:  # RELU_N1_TO_1
        return max(z + round(-1 / s), -128), min(z + round(1 / s), 127)
    assert activation == 0
    return -128, 127


def _reachable(codes, low, high):
    """[lowest, highest] per output channel of sum code * v over inputs v in [low, high]: every multiple of
    the input step between them is a superset of the reachable accumulators (without bias)."""
    positive, negative = np.clip(codes, 0, None).sum(0), np.clip(codes, None, 0).sum(0)
    return positive * low + negative * high, positive * high + negative * low


def test_every_decision_is_the_same_in_both_arithmetics_at_every_reachable_accumulator(digits_network):
    """Per channel of each decision's producer: every accumulator value between the extremes the input grid
    allows (the bias taken from the flatbuffer), requantized in fixed point (double and single rounding) and
    in float32, gives the same decision, that of the real pre-activation's sign or level."""
    model, _, flatbuffer = digits_network
    report = flatbuffer.report
    assert report.fused == {"act2": "conv2", "act3": "conv3", "act4": "conv4"}
    assert "decided on its exact accumulator" in report.unfused["act1"]
    ops = _operators(flatbuffer)
    # (threshold, producer, batch norm, input grid: step, lowest and highest input minus zero point)
    sites = [("act1", "conv1", None, 1, 0, 255), ("act2", "conv2", "bn2", 127, -127, 127),
             ("act3", "conv3", "bn3", 127, -127, 127), ("act4", "conv4", None, 85, 0, 255)]
    checked = 0
    for threshold, producer, batch_norm, step, low, high in sites:
        _, (inp, weights, bias), out, activation = _producer_op(ops, producer)
        clamp = _clamp(out, activation)
        layer = model.get_layer(producer)
        kernel = layer.kernel.numpy().astype(np.float64)
        real_bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
        f, c = batch_norm_factor(model.get_layer(batch_norm)) if batch_norm else (np.ones_like(real_bias), 0.0)
        keras_codes, keras_scale = kernel_codes(kernel)
        fb_codes = np.moveaxis(weights["data"].reshape(len(real_bias), -1), 0, -1)
        np.testing.assert_array_equal(fb_codes, np.sign(f) * keras_codes.reshape(-1, len(real_bias)))
        s_in = float(inp["scale"][0])
        lowest, highest = _reachable(keras_codes.reshape(-1, len(real_bias)), low, high)
        for ch in range(len(real_bias)):
            acc = np.arange(lowest[ch], highest[ch] + 1, step)  # low and high are multiples of the step
            # the real pre-activation: f (s_in s_w acc + b) + c, its decision in float64, ties left out
            x = f[ch] * (s_in * keras_scale[ch] * acc + real_bias[ch]) + (c[ch] if batch_norm else 0.0)
            levels = deploy_levels(model.get_layer(threshold), x)
            keep = ~near_threshold(model.get_layer(threshold), x, s_in * keras_scale[ch] * abs(f[ch]))
            real = float(inp["scale"][0]) * float(weights["scale"][ch]) / float(out["scale"][0])
            fb_acc = np.sign(f[ch]) * acc + int(bias["data"][ch])
            got = {name: requantization.output_codes(fb_acc, real, int(out["zero_point"][0]), *clamp, name)
                   for name in requantization.ARITHMETICS}
            np.testing.assert_array_equal(got["fixed_point"], got["float32"], err_msg=f"{producer} channel {ch}")
            np.testing.assert_array_equal(got["single_rounding"], got["float32"])
            decided = decision(model.get_layer(threshold), got["float32"], out)
            np.testing.assert_array_equal(decided[keep], levels[keep], err_msg=f"{producer} channel {ch}")
            checked += keep.sum()
    assert checked > 10**6


def test_the_logits_are_the_same_code_in_every_arithmetic_at_every_reachable_accumulator(digits_network):
    """The output layer reads act4's codes (0, 51, ..., 255 above the zero point): over every accumulator its
    int8 kernel and bias can reach, fixed point (double and single rounding) and float32 write the same logit
    code, round(acc / (m n_c)), which no accumulator comes within (m - 1) / 2 units of a half of."""
    _, _, flatbuffer = digits_network
    ((_, (inp, weights, bias), out, _),) = [op for op in _operators(flatbuffer) if op[0] == "FULLY_CONNECTED"]
    channels, m = len(bias["data"]), 51
    codes = weights["data"].reshape(channels, -1).T.astype(np.int64)
    lowest, highest = _reachable(codes, 0, 5)  # level indices k = (code - z) / m in [0, 5]
    checked = 0
    for ch in range(channels):
        acc = int(bias["data"][ch]) + m * np.arange(lowest[ch], highest[ch] + 1)
        s_w = float(weights["scale"][ch if len(weights["scale"]) > 1 else 0])  # per channel, or per tensor
        real = float(inp["scale"][0]) * s_w / float(out["scale"][0])
        steps = round(1 / (real * m))
        assert abs(real * m * steps - 1) < 1e-6  # M_c = 1 / (m n_c)
        ratio = acc / (m * steps)
        assert np.abs(ratio - np.floor(ratio) - 0.5).min() * m * steps >= (m - 1) / 2 - 1e-6
        got = {name: requantization.output_codes(acc, real, int(out["zero_point"][0]), -128, 127, name)
               for name in requantization.ARITHMETICS}
        want = np.clip(np.round(ratio) + int(out["zero_point"][0]), -128, 127)
        for name, value in got.items():
            np.testing.assert_array_equal(value, want, err_msg=f"channel {ch} {name}")
        checked += len(acc)
    assert checked > 5 * 10**4


def deploy_levels(threshold, x):
    """The threshold's level at each real pre-activation x: levels[sum_k 1[x > t_k]]."""
    levels, _ = levels_of(threshold)
    return np.array(levels)[(x[:, None] > np.array(thresholds_of(threshold))).sum(-1)]


def near_threshold(threshold, x, unit):
    """x within a thousandth of an accumulator unit of a threshold: float64 ties, left out."""
    return (np.abs(x[:, None] - np.array(thresholds_of(threshold))) < 1e-3 * unit).any(-1)


def decision(threshold, codes, out):
    """The level a producer's output codes stand for: the sign of the code for a step compared on its
    accumulator (its compare takes code > 0), else the fused output's level (each one code exactly)."""
    z, s = int(out["zero_point"][0]), float(out["scale"][0])
    if threshold.name == "act1":
        return np.where(codes > 0, 1.0, -1.0)
    levels = np.array(levels_of(threshold)[0])
    values = (codes - z) * s
    nearest = np.abs(values[:, None] - levels).argmin(-1)
    np.testing.assert_allclose(values, levels[nearest], rtol=0, atol=1e-6)  # on a level's code
    return levels[nearest]


def clear_of_float32(qat, names, images, reach=1e-5):
    """Per image: whether every unit of the quantization-aware ``qat``'s thresholds ``names`` that it compares
    unrounded (decided on an exact accumulator in the int8 model) has its float32 pre-activation more than
    ``reach`` from each threshold, so that no CPU's float32 rounding can decide it differently."""
    layers = [qat.get_layer(name) for name in names]
    inputs = keras.Model(qat.inputs, [layer.input for layer in layers]).predict(images, verbose=0)
    clear = np.ones(len(images), bool)
    for layer, x in zip(layers, inputs if len(layers) > 1 else [inputs]):
        distance = np.abs(x[..., None] - np.array(thresholds_of(layer.threshold))).min(-1)
        clear &= (distance > reach).reshape(len(images), -1).all(1)
    return clear


def _interpreter(flatbuffer, resolver=None):
    kwargs = {} if resolver is None else {"experimental_op_resolver_type": resolver}
    interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True, **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def _image_codes(flatbuffer, images):
    """The int8 codes of ``images`` on the model's input grid, rounded half up as the copy's fake quant does."""
    (inp,) = _interpreter(flatbuffer).get_input_details()
    scale, zero_point = inp["quantization"]
    return np.clip(np.floor(images / scale + 0.5) + zero_point, -128, 127).astype(np.int8)


def _every_int8_tensor(flatbuffer, codes):
    """({tensor index: name}, {"xnnpack" | "reference" | "tflm": {tensor index: codes over the examples}}, the
    output's index): every int8 tensor on XNNPACK and the reference kernels, the output under TFLite Micro."""
    interpreters = {"xnnpack": _interpreter(flatbuffer), "reference": _interpreter(flatbuffer,
                                                                                   OpResolverType.BUILTIN_REF)}
    (inp,) = interpreters["xnnpack"].get_input_details()
    (out,) = interpreters["xnnpack"].get_output_details()
    details = interpreters["xnnpack"].get_tensor_details()
    int8_tensors = [t["index"] for t in details if t["dtype"] == np.int8]
    values = {name: {i: [] for i in int8_tensors} for name in interpreters}
    for example in codes:
        for name, interpreter in interpreters.items():
            interpreter.set_tensor(inp["index"], example[None])
            interpreter.invoke()
            for i in int8_tensors:
                values[name][i].append(interpreter.get_tensor(i).copy())
    values = {name: {i: np.stack(v) for i, v in by_tensor.items()} for name, by_tensor in values.items()}
    (tflm,) = micro.run(flatbuffer, codes)
    values["tflm"] = {out["index"]: tflm[:, None]}
    return {t["index"]: t["name"] for t in details}, values, out["index"]


def _assert_every_int8_tensor_is_the_same(flatbuffer, codes):
    """XNNPACK and the reference kernels write the same codes into every int8 tensor, the logits included
    (``keras_ftprop.deploy.logits``), and TFLite Micro the same output. Returns the output codes."""
    assert flatbuffer.report.logits.startswith("the same codes"), flatbuffer.report.logits
    names, values, output = _every_int8_tensor(flatbuffer, codes)
    for i in values["xnnpack"]:  # the image, every threshold's input and output, max pools, the logits
        np.testing.assert_array_equal(values["xnnpack"][i], values["reference"][i], err_msg=names[i])
    np.testing.assert_array_equal(values["tflm"][output], values["reference"][output])
    return values["xnnpack"][output][:, 0].astype(int)


def test_xnnpack_reference_kernels_and_tflite_micro_give_the_same_codes_for_every_unit(digits_network):
    _, images, flatbuffer = digits_network
    assert "'logits' requantized by M_c = 1 / (m n_c)" in flatbuffer.report.logits
    assert "m = 51" in flatbuffer.report.logits
    logits = _assert_every_int8_tensor_is_the_same(flatbuffer, _image_codes(flatbuffer, images[:200]))
    assert len(np.unique(logits.argmax(-1))) >= 8  # a network that decides something


def test_quantization_aware_copy_decides_every_unit_as_its_int8_model_on_both_runtimes(digits_network):
    """The copy decides every step and staircase from its integer accumulator as the export does, so each of its
    threshold units is its int8 model's (on the copy's own input codes)."""
    model, images, _ = digits_network
    images = images[:300]
    qat = deploy.quantization_aware(model, images)
    # the steps' producers decide as the export does: the image (s_in 1/255, m = 1), +-1 codes (1/127, 127)
    assert qat.get_layer("conv1").step == {"input_scale": pytest.approx(1 / 255), "input_step": 1}
    assert qat.get_layer("conv2").step == {"input_scale": pytest.approx(1 / 127), "input_step": 127}
    assert qat.get_layer("conv2").batch_norm.name == "bn2" and qat.get_layer("conv1").batch_norm is None
    # the staircases after codes: their levels from the integer accumulator and the export's gates
    assert qat.get_layer("conv3").staircase["input_step"] == 127 and qat.get_layer("conv3").batch_norm.name == "bn3"
    assert qat.get_layer("conv4").staircase["input_step"] == 85 and qat.get_layer("conv4").batch_norm is None
    assert qat.get_layer("logits").input_unit is None  # exact through its own grids instead:
    assert qat.get_layer("logits").logits["input_step"] == 51  # act4's codes, 5 steps apart
    flatbuffer = deploy.to_tflite(qat, images, io_dtype="int8")
    names = ["act1", "act2", "act3", "act4"]
    probe = keras.Model(qat.inputs, [qat.get_layer(n).output for n in names] + [qat.get_layer("input_quant").output])
    outputs = [np.asarray(t) for t in probe(images)]
    want, rounded = outputs[:4], outputs[4]
    for resolver in (None, OpResolverType.BUILTIN_REF):
        interpreter = _interpreter(flatbuffer, resolver)
        (inp,) = interpreter.get_input_details()
        scale, zero_point = inp["quantization"]
        codes = np.clip(np.round(rounded / scale) + zero_point, -128, 127).astype(np.int8)
        by_name = {t["name"]: t for t in interpreter.get_tensor_details()}
        got = {name: [] for name in names}
        (out,) = interpreter.get_output_details()
        outputs = []
        for example in codes:
            interpreter.set_tensor(inp["index"], example[None])
            interpreter.invoke()
            for name in names:
                detail = by_name[flatbuffer.report.activation_tensors[name][1]]
                s, z = detail["quantization"]
                got[name].append((interpreter.get_tensor(detail["index"])[0].astype(np.float64) - z) * s)
            outputs.append(interpreter.get_tensor(out["index"])[0].astype(np.float64))
        assert_copy_logits_are_the_codes(qat, images, np.stack(outputs), out, flatbuffer.report)
        for name, expected in zip(names, want):  # decided by the copy as by the export, at every unit
            np.testing.assert_allclose(np.stack(got[name]), expected, rtol=0, atol=1e-6, err_msg=name)


def test_a_fused_staircase_requantization_decides_alike_in_every_arithmetic_for_any_gates():
    """``_requantization_for`` on random gates (3 and 5 steps, their input grids m = 85 and 51): every
    accumulator value m j + B requantized by M = 1 / (P m) in fixed point (double and single rounding) and
    float32 gives level #{k: j >= G_k}. Without the one accumulator unit of room, fixed point misses."""
    from keras_ftprop.deploy import fused_weights

    rng = np.random.default_rng(0)
    solved = 0
    for _ in range(200):
        steps = int(rng.choice([3, 5]))
        m = 255 // steps
        natural = rng.uniform(0.5, 40)  # accumulator values j per level
        gates = np.floor(np.cumsum(rng.uniform(0.7, 1.3, steps) * natural) + rng.integers(-50, 50))
        solution = fused_weights._requantization_for(gates - 1, gates, np.arange(steps) + 0.5, m, natural)
        if solution is None:
            continue
        per_level, bias = solution
        j = np.arange(gates.min() - 3 * natural - 5, gates.max() + 3 * natural + 5).astype(np.int64)
        want = (j[:, None] >= gates).sum(-1)
        for arithmetic in requantization.ARITHMETICS:
            got = requantization.output_codes(m * j + bias, 1.0 / (per_level * m), 0, 0, steps, arithmetic)
            np.testing.assert_array_equal(got, want, err_msg=arithmetic)
        solved += 1
    assert solved > 25


def _image_staircase_model(seed=3, norm_after_pool=False):
    """image -> conv1 -> pool -> staircase(3) (decided on conv1's accumulator) -> conv2 -> BN -> step (fused)
    -> logits, trained 2 epochs on digits; ``norm_after_pool``: a batch norm between pool and staircase."""
    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1), name="x")
    h = keras.layers.MaxPooling2D(name="pool1")(keras.layers.Conv2D(12, 3, padding="same", name="conv1")(x))
    if norm_after_pool:
        h = keras.layers.BatchNormalization(name="bn1")(h)
    h = Staircase(3, name="act1")(h)
    h = keras.layers.Conv2D(12, 3, padding="same", use_bias=False, name="conv2")(h)
    h = HardThreshold(name="act2")(keras.layers.BatchNormalization(name="bn2")(h))
    model = keras.Model(x, keras.layers.Dense(10, name="logits")(keras.layers.Flatten(name="flatten")(h)))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, digits.target, epochs=2, batch_size=64, verbose=0)
    return model, images


@pytest.fixture(scope="module")
def image_staircase_network():
    """The image staircase network with its int8 export (int8 input and output)."""
    model, images = _image_staircase_model()
    return model, images, deploy.to_tflite(model, images[:300], io_dtype="int8")


@pytest.fixture(scope="module")
def unplaceable_image_staircase_network():
    """The same, with conv1's channel 0 scaled by 1/64 (its weights and bias): 64 times the accumulator units
    per level, beyond what one requantization places alike in float32 and fixed point, so the export decides
    the staircase with one copy of conv1 per threshold."""
    model, images = _image_staircase_model()
    conv1 = model.get_layer("conv1")
    kernel, bias = conv1.get_weights()
    kernel[..., 0] /= 64
    bias[0] /= 64
    conv1.set_weights([kernel, bias])
    return model, images, deploy.to_tflite(model, images[:300], io_dtype="int8")


def test_a_staircase_on_the_image_is_one_requantization_alike_in_every_arithmetic(image_staircase_network):
    """conv1 writes the staircase's level with the multiplier and bias of ``input_staircases.placement``: over
    every reachable accumulator of every channel, fixed point (double and single rounding) and float32
    requantization with the flatbuffer's own scales give the level the copy computes (``decided_levels``), and
    that level is the float staircase's wherever the placement left the thresholds' gates in place."""
    model, _, flatbuffer = image_staircase_network
    report = flatbuffer.report
    assert report.fused == {"act1": "conv1", "act2": "conv2"}, report.unfused
    assert report.ops[("CONV_2D", "INT8")] == 2 and ("ADD", "INT8") not in report.ops
    _, (inp, weights, bias), out, activation = _producer_op(_operators(flatbuffer), "conv1")
    layer = model.get_layer("conv1")
    codes = np.asarray(input_staircases.folded_codes(layer.kernel, None)).reshape(-1, 12)
    np.testing.assert_array_equal(weights["data"].reshape(12, -1).T, codes)
    zero_point = int(out["zero_point"][0])
    assert activation == 1 and zero_point == 124  # RELU onto one code per level, 124..127
    s_in = float(inp["scale"][0])
    thresholds = thresholds_of(model.get_layer("act1"))
    lowest, highest = _reachable(codes, 0, 255)
    checked = 0
    for ch in range(12):
        acc = np.arange(lowest[ch], highest[ch] + 1)
        want = np.asarray(input_staircases.decided_levels(
            acc[:, None].astype(np.float64) * np.eye(12)[ch], layer.kernel, layer.bias, None, s_in, 255,
            thresholds))[:, ch]
        real = s_in * float(weights["scale"][ch]) / float(out["scale"][0])
        for name in requantization.ARITHMETICS:
            got = requantization.output_codes(acc + int(bias["data"][ch]), real, zero_point, zero_point, 127, name)
            np.testing.assert_array_equal(got - zero_point, want, err_msg=f"channel {ch} {name}")
        checked += len(acc)
    assert checked > 10**5


def test_a_staircase_channel_one_requantization_cannot_place_is_one_exact_compare_per_threshold(
        unplaceable_image_staircase_network):
    """Each copy k of conv1 writes clip(round(M_k (acc + B_k)), 0, 2) with an integer B_k: over every reachable
    accumulator, fixed point (double and single rounding) and float32 write 2 exactly where the real
    pre-activation s_in s_w acc + b exceeds t_k (float64, ties left out), 0 elsewhere."""
    model, _, flatbuffer = unplaceable_image_staircase_network
    report = flatbuffer.report
    assert report.fused == {"act2": "conv2"} and "decided on its exact accumulator" in report.unfused["act1"]
    assert "channel(s) [0]" in report.unfused["act1"]
    assert report.ops[("CONV_2D", "INT8")] == 3 + 1 and report.ops[("ADD", "INT8")] == 2
    ops = _operators(flatbuffer)
    layer = model.get_layer("conv1")
    kernel, real_bias = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
    keras_codes, keras_scale = kernel_codes(kernel)
    keras_codes = keras_codes.reshape(-1, len(real_bias))
    lowest, highest = _reachable(keras_codes, 0, 255)  # the image's codes minus its zero point
    thresholds = thresholds_of(model.get_layer("act1"))
    checked = 0
    for k, threshold in enumerate(thresholds):
        _, (inp, weights, bias), out, activation = _producer_op(ops, f"conv1_t{k}")
        assert activation == 1 and int(out["zero_point"][0]) == 125  # RELU onto codes {125, 127}
        np.testing.assert_array_equal(weights["data"].reshape(len(real_bias), -1).T, keras_codes)
        s_in = float(inp["scale"][0])
        for ch in range(len(real_bias)):
            acc = np.arange(lowest[ch], highest[ch] + 1)
            x = s_in * keras_scale[ch] * acc + real_bias[ch]
            keep = np.abs(x - threshold) > 1e-3 * s_in * keras_scale[ch]
            real = s_in * float(weights["scale"][ch]) / float(out["scale"][0])
            got = {name: requantization.output_codes(acc + int(bias["data"][ch]), real, 125, 125, 127, name)
                   for name in requantization.ARITHMETICS}
            for name in ("fixed_point", "single_rounding"):
                np.testing.assert_array_equal(got[name], got["float32"], err_msg=f"copy {k} channel {ch} {name}")
            np.testing.assert_array_equal(got["float32"][keep], np.where(x > threshold, 127, 125)[keep])
            checked += keep.sum()
    assert checked > 10**5


@pytest.mark.parametrize("network", ["image_staircase_network", "unplaceable_image_staircase_network"])
def test_a_staircase_on_the_image_gives_the_same_codes_on_every_runtime_and_in_the_copy(network, request):
    """XNNPACK, the reference kernels and TFLite Micro write the same codes (``_assert_every_int8_tensor_is_the_same``),
    and the quantization-aware copy's levels (``ExactStaircaseConv2D``, from its integer accumulator) are its
    int8 model's at every unit, one requantization or one copy per threshold, and so are its logits."""
    model, images, flatbuffer = request.getfixturevalue(network)
    _assert_every_int8_tensor_is_the_same(flatbuffer, _image_codes(flatbuffer, images[:200]))

    qat = deploy.quantization_aware(model, images[:300])
    assert isinstance(qat.get_layer("conv1"), ExactStaircaseConv2D)
    exported = deploy.to_tflite(qat, images[:300], io_dtype="int8")
    assert ("act1" in exported.report.fused) == (network == "image_staircase_network")
    probe = keras.Model(qat.inputs, [qat.get_layer("act1").output, qat.get_layer("input_quant").output])
    want, rounded = (np.asarray(t) for t in probe(images[:300]))
    for resolver in (None, OpResolverType.BUILTIN_REF):
        got, outputs, out = _runtime_levels(exported, "act1", rounded, resolver)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # every unit
        assert_copy_logits_are_the_codes(qat, images[:300], outputs, out, exported.report)


def test_a_staircase_on_the_image_whose_batch_norm_reads_a_pool_keeps_the_copys_exact_compare():
    """conv1 -> pool -> bn1 -> staircase: the copy cannot compute that batch norm inside conv1's layer, so it
    compares its float32 pre-activation with the float thresholds; the export then decides the staircase with
    one copy of conv1 per threshold (the same compare, exact), not with the placed requantization, whose moved
    boundaries the copy would not share. Copy and int8 model agree at every unit out of float32's reach of a
    threshold, and every runtime writes the same codes."""
    model, images = _image_staircase_model(norm_after_pool=True)
    images = images[:300]
    qat = deploy.quantization_aware(model, images)
    assert not isinstance(qat.get_layer("conv1"), ExactStaircaseConv2D)
    exported = deploy.to_tflite(qat, images, io_dtype="int8")
    report = exported.report
    assert "act1" not in report.fused and "act2" in report.fused, report.unfused
    assert "batch norm 'bn1' does not read 'conv1' directly" in report.unfused["act1"]
    assert "one copy of its producer per threshold" in report.unfused["act1"]
    assert report.ops[("CONV_2D", "INT8")] == 3 + 1 and report.ops[("ADD", "INT8")] == 2
    _assert_every_int8_tensor_is_the_same(exported, _image_codes(exported, images[:100]))
    probe = keras.Model(qat.inputs, [qat.get_layer(name).output for name in ("act1", "input_quant")]
                        + [qat.get_layer("act1").input])
    want, rounded, pre = (np.asarray(t) for t in probe(images))
    clear = np.abs(pre[..., None] - np.array(thresholds_of(qat.get_layer("act1").threshold))).min(-1) > 1e-5
    assert clear.mean() > 0.99 and len(np.unique(want)) >= 3  # a staircase, not a step
    got, _, _ = _runtime_levels(exported, "act1", rounded)
    np.testing.assert_allclose(got[clear], want[clear], rtol=0, atol=1e-6)


def _runtime_levels(flatbuffer, name, rounded, resolver=None):
    """(the values of threshold ``name``'s int8 output, the output codes, the output's details) of the int8
    model on the images that the copy rounded to ``rounded``."""
    interpreter = _interpreter(flatbuffer, resolver)
    (inp,) = interpreter.get_input_details()
    scale, zero_point = inp["quantization"]
    detail = next(t for t in interpreter.get_tensor_details()
                  if t["name"] == flatbuffer.report.activation_tensors[name][1])
    s, z = detail["quantization"]
    (out,) = interpreter.get_output_details()
    got, outputs = [], []
    for example in np.clip(np.round(rounded / scale) + zero_point, -128, 127).astype(np.int8):
        interpreter.set_tensor(inp["index"], example[None])
        interpreter.invoke()
        got.append((interpreter.get_tensor(detail["index"])[0].astype(np.float64) - z) * s)
        outputs.append(interpreter.get_tensor(out["index"])[0].astype(np.float64))
    return np.stack(got), np.stack(outputs), out


def assert_copy_logits_are_the_codes(qat, images, codes, out, report):
    """The copy's logits are the int8 model's output ``codes``, every one (``keras_ftprop.deploy.logits``), in
    each row none of whose threshold units is within float32 reach (1e-5) of a threshold, as a CPU's float
    kernels may put such a unit on either side."""
    assert report.logits.startswith("the same codes"), report.logits
    s, z = out["quantization"]
    copy = np.asarray(qat(images)) / s + z
    np.testing.assert_allclose(copy, np.round(copy), rtol=0, atol=1e-3)  # the copy writes codes
    thresholds = [layer for layer in qat.layers if isinstance(layer, QuantizedThreshold)]
    inputs = keras.Model(qat.inputs, [layer.input for layer in thresholds])(images)
    clear = np.ones(len(images), bool)
    for layer, x in zip(thresholds, inputs):
        near = np.abs(np.asarray(x)[..., None] - np.array(thresholds_of(layer.threshold))).min(-1) <= 1e-5
        clear &= ~near.reshape(len(images), -1).any(-1)
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(np.round(copy)[clear], codes[clear])


def test_a_staircase_channel_of_small_weights_is_placed_below_the_float32_exact_range():
    """A channel of small weights (a trained convnet8's conv3): 123,566 input steps per level, so the natural
    multiplier puts the top thresholds beyond 2^24 accumulator units, and only the first gate is reachable.
    The requantization is found below 2^24 / (m (n - 1/2)) and decides every reachable accumulator alike in
    every arithmetic (it was not, and the site was left unfused)."""
    from keras_ftprop.deploy import fused_weights

    m, gates, reach = 85, np.array([2421.0, np.inf, np.inf]), 43515
    low, high = np.array([2420.0, reach, reach]), np.array([2421.0, np.inf, np.inf])
    solution = fused_weights._requantization_for(low, high, np.arange(3) + 0.5, m, 123565.9)
    assert solution is not None
    per_level, bias = solution
    assert 2.5 * per_level * m < 2**24
    j = np.arange(-reach, reach + 1).astype(np.int64)
    want = (j[:, None] >= gates).sum(-1)
    for arithmetic in requantization.ARITHMETICS:
        got = requantization.output_codes(m * j + bias, 1.0 / (per_level * m), 0, 0, 3, arithmetic)
        np.testing.assert_array_equal(got, want, err_msg=arithmetic)
