"""Schedules of target-loss parameters: values at given steps, no retracing, tf.distribute,
serialization, and ``TargetLossSchedule`` driving them from the optimizer in ``fit``."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ftprop import HardThreshold, Staircase, ops, schedules, target_losses
from keras_ftprop.callbacks import TargetLossSchedule, bind_target_losses
from tests import numpy_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _soft_hinge_grad(x, g, xscale, yscale):
    return g * xscale * yscale * (1.0 - np.tanh(xscale * x) ** 2)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, size=(4, 8)).astype(np.float32)
    x[0, :3] = [0.0, 1.0, -1.0]
    g = rng.normal(size=(4, 8)).astype(np.float32)
    g[1, :3] = 0.0
    return x, g


def _backward(loss, x, g, zero_one=False):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.hard_threshold(x, loss, zero_one=zero_one)
    return tape.gradient(y, x, output_gradients=tf.convert_to_tensor(g)).numpy()


@pytest.mark.parametrize("step", [0, 1, 5, 10, 11, 1000])
def test_geometric_values(step):
    schedule = schedules.Geometric(0.1, 10.0, steps=10)
    p = min(step / 10, 1.0)
    np.testing.assert_allclose(float(schedule(step)), 0.1 * 10 ** (p * np.log10(100.0)), rtol=1e-6)


def test_geometric_rejects_bad_arguments():
    with pytest.raises(ValueError, match="start > 0 and end > 0"):
        schedules.Geometric(0.0, 1.0, 10)
    with pytest.raises(ValueError, match="steps, an integer >= 1"):
        schedules.Geometric(1.0, 2.0, None)


@pytest.mark.parametrize("step", [0, 250, 500, 999, 1000, 3000])
def test_ede_at_given_steps(step):
    loss = target_losses.EDE(total_steps=1000).bind(tf.Variable(step, dtype=tf.int64))
    scale, k = ref.ede_scales(step, 1000)
    values = loss.scheduled_values()
    np.testing.assert_allclose([float(values["t"]), float(values["k"])], [scale, k], rtol=1e-5)
    x, g = _inputs()
    np.testing.assert_allclose(_backward(loss, x, g), _soft_hinge_grad(x, g, scale, k), rtol=2e-5, atol=1e-5)


def test_any_numeric_parameter_follows_a_keras_schedule():
    xscale = keras.optimizers.schedules.PolynomialDecay(1.0, decay_steps=4, end_learning_rate=3.0)
    loss = target_losses.SoftHinge(xscale=xscale, yscale=0.5)
    step = tf.Variable(0, dtype=tf.int64)
    loss.bind(step)
    assert loss.scheduled and set(loss.scheduled_values()) == {"xscale"}
    x, g = _inputs()
    for value in (0, 2, 4, 9):
        step.assign(value)
        expected_xscale = 1.0 + 2.0 * min(value, 4) / 4
        np.testing.assert_allclose(_backward(loss, x, g), _soft_hinge_grad(x, g, expected_xscale, 0.5),
                                   rtol=2e-5, atol=1e-6)
    window = target_losses.SaturatedSTE(limit=keras.optimizers.schedules.PiecewiseConstantDecay([2], [1.0, 2.0]))
    window.bind(step)
    for value, limit in ((1, 1.0), (3, 2.0)):
        step.assign(value)
        np.testing.assert_array_equal(_backward(window, x, g), g * (np.abs(x) <= limit))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_changing_schedule_does_not_retrace(jit_compile):
    loss = target_losses.EDE(total_steps=6)
    step = tf.Variable(0, dtype=tf.int64)
    loss.bind(step)
    traces = []

    @tf.function(jit_compile=jit_compile)
    def backward(x, g):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.hard_threshold(x, loss) + ops.staircase(x, 3, loss)
        return tape.gradient(y, x, output_gradients=g)

    x, g = _inputs()
    for value in range(8):
        step.assign(value)
        scale, k = ref.ede_scales(value, 6)
        expected = (_soft_hinge_grad(x, g, scale, k) + _soft_hinge_grad(2 * x - 1, g, scale, k))
        np.testing.assert_allclose(backward(tf.constant(x), tf.constant(g)).numpy(), expected,
                                   rtol=2e-5, atol=1e-5)
    assert len(traces) == 1


def test_mirrored_replicas_read_the_shared_step():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64)
    loss = target_losses.EDE(total_steps=10).bind(step)
    x, g = _inputs()
    dataset = tf.data.Dataset.from_tensor_slices((x, g)).batch(len(x))

    @tf.function
    def replica_backward(x, g):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.hard_threshold(x, loss)
        return tape.gradient(y, x, output_gradients=g)

    for value in (2, 7):
        step.assign(value)
        per_replica = strategy.run(replica_backward, args=next(iter(strategy.experimental_distribute_dataset(dataset))))
        got = np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])
        np.testing.assert_allclose(got, _soft_hinge_grad(x, g, *ref.ede_scales(value, 10)), rtol=2e-5, atol=1e-5)


def test_unbound_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="bound to no step.*TargetLossSchedule"):
        _backward(target_losses.EDE(total_steps=5), *_inputs())
    # Traced (a compiled step, an export): the gradient fails when it runs.
    loss = target_losses.SoftHinge(xscale=schedules.Geometric(1.0, 2.0, 5))

    @tf.function
    def backward(x, g):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.hard_threshold(x, loss)
        return tape.gradient(y, x, output_gradients=g)

    with pytest.raises(tf.errors.InvalidArgumentError, match="bound to no step"):
        backward(*map(tf.constant, _inputs()))
    with pytest.raises(ValueError, match="EDE anneals over the whole training and needs its length"):
        target_losses.EDE().bind(tf.Variable(0, dtype=tf.int64))


def test_scheduled_losses_serialize():
    losses = [
        target_losses.EDE(t_min=0.2, t_max=5.0, total_steps=7),
        target_losses.SoftHinge(xscale=schedules.Geometric(1.0, 4.0, 10)),
        target_losses.SwishSign(beta=keras.optimizers.schedules.CosineDecay(5.0, 100)),
    ]
    for loss in losses:
        config = target_losses.serialize(loss)
        assert isinstance(config, dict)
        restored = target_losses.get(config)
        assert restored == loss and hash(restored) == hash(loss)
        step = tf.constant(4, tf.int64)
        loss.bind(step), restored.bind(step)
        for key, value in loss.scheduled_values().items():
            assert float(restored.scheduled_values()[key]) == float(value)


def _xor_model(target_loss):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16),
        HardThreshold(target_loss=target_loss, name="step"),
        keras.layers.Dense(16),
        Staircase(target_loss=target_loss, name="staircase"),
        keras.layers.Dense(2),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _xor(n=96):
    x = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int32)


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(dict(logs))


def test_fit_anneals_ede_over_the_fit_and_logs_it():
    model = _xor_model("ede")
    x, y = _xor()
    record = _Record()
    schedule = TargetLossSchedule()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[schedule, record])  # 3 steps per epoch
    assert set(schedule.bound) == {"step", "staircase"}
    for loss in schedule.bound.values():
        assert loss.total_steps == 6 and loss._step == 6  # after fit: held at the last step
    for epoch, logs in enumerate(record.epochs):
        np.testing.assert_allclose([logs["target_loss/t"], logs["target_loss/k"]],
                                   ref.ede_scales(3 * (epoch + 1), 6), rtol=1e-5)


def test_differing_losses_log_per_layer_and_fixed_total_wins():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8), HardThreshold(target_loss="ede", name="a"),
        keras.layers.Dense(8),
        HardThreshold(target_loss=target_losses.SoftHinge(xscale=schedules.Geometric(1.0, 2.0, 4)), name="b"),
        keras.layers.Dense(2),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    record = _Record()
    model.fit(*_xor(), batch_size=32, epochs=1, verbose=0, callbacks=[TargetLossSchedule(total_steps=30), record])
    logs = record.epochs[0]
    np.testing.assert_allclose(logs["a/target_loss/t"], ref.ede_scales(3, 30)[0], rtol=1e-5)
    np.testing.assert_allclose(logs["b/target_loss/xscale"], 2.0 ** (3 / 4), rtol=1e-5)


def test_resumed_optimizer_continues_the_schedule(tmp_path):
    """Weights and optimizer through a tf.train checkpoint into a fresh model: the step goes on."""
    x, y = _xor()
    model = _xor_model("ede")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[TargetLossSchedule(total_steps=12)])
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))

    resumed = _xor_model("ede")
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path).assert_existing_objects_matched()
    record = _Record()
    resumed.fit(x, y, batch_size=32, epochs=2, initial_epoch=1, verbose=0,
                callbacks=[TargetLossSchedule(total_steps=12), record])
    np.testing.assert_allclose(record.epochs[0]["target_loss/t"], ref.ede_scales(6, 12)[0], rtol=1e-5)


def test_bind_target_losses_skips_fixed_losses():
    model = _xor_model("soft_hinge")
    assert bind_target_losses(model, tf.Variable(0, dtype=tf.int64)) == {}


def test_keras_file_round_trip_keeps_the_schedule(tmp_path):
    """Saved after training: the loaded model's loss has the filled-in length and anneals on."""
    model = _xor_model("ede")
    x, y = _xor()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[TargetLossSchedule()])
    path = str(tmp_path / "model.keras")
    model.save(path)
    script = textwrap.dedent(f"""
        import keras, tensorflow as tf
        import keras_ftprop
        model = keras.models.load_model({path!r})
        loss = model.get_layer("step").target_loss
        print(type(loss).__name__, loss.total_steps, keras_ftprop.target_losses.serialize(loss)["config"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "EDE 3 {'t_min': 0.1, 't_max': 10.0, 'total_steps': 3}"


def test_export_before_and_after_fit(tmp_path):
    """A SavedModel keeps the gradient functions: an unbound loss traces, a fitted one holds its values."""
    model = _xor_model("ede")
    x, _ = _xor()
    model.export(str(tmp_path / "untrained"))
    model.fit(*_xor(), batch_size=32, epochs=1, verbose=0, callbacks=[TargetLossSchedule()])
    model.export(str(tmp_path / "trained"))
    loaded = tf.saved_model.load(str(tmp_path / "trained"))
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_fit_under_mirrored_strategy_anneals_by_the_shared_step():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    # ReductionToOneDevice: CPU collectives of several strategies in one process clash.
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = _xor_model("ede")
    record = _Record()
    model.fit(*_xor(), batch_size=32, epochs=2, verbose=0, callbacks=[TargetLossSchedule(), record])
    np.testing.assert_allclose([logs["target_loss/t"] for logs in record.epochs],
                               [ref.ede_scales(3, 6)[0], ref.ede_scales(6, 6)[0]], rtol=1e-5)
