"""Choosing the ``tf.distribute`` strategy of a run, and which worker writes files.

``--strategy``:

* ``auto``: ``MirroredStrategy`` over all visible GPUs when there are several
  (or over ``--devices`` when it lists several), otherwise the default
  strategy (one device).
* ``default``: the default strategy, whatever the machine has.
* ``mirrored``: ``MirroredStrategy`` over ``--devices`` or all visible GPUs
  (on a machine without GPUs: its CPU).
* ``multi_worker``: ``MultiWorkerMirroredStrategy``, the cluster described by
  the ``TF_CONFIG`` environment variable.

``--devices`` lists devices explicitly (``/gpu:0,/gpu:1``, or ``/cpu:0,/cpu:1``
to mirror over logical CPU devices, which ``configure_devices`` creates; that
has to happen before TensorFlow initialises its runtime, so ``train.py`` does
it first).

In a multi-worker run every worker executes the same program and must take
part in every save (saving can involve collective ops), but only the chief
keeps what it writes: the other workers write to a private temporary
directory, deleted at the end, as the TensorFlow multi-worker guide
recommends. ``model_dir`` must then be on a file system all workers share, so
that a restarted cluster resumes from the chief's checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from training.errors import UsageError

STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker")
# What a collective raises on the surviving workers when another one stops (killed, crashed, its
# machine gone): its peers' heartbeats stop (Unavailable) or a collective waits in vain (DeadlineExceeded).
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def parse_devices(devices):
    """``"/cpu:0, /gpu:1"`` or a list of names -> canonical names like ``/device:CPU:0``.

    Raises UsageError for a name that is not a local device name.
    """
    if devices is None:
        return []
    if isinstance(devices, str):
        devices = devices.split(",")
    names = []
    for raw in devices:
        raw = raw.strip()
        if not raw:
            continue
        try:
            spec = tf.DeviceSpec.from_string(raw)
        except (ValueError, TypeError) as error:
            raise UsageError(f"--devices: {raw!r} is not a device name ({error})") from None
        if spec.device_type is None or spec.device_index is None or spec.job is not None:
            raise UsageError(
                f"--devices: {raw!r} is not a local device name like /gpu:0 or /cpu:1"
            )
        names.append(f"/device:{spec.device_type.upper()}:{spec.device_index}")
    if len(set(names)) != len(names):
        raise UsageError(f"--devices lists a device twice: {','.join(names)}")
    return names


def configure_devices(devices):
    """Create the logical CPU devices that ``devices`` names, before TF starts.

    ``/device:CPU:k`` needs k + 1 logical CPU devices, split from the first
    physical CPU. Once TensorFlow has initialised its runtime the split can no
    longer change: then this only checks that enough logical CPUs exist.

    Raises UsageError when the devices cannot be created.
    """
    cpu_indices = [int(name.rsplit(":", 1)[1]) for name in devices if ":CPU:" in name]
    if not cpu_indices:
        return
    needed = max(cpu_indices) + 1
    physical = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(physical[0])
    if current is not None and len(current) >= needed:
        return
    if current is None and needed == 1:
        return
    try:
        tf.config.set_logical_device_configuration(
            physical[0], [tf.config.LogicalDeviceConfiguration() for _ in range(needed)]
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have >= needed:
            return
        raise UsageError(
            f"--devices needs {needed} logical CPU devices but TensorFlow was "
            f"already initialised with {have}"
        ) from None


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3 passes.

    ``Model.fit`` in Keras 3 calls ``strategy.reduce`` with a nested (x, y)
    batch when it builds the model, and with ``axis=0`` on the scalar metric
    results of every step; the collective strategy supports neither (it
    expects one tensor, of rank >= 1 when ``axis`` is given), so fit fails at
    its first step (keras-team/keras#20329). Reducing leaf by leaf, scalars
    without an axis, gives both calls their intended meaning: the mean over
    all replicas.
    """

    def reduce(self, reduce_op, value, axis=None):
        parent = super()

        def one(leaf):
            leaf_axis = axis
            if leaf_axis is not None:
                local = self.experimental_local_results(leaf)[0]
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    leaf_axis = None
            return parent.reduce(reduce_op, leaf, axis=leaf_axis)

        return tf.nest.map_structure(one, value)


def make_strategy(name, devices=()):
    """The ``tf.distribute.Strategy`` for ``--strategy=name`` (see the module docstring).

    Raises UsageError for an unknown name, devices that do not exist, or a
    multi-worker run without ``TF_CONFIG``.
    """
    if name not in STRATEGY_NAMES:
        raise UsageError(f"unknown strategy {name!r}; valid names are {', '.join(STRATEGY_NAMES)}")
    devices = list(devices)
    if name == "multi_worker":
        if devices:
            raise UsageError("--devices cannot be used with --strategy=multi_worker "
                             "(each worker uses all its local GPUs, or its CPU)")
        _check_tf_config()
        return _MultiWorkerMirroredStrategy()
    if name == "default":
        if devices:
            raise UsageError("--devices needs --strategy=auto or --strategy=mirrored")
        return tf.distribute.get_strategy()

    if devices:
        available = {_canonical(d.name) for d in tf.config.list_logical_devices()}
        missing = [d for d in devices if d not in available]
        if missing:
            raise UsageError(
                f"--devices: no such device {', '.join(missing)} on this machine "
                f"(it has {', '.join(sorted(available))})"
            )
        if name == "auto" and len(devices) == 1:
            return tf.distribute.OneDeviceStrategy(devices[0])
        return _mirrored(devices)

    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or len(gpus) > 1:
        return _mirrored([_canonical(gpu.name) for gpu in gpus] or ["/device:CPU:0"])
    return tf.distribute.get_strategy()


def check_jit_compile(strategy, jit_compile):
    """Refuse ``--jit_compile`` where Keras cannot compile the training step with XLA.

    ``model.compile(jit_compile=True)`` makes Keras 3 compile its whole step,
    ``strategy.run`` over every local replica included, as one XLA computation on
    one device. Under a strategy with several local devices that computation
    would read the variables of the others, which XLA refuses at the first step
    ("Trying to access resource ... located in device ..."); under a multi-worker
    strategy on CPUs it would hold the all-reduce, which XLA does not implement for
    CPUs. One device per process (the default strategy, a mirrored one over one
    device, one GPU per worker) compiles. Raises UsageError.
    """
    if not jit_compile:
        return
    try:
        devices = list(strategy.extended.worker_devices)
    except (AttributeError, RuntimeError, NotImplementedError):  # the default strategy: one device
        return
    if len(devices) > 1:
        raise UsageError(
            f"--jit_compile cannot compile a step mirrored over {len(devices)} devices of one process "
            f"({', '.join(_short(d) for d in devices)}): Keras 3 compiles the step of all replicas as one "
            "XLA computation, which cannot use the variables of the other devices; drop --jit_compile, "
            "or train on one device per process")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and all(
            ":CPU:" in _canonical(d) for d in devices):
        raise UsageError("--jit_compile with --strategy=multi_worker on CPUs: XLA does not implement "
                         "the all-reduce across workers for CPU devices; drop --jit_compile")


def _mirrored(devices):
    """``MirroredStrategy`` over ``devices``; CPUs sum gradients on one device.

    GPUs keep TensorFlow's default all-reduce (NCCL). On CPUs collective
    all-reduce gains nothing, and every new strategy in a process restarts its
    collective instance keys, so a second strategy reducing other shapes would
    abort the process's collective executor ("Shape mismatch in the collective
    instance"); ``ReductionToOneDevice`` has no such state.
    """
    if all(":CPU:" in device for device in devices):
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy(devices=devices)


def _canonical(name):
    spec = tf.DeviceSpec.from_string(name)
    return f"/device:{spec.device_type.upper()}:{spec.device_index}"


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UsageError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         "(the cluster and this worker's task)")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        members = cluster[task["type"]]
        int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"TF_CONFIG is not a valid cluster description: {error}") from None
    if not members:
        raise UsageError("TF_CONFIG: the cluster lists no member for this task's type")


def describe(strategy):
    """One line: strategy kind, replica count, devices and, in a cluster, this task."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "MultiWorkerMirroredStrategy"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        kind = "MirroredStrategy"
    elif isinstance(strategy, tf.distribute.OneDeviceStrategy):
        kind = "OneDeviceStrategy"
    else:
        kind = "default strategy"
    text = f"{kind}, {strategy.num_replicas_in_sync} replica(s)"
    try:
        devices = tuple(_short(d) for d in strategy.extended.worker_devices)
    except (AttributeError, RuntimeError, NotImplementedError):
        devices = ()
    if devices:
        text += " on " + ", ".join(devices)
    task_type, task_id = task(strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        text += f"; this process is {task_type} {task_id}"
    return text


def _short(device):
    spec = tf.DeviceSpec.from_string(device)
    return f"{spec.device_type}:{spec.device_index}"


def task(strategy):
    """(task_type, task_id) of this process; ("chief", 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return "chief", 0
    return resolver.task_type, resolver.task_id


class WorkerLostError(RuntimeError):
    """Another worker of this multi-worker run stopped; the run can resume from its last checkpoint."""

    def __init__(self, worker, last_saved, last_step, checkpoint_dir):
        self.worker, self.last_saved, self.last_step = worker, last_saved, last_step
        self.checkpoint_dir = checkpoint_dir
        super().__init__(f"lost {worker}")


def lost_worker(error, own_task):
    """The task an error of ``LOST_PEER_ERRORS`` names, other than ``own_task`` (type, id): e.g.
    ``"worker 1"``; ``"a worker"`` when the message names none."""
    for task_type, task_id in _TASK.findall(str(error)):
        if (task_type, int(task_id)) != (own_task[0], int(own_task[1] or 0)):
            return f"{task_type} {task_id}"
    return "a worker"


def is_chief(strategy):
    """Whether this process keeps the files it writes (see ``chief_task``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    jobs = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    return chief_task(resolver.task_type, resolver.task_id, jobs)


def chief_task(task_type, task_id, jobs):
    """The chief is the ``chief`` task when the cluster ``jobs`` have one, else worker 0.

    A process outside any cluster (``task_type`` None) is its own chief.
    """
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in jobs


class WriteDir:
    """Where this process writes: ``model_dir`` on the chief, a temporary directory elsewhere.

    Use as a context manager or call ``cleanup``: the temporary directory of a
    non-chief worker is removed.
    """

    def __init__(self, model_dir, chief=True, label="worker"):
        self.model_dir = model_dir
        self.chief = chief
        self.path = model_dir if chief else tempfile.mkdtemp(prefix=f"ftprop-{label}-")

    @classmethod
    def for_strategy(cls, model_dir, strategy):
        task_type, task_id = task(strategy)
        return cls(model_dir, chief=is_chief(strategy), label=f"{task_type}{task_id}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def cleanup(self):
        if not self.chief and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
