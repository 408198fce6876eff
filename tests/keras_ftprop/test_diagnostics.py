import glob
import importlib.util
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import BatchNormThreshold, HardThreshold, Staircase
from keras_ftprop.callbacks import TargetDiagnostics


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, name="d1"),
            HardThreshold(name="h1"),
            keras.layers.Dense(6, name="d2"),
            Staircase(steps=3, target_loss="sste", name="s1"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    kernel, bias = model.get_layer("d2").get_weights()
    kernel[2:4] = 0.0  # h1 units 2 and 3 feed nothing: g = 0, no target
    model.get_layer("d2").set_weights([kernel, bias])
    return model


def _data(n=32):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, size=n)


def _expected(model, x, y):
    """The statistics restated in numpy from one forward/backward pass."""
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    d1, h1, d2, s1, out = model.layers
    with tf.GradientTape(persistent=True) as tape:
        x1 = d1(x)
        y1 = h1(x1)
        x2 = d2(y1)
        y2 = s1(x2)
        loss = ce(y, out(y2))
    result = {}
    for name, pre, post, unit in [
        ("h1", x1, y1, lambda v: v),
        ("s1", x2, y2, lambda v: 2.0 * v - 1.0),
    ]:
        g = tape.gradient(loss, post).numpy()
        u = unit(pre.numpy())
        t = -np.sign(g)
        targeted = t != 0
        agree = np.where(u > 0, 1.0, -1.0) == t
        result[f"{name}/target_none"] = np.mean(~targeted)
        result[f"{name}/target_satisfied"] = np.sum(agree & targeted) / np.sum(targeted)
        if name == "h1":  # soft hinge: always active, loss tanh(-u t) + 1
            result[f"{name}/target_active"] = 1.0
            result[f"{name}/target_loss"] = np.sum(np.where(targeted, np.tanh(-u * t) + 1, 0)) / np.sum(targeted)
        else:  # sste: active inside |u| <= 1
            result[f"{name}/target_active"] = np.sum((np.abs(u) <= 1) & targeted) / np.sum(targeted)
    return result


@pytest.mark.parametrize("mode", ["eager", "jit", "mirrored"])
def test_statistics_match_numpy(mode, tmp_path):
    x, y = _data()
    reference = _model()
    expected = _expected(reference, x, y)
    assert expected["h1/target_none"] >= 2 / 8  # the two cut units, plus any the sste window blocks

    def compile_(model):
        model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=mode.endswith("jit"), run_eagerly=mode == "eager")

    if mode.startswith("mirrored"):
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")[:2]],
                                                  cross_device_ops=tf.distribute.ReductionToOneDevice())
        with strategy.scope():
            model = _model()
            compile_(model)
    else:
        model = _model()
        compile_(model)
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    diagnostics = TargetDiagnostics(every=2, log_dir=str(tmp_path) if tensorboard else None, probe_data=x)
    history = model.fit(x, y, batch_size=len(x), epochs=5, shuffle=False, verbose=0, callbacks=[diagnostics])

    assert [step for step, _ in diagnostics.history] == [0, 2, 4]
    for _, values in diagnostics.history:  # lr = 0: every logged step sees the same batch and weights
        for key, value in expected.items():
            assert values[key] == pytest.approx(value, rel=1e-5), key
        assert "s1/target_loss" not in values  # sste has no loss
    assert diagnostics.history[-1][1]["h1/flipped"] == 0.0  # unchanged weights: nothing flips
    assert history.history["h1/target_satisfied"][-1] == pytest.approx(expected["h1/target_satisfied"])

    if not tensorboard:
        pytest.skip("tensorboard is not installed: no event files to read")
    tags = set()
    for path in glob.glob(str(tmp_path / "diagnostics" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"h1/target_none", "s1/target_active", "h1/pre_activation", "s1/flipped"} <= tags


def test_flips_are_counted_on_the_probe_batch():
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    signs = []

    class RecordSigns(keras.callbacks.Callback):  # runs after TargetDiagnostics, same weights
        def on_epoch_end(self, epoch, logs=None):
            signs.append(model.get_layer("d1")(x).numpy() > 0)

    diagnostics = TargetDiagnostics(every=1, probe_data=x)
    model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0,
              callbacks=[diagnostics, RecordSigns()])
    expected = np.mean(signs[1] != signs[0])
    assert expected > 0, "lr 0.5 should move some units across the threshold"
    assert diagnostics.history[1][1]["h1/flipped"] == pytest.approx(expected)


def _recording(model):
    return [bool(layer.target_statistics.recording.numpy())
            for layer in model.layers if hasattr(layer, "target_statistics")]


def test_the_training_step_is_traced_once_and_records_only_under_the_callback():
    x, y = _data()
    expected = _expected(_model(), x, y)
    model = _model()
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0)  # traced without any diagnostics
    step = model.train_function
    sums = [layer.target_statistics.sums for layer in (model.get_layer("h1"), model.get_layer("s1"))]
    assert all(not np.any(v.numpy()) for v in sums), "not recording: the backward adds nothing"

    diagnostics = TargetDiagnostics(every=1)
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0, callbacks=[diagnostics])
    assert model.train_function is step  # the model's own step, not retraced or replaced
    assert [s for s, _ in diagnostics.history] == [2, 3]
    for _, values in diagnostics.history:
        for key, value in expected.items():
            assert values[key] == pytest.approx(value, rel=1e-5), key
    assert _recording(model) == [False, False]

    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert all(not np.any(v.numpy()) for v in sums), "recording stops with the callback's fit"


def test_the_statistics_are_neither_weights_nor_checkpointed(tmp_path):
    model = _model()
    names = [v.name for v in model.weights]
    assert not any("target_statistics" in n or "recording" in n for n in names), names
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    keys = [key for key, _ in tf.train.list_variables(path)]
    assert not any("target_statistics" in k or "recording" in k for k in keys), keys
    assert len([k for k in keys if "/.ATTRIBUTES/VARIABLE_VALUE" in k]) == len(model.weights)


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="positive number of steps"):
        TargetDiagnostics(every=0)


def _residual_model(fused):
    """d1 -> h0 -> d2 -> BN (+ h0) -> h1 -> out, as plain layers or with one BatchNormThreshold."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h0 = HardThreshold(name="h0")(keras.layers.Dense(8, name="d1")(inputs))
    z = keras.layers.Dense(8, use_bias=False, name="d2")(h0)
    if fused:
        h1 = BatchNormThreshold(Staircase(steps=3, low=-1.0, high=1.0, name="h1"), momentum=0.5, name="bn")([z, h0])
    else:
        x = keras.layers.Add()([keras.layers.BatchNormalization(momentum=0.5, name="bn")(z), h0])
        h1 = Staircase(steps=3, low=-1.0, high=1.0, name="h1")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h1))


@pytest.mark.parametrize("jit", [False, True])
def test_a_threshold_inside_batch_norm_threshold_is_logged_like_the_plain_pair(jit):
    x, y = _data()
    histories = []
    for fused in (False, True):
        model = _residual_model(fused)
        model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        diagnostics = TargetDiagnostics(every=2, probe_data=x)
        model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0, callbacks=[diagnostics])
        histories.append(diagnostics.history)
        threshold = model.get_layer("bn").activation if fused else model.get_layer("h1")
        assert not threshold.target_statistics.recording.numpy()
    plain, fused = histories
    assert [step for step, _ in fused] == [step for step, _ in plain] == [0, 2]
    for (_, got), (_, expected) in zip(fused, plain):
        assert set(got) == set(expected) and {"h1/target_loss", "h1/target_active", "h1/flipped"} & set(got)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert 0.0 < plain[0][1]["h1/target_satisfied"] < 1.0


def _handed_to_the_statistics(layer, shape):
    """(activation-sized tensors the compiled (XLA) gradient of ``layer`` computes and hands to the
    statistics' conditional, the number of conditionals) from the optimized HLO of the step."""
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    z, g = tf.random.normal(shape), tf.random.normal(shape)

    @tf.function(jit_compile=True)
    def gradients(z, g):
        with tf.GradientTape() as tape:
            tape.watch(z)
            h = model(z, training=True)
        return tape.gradient(h, [z, *model.trainable_variables], output_gradients=g)

    hlo = gradients.experimental_get_compiler_ir(z, g)(stage="optimized_hlo")
    entry = hlo[hlo.index("\nENTRY"):]
    defined = dict(re.findall(r"^\s*(?:ROOT )?(%[\w.\-]+) = (.*)$", entry, re.M))
    sized = "f32[" + ",".join(map(str, shape)) + "]"
    computed = {name for name, rhs in defined.items()
                if rhs.startswith(sized) and not re.search(r" (parameter|bitcast)\(", rhs)}
    # conditional(predicate, true operand, false operand); older XLA prints each operand's type before it
    calls = re.findall(r"conditional\((.*?)\), true_computation", entry)
    branch_operands = [re.findall(r"%[\w.\-]+", arguments)[1] for arguments in calls]
    handed = {name for operand in branch_operands for name in re.findall(r"%[\w.\-]+", defined[operand])}
    return computed & handed, len(branch_operands)


@pytest.mark.parametrize("threshold", [HardThreshold, Staircase])
def test_a_compiled_step_does_not_write_x_out_for_the_statistics(threshold):
    """The statistics' branch recomputes a fused layer's x itself: handed x, XLA would compute x and write
    it out on every step, recording or not, to pass it to the branch (a fifth of the site's time, batch
    norm and its threshold, at 32x56x56x64; docs/performance.md)."""
    handed, conditionals = _handed_to_the_statistics(BatchNormThreshold(threshold()), (8, 6, 6, 4))
    assert conditionals == 1 and not handed


def test_probe_pre_activation_of_batch_norm_threshold_is_its_threshold_input():
    x, _ = _data()
    plain, fused = _residual_model(False), _residual_model(True)
    fused.set_weights(plain.get_weights())
    seen = {}
    for name, model in (("plain", plain), ("fused", fused)):
        callback = TargetDiagnostics(every=1, probe_data=x)
        callback.set_model(model)
        pre_activations, outputs = callback._probe_fn(x)
        seen[name] = [np.asarray(v) for v in pre_activations + outputs]
    for a, b in zip(seen["fused"], seen["plain"]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_steps_follow_the_optimizer_and_each_fit_logs_its_first_step():
    # A resumed fit starts at the optimizer's step count: it keeps the every-N
    # schedule and logs its first step, so that its first epoch's logs hold
    # statistics even when that epoch has no scheduled step.
    x, y = _data()
    model = _model()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epoch_logs = []

    class RecordLogs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_logs.append(dict(logs))

    first = TargetDiagnostics(every=4)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[first])  # steps 0-3
    assert [step for step, _ in first.history] == [0]
    resumed = TargetDiagnostics(every=4)
    model.fit(x[:24], y[:24], batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[resumed, RecordLogs()])  # steps 4-9
    assert [step for step, _ in resumed.history] == [4, 8]
    model.optimizer.iterations.assign(5)
    late = TargetDiagnostics(every=4)
    model.fit(x[:16], y[:16], batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[late, RecordLogs()])  # steps 5-6: none scheduled
    assert [step for step, _ in late.history] == [5]
    assert all("h1/target_satisfied" in logs and "s1/target_active" in logs for logs in epoch_logs)


def test_a_log_dir_without_tensorboard_is_a_clear_error(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TargetDiagnostics(every=2, log_dir=str(tmp_path))
    assert TargetDiagnostics(every=2).log_dir is None  # without a log_dir it needs none
