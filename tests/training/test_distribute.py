"""Strategy selection, --devices, chief/worker file handling (conftest gives 2 logical CPUs)."""

import json
import os

import pytest
import tensorflow as tf

from training import distribute


def test_parse_devices():
    assert distribute.parse_devices(None) == []
    assert distribute.parse_devices("/cpu:0, /CPU:1") == ["/device:CPU:0", "/device:CPU:1"]
    assert distribute.parse_devices(["/gpu:3"]) == ["/device:GPU:3"]
    assert distribute.parse_devices("/device:CPU:0,") == ["/device:CPU:0"]
    with pytest.raises(ValueError, match="lists a device twice"):
        distribute.parse_devices("/cpu:0,/device:CPU:0")
    with pytest.raises(ValueError, match="not a local device name"):
        distribute.parse_devices("/job:worker/task:1/cpu:0")
    with pytest.raises(ValueError, match="not a"):
        distribute.parse_devices("cpu")


def test_configure_devices_after_initialisation():
    tf.constant(1.0)  # the runtime is up: the CPU split can no longer change
    distribute.configure_devices(["/device:CPU:0", "/device:CPU:1"])  # conftest made two
    with pytest.raises(ValueError, match="needs 4 logical CPU devices .* initialised with 2"):
        distribute.configure_devices(["/device:CPU:3"])
    distribute.configure_devices(["/device:GPU:0"])  # nothing to create for GPUs


def test_make_strategy_choices():
    cpus = ["/device:CPU:0", "/device:CPU:1"]
    default = distribute.make_strategy("default")
    assert default.num_replicas_in_sync == 1
    assert not isinstance(default, tf.distribute.MirroredStrategy)
    assert distribute.describe(default).startswith("default strategy, 1 replica")

    # No GPUs here: auto is the default strategy; with --devices it mirrors over them.
    assert distribute.make_strategy("auto").num_replicas_in_sync == 1
    mirrored = distribute.make_strategy("auto", cpus)
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2
    assert distribute.describe(mirrored) == "MirroredStrategy, 2 replica(s) on CPU:0, CPU:1"
    assert isinstance(distribute.make_strategy("auto", cpus[:1]), tf.distribute.OneDeviceStrategy)
    assert distribute.make_strategy("mirrored", cpus).num_replicas_in_sync == 2
    assert distribute.is_chief(mirrored)


@pytest.mark.parametrize("name,devices,message", [
    ("auto", ["/device:GPU:0"], "no such device /device:GPU:0"),
    ("default", ["/device:CPU:0"], "--devices needs --strategy=auto or --strategy=mirrored"),
    ("multi_worker", ["/device:CPU:0"], "--devices cannot be used with --strategy=multi_worker"),
    ("ring", [], "unknown strategy 'ring'"),
])
def test_make_strategy_errors(name, devices, message):
    with pytest.raises(ValueError, match=message):
        distribute.make_strategy(name, devices)


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not a valid cluster description"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": []},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="lists no member"):
        distribute.make_strategy("multi_worker")


def test_check_jit_compile_refuses_xla_over_several_devices_of_one_process():
    cpus = ["/device:CPU:0", "/device:CPU:1"]
    for strategy in (distribute.make_strategy("default"), distribute.make_strategy("mirrored", cpus[:1])):
        distribute.check_jit_compile(strategy, True)  # one device: XLA compiles the step
    mirrored = distribute.make_strategy("mirrored", cpus)
    distribute.check_jit_compile(mirrored, False)
    with pytest.raises(ValueError, match=r"--jit_compile cannot compile a step mirrored over 2 devices of one "
                                         r"process \(CPU:0, CPU:1\)"):
        distribute.check_jit_compile(mirrored, True)


def test_keras_cannot_compile_a_step_mirrored_over_two_devices_with_xla():
    """Why check_jit_compile refuses: Keras 3 compiles strategy.run over all replicas as one XLA
    computation, which cannot read the second device's variables. Should this test fail, Keras
    compiles such a step now, and the refusal can go."""
    import keras

    strategy = distribute.make_strategy("mirrored", ["/device:CPU:0", "/device:CPU:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Trying to access resource .* located in device"):
        model.fit(tf.ones((4, 3)), tf.ones((4, 2)), batch_size=4, epochs=1, verbose=0)


def test_chief_task():
    assert distribute.chief_task(None, None, {})
    assert distribute.chief_task("worker", 0, {"worker": ["a", "b"]})
    assert not distribute.chief_task("worker", 1, {"worker": ["a", "b"]})
    assert distribute.chief_task("chief", 0, {"chief": ["c"], "worker": ["a"]})
    assert not distribute.chief_task("worker", 0, {"chief": ["c"], "worker": ["a"]})
    assert not distribute.chief_task("evaluator", 0, {"worker": ["a"]})


def test_write_dir(tmp_path):
    chief = distribute.WriteDir(str(tmp_path))
    assert chief.path == str(tmp_path)
    chief.cleanup()
    assert os.path.isdir(tmp_path)  # the chief's model_dir is never removed
    with distribute.WriteDir(str(tmp_path), chief=False, label="worker1") as other:
        assert other.path != str(tmp_path) and os.path.isdir(other.path)
        assert "worker1" in os.path.basename(other.path)
        open(os.path.join(other.path, "x"), "w").close()
    assert not os.path.exists(other.path)


def test_lost_worker_names_the_other_task_of_the_error():
    message = ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are "
               "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    error = tf.errors.UnavailableError(None, None, message)
    assert distribute.lost_worker(error, ("worker", 0)) == "worker 1"
    assert distribute.lost_worker(
        tf.errors.UnavailableError(None, None, "from /job:worker/replica:0/task:0 and /job:chief/replica:0/task:0"),
        ("worker", 0)) == "chief 0"
    assert distribute.lost_worker(tf.errors.UnavailableError(None, None, "socket closed"), ("worker", 1)) == "a worker"
