"""TrainingCheckpoint (resume state), BestModelSaver and the NaN stop, on a tiny model."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import callbacks

STEPS = 5


def tiny_model(width=8):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(width)(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")])
    return model


def dataset(nan=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    if nan:
        x[:] = np.nan
    y = rng.integers(0, 3, size=40)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()


class Interrupt(keras.callbacks.Callback):
    """Raises at (epoch, batch), as a kill would stop the process there."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


def checkpoint_numbers(directory):
    state = tf.train.get_checkpoint_state(directory)
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


def test_restore_continues_from_mid_epoch_state(tmp_path):
    directory = str(tmp_path / "checkpoints")
    model = tiny_model()
    saver = callbacks.TrainingCheckpoint(directory, directory, every_steps=2)
    assert saver.restore(model) == (0, 0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(dataset(), epochs=3, steps_per_epoch=STEPS, verbose=0,
                  callbacks=[saver, Interrupt(epoch=1, batch=3)])
    # epoch 0: saves after 2 and 4 batches and at its end (5); epoch 1: after 2 (7).
    assert saver.last_saved == (1, 2)
    assert checkpoint_numbers(directory) == [7]  # one at rest: each is deleted once the next is complete
    trained = [w.numpy() for w in model.weights]
    iterations = int(model.optimizer.iterations.numpy())
    assert iterations == 8  # the interrupted batch 3 ran past the last save

    fresh = tiny_model()
    resumed = callbacks.TrainingCheckpoint(directory, directory, every_steps=2)
    assert resumed.restore(fresh) == (1, 2)
    assert int(fresh.optimizer.iterations.numpy()) == 7
    # Adam's slots come back too, not only the weights.
    velocities = [v for v in fresh.optimizer.variables if "velocity" in v.path]
    assert velocities and all(np.any(v.numpy() != 0) for v in velocities)
    assert len(fresh.weights) == len(trained)

    # The interrupted epoch is finished with its remaining batches: positions line up.
    resumed.batch_offset = 2
    fresh.fit(dataset(), initial_epoch=1, epochs=2, steps_per_epoch=STEPS - 2, verbose=0,
              callbacks=[resumed])
    assert resumed.last_saved == (2, 0)
    assert int(fresh.optimizer.iterations.numpy()) == 2 * STEPS


def test_a_mid_epoch_save_keeps_the_metric_sums_and_the_resumed_epoch_adds_them(tmp_path):
    """Saved after 2 of 5 batches, resumed for the other 3: the epoch's loss is the mean over all 5."""
    directory = str(tmp_path / "checkpoints")
    model = tiny_model()
    initial = model.get_weights()
    whole = model.fit(dataset(), epochs=1, steps_per_epoch=STEPS, verbose=0).history
    model = tiny_model()  # the same start again, with fresh optimizer slots
    model.set_weights(initial)
    saver = callbacks.TrainingCheckpoint(directory, directory, every_steps=2)
    saver.restore(model)
    with pytest.raises(KeyboardInterrupt):
        model.fit(dataset(), epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[saver, Interrupt(0, 3)])
    fresh = tiny_model()
    resumed = callbacks.TrainingCheckpoint(directory, directory, every_steps=2)
    assert resumed.restore(fresh) == (0, 2)
    resumed.batch_offset = 2
    rest = fresh.fit(dataset().skip(2), epochs=1, steps_per_epoch=STEPS - 2, verbose=0, callbacks=[resumed]).history
    for key in ("loss", "top1"):
        assert rest[key][0] == pytest.approx(whole[key][0], rel=1e-6), key


def test_a_checkpoint_without_metric_sums_still_restores(tmp_path):
    """Checkpoints written before the metric sums were kept resume as before."""
    directory = str(tmp_path / "checkpoints")
    model = tiny_model()
    model.fit(dataset(), epochs=1, steps_per_epoch=2, verbose=0)
    older = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                epochs_done=tf.Variable(0, dtype=tf.int64), batches_done=tf.Variable(2, dtype=tf.int64))
    tf.train.CheckpointManager(older, directory, max_to_keep=2).save(checkpoint_number=2)
    fresh = tiny_model()
    assert callbacks.TrainingCheckpoint(directory, directory).restore(fresh) == (0, 2)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_epoch_end_saves_only_and_weights_round_trip(tmp_path):
    directory = str(tmp_path / "ckpt")
    model = tiny_model()
    saver = callbacks.TrainingCheckpoint(directory, directory, every_steps=0)
    saver.restore(model)
    model.fit(dataset(), epochs=2, steps_per_epoch=STEPS, verbose=0, callbacks=[saver])
    assert checkpoint_numbers(directory) == [2 * STEPS]
    fresh = tiny_model()
    assert callbacks.TrainingCheckpoint(directory, directory).restore(fresh) == (2, 0)
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # BN statistics included


def test_non_chief_reads_chief_dir_and_writes_its_own(tmp_path):
    chief_dir, own_dir = str(tmp_path / "chief"), str(tmp_path / "own")
    model = tiny_model()
    saver = callbacks.TrainingCheckpoint(chief_dir, chief_dir)
    saver.restore(model)
    model.fit(dataset(), epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[saver])
    other = callbacks.TrainingCheckpoint(chief_dir, own_dir)
    fresh = tiny_model()
    assert other.restore(fresh) == (1, 0)
    fresh.fit(dataset(), initial_epoch=1, epochs=2, steps_per_epoch=STEPS, verbose=0,
              callbacks=[other])
    assert checkpoint_numbers(chief_dir) == [STEPS]
    assert checkpoint_numbers(own_dir) == [2 * STEPS]


def _finished_run(tmp_path):
    """A 1-epoch run whose final model is saved and whose checkpoint ``finish`` made weightless."""
    directory, final = str(tmp_path / "checkpoints"), str(tmp_path / "final.keras")
    model = tiny_model()
    saver = callbacks.TrainingCheckpoint(directory, directory, final_model=final)
    saver.restore(model)
    model.fit(dataset(), epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[saver])
    from training import files

    files.atomic_save_model(model, final, include_optimizer=False)
    saver.finish()
    return model, directory, final


def test_finish_leaves_one_checkpoint_without_the_weights_and_a_rerun_continues_exactly(tmp_path):
    model, directory, final = _finished_run(tmp_path)
    assert os.path.basename(tf.train.latest_checkpoint(directory)) == f"final-{STEPS}"
    assert sorted(os.listdir(directory)) == ["checkpoint", f"final-{STEPS}.data-00000-of-00001",
                                             f"final-{STEPS}.index"]
    stored = tf.train.list_variables(tf.train.latest_checkpoint(directory))
    assert {name.split("/")[0] for name, _ in stored} == {  # no weights
        "optimizer_state", "epochs_done", "batches_done", "metric_state", "save_counter",
        "_CHECKPOINTABLE_OBJECT_GRAPH"}
    values = sum(int(np.prod(shape)) for name, shape in stored if name.startswith("optimizer_state/"))
    assert values == sum(int(np.prod(v.shape)) for v in model.optimizer.variables)  # Adam's slots, step, rate
    mtime = os.stat(tf.train.latest_checkpoint(directory) + ".index").st_mtime_ns
    callbacks.TrainingCheckpoint(directory, directory, final_model=final).finish()  # no saver bound: nothing
    fresh = tiny_model()
    resumed = callbacks.TrainingCheckpoint(directory, directory, final_model=final)
    assert resumed.restore(fresh) == (1, 0)
    resumed.finish()  # already finished: nothing rewritten
    assert os.stat(tf.train.latest_checkpoint(directory) + ".index").st_mtime_ns == mtime
    for a, b in zip(model.optimizer.variables + model.weights, fresh.optimizer.variables + fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # A rerun with more epochs trains on exactly as the first run would have.
    model.fit(dataset(), initial_epoch=1, epochs=2, steps_per_epoch=STEPS, verbose=0)
    fresh.fit(dataset(), initial_epoch=1, epochs=2, steps_per_epoch=STEPS, verbose=0, callbacks=[resumed])
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert checkpoint_numbers(directory) == [2 * STEPS]  # the full checkpoint of the new epoch replaced it


def test_a_finished_checkpoint_without_its_final_model_is_a_clear_error(tmp_path):
    _, directory, final = _finished_run(tmp_path)
    os.remove(final)
    with pytest.raises(ValueError, match="holds no weights: they are in the final model .*final.keras, which is "
                                         "missing"):
        callbacks.TrainingCheckpoint(directory, directory, final_model=final).restore(tiny_model())


def test_restore_into_another_model_is_a_clear_error(tmp_path):
    directory = str(tmp_path / "ckpt")
    model = tiny_model()
    saver = callbacks.TrainingCheckpoint(directory, directory)
    saver.restore(model)
    model.fit(dataset(), epochs=1, steps_per_epoch=2, verbose=0, callbacks=[saver])
    with pytest.raises(ValueError, match="does not fit this model"):
        callbacks.TrainingCheckpoint(directory, directory).restore(tiny_model(width=5))


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches, self.epochs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(batch)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_non_finite_loss_raises_before_later_callbacks_run(tmp_path):
    model = tiny_model()
    directory = str(tmp_path / "ckpt")
    saver = callbacks.TrainingCheckpoint(directory, directory, every_steps=1)
    saver.restore(model)
    recorder = Recorder()
    with pytest.raises(callbacks.NonFiniteLossError, match="NaN/inf loss.*epoch 1, batch 1") as e:
        model.fit(dataset(nan=True), epochs=2, steps_per_epoch=STEPS, verbose=0,
                  callbacks=[callbacks.StopOnNonFiniteLoss(), saver, recorder])
    assert (e.value.epoch, e.value.batch) == (0, 0) and np.isnan(e.value.loss)
    assert recorder.batches == [] and recorder.epochs == []
    assert tf.train.latest_checkpoint(directory) is None


def test_best_model_saver(tmp_path):
    model = tiny_model()
    saver = callbacks.BestModelSaver(str(tmp_path), str(tmp_path))
    saver.set_model(model)
    saver.on_epoch_end(0, {"val_top1": 0.5, "val_top5": 0.9})
    first = os.stat(tmp_path / "best.keras").st_mtime_ns
    saver.on_epoch_end(1, {"val_top1": 0.4, "val_top5": 0.95})  # worse: kept
    saver.on_epoch_end(2, {"val_top1": float("nan")})
    assert os.stat(tmp_path / "best.keras").st_mtime_ns == first
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "epoch": 1, "val_top1": 0.5, "val_top5": 0.9, "file": "best.keras"}
    # A resumed run reads the value to beat back.
    again = callbacks.BestModelSaver(str(tmp_path), str(tmp_path))
    assert (again.best, again.best_epoch) == (0.5, 1)
    again.set_model(model)
    again.on_epoch_end(3, {"val_top1": 0.75})
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 4
    loaded = keras.models.load_model(tmp_path / "best.keras")
    assert loaded.count_params() == model.count_params() and not loaded.compiled  # no optimizer state
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras"]


def test_fit_callbacks_order(tmp_path):
    from keras_ftprop.callbacks import TargetDiagnostics, TargetLossSchedule
    from training import recipes

    recipe = recipes.TrainingRecipe(optimizer="adam", learning_rate=1e-3, batch_size=4, epochs=3,
                            lr_decay_epochs=(2,))
    checkpoint = callbacks.TrainingCheckpoint(str(tmp_path), str(tmp_path))
    best = callbacks.BestModelSaver(str(tmp_path), str(tmp_path))
    plain = callbacks.fit_callbacks(recipe, 5, checkpoint, best, str(tmp_path / "metrics.csv"))
    assert [type(c) for c in plain] == [
        callbacks.StopOnNonFiniteLoss, TargetLossSchedule, keras.callbacks.LearningRateScheduler,
        callbacks.MetricsLogger, callbacks.TrainingCheckpoint, callbacks.BestModelSaver]
    assert plain[1].total_steps == 15
    assert plain[2].schedule(1) == pytest.approx(recipes.learning_rate_at(recipe, 1))
    full = callbacks.fit_callbacks(recipe, None, checkpoint, best, str(tmp_path / "metrics.csv"),
                                   log_dir=str(tmp_path / "tb"), diagnostics=10,
                                   probe_data=np.zeros((2, 4), np.float32))
    assert [type(c) for c in full][3:6] == [
        TargetDiagnostics, callbacks.MetricsLogger, keras.callbacks.TensorBoard]
    assert full[1].total_steps is None and full[3].every == 10


def test_metrics_logger_appends_under_the_files_columns(tmp_path):
    # A resumed run's first epoch may log fewer keys (no diagnostics step in a
    # partial epoch) or more: each value must land in its own column.
    import csv

    from training import files

    path = str(tmp_path / "metrics.csv")
    first = callbacks.MetricsLogger(path)
    first.on_train_begin()
    first.on_epoch_end(0, {"loss": 1.0, "h1/flipped": 0.25, "val_top1": 0.5})
    first.on_train_end()
    resumed = callbacks.MetricsLogger(path)
    resumed.on_train_begin()
    resumed.on_epoch_end(1, {"loss": 0.8, "val_top1": 0.6})  # no diagnostics
    resumed.on_epoch_end(2, {"loss": 0.7, "val_top1": 0.7, "h1/flipped": 0.125, "learning_rate": 1e-3})
    resumed.on_train_end()
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["epoch", "h1/flipped", "loss", "val_top1", "learning_rate"]
    assert [(r["loss"], r["val_top1"], r["h1/flipped"], r["learning_rate"]) for r in table] == [
        ("1.0", "0.5", "0.25", "NA"), ("0.8", "0.6", "NA", "NA"), ("0.7", "0.7", "0.125", "0.001")]
    assert [r["epoch"] for r in files.read_metrics(path)] == [0, 1, 2]
