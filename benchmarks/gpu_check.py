"""One prepared check of a machine with GPUs: speed, mixed precision, XLA, MirroredStrategy, input.

    python benchmarks/gpu_check.py       # a machine with GPUs: ResNet-18, 224x224, batch 256, < 8 minutes on one GPU
    python benchmarks/gpu_check.py       # no GPU: the same at tiny sizes on 2 logical CPUs, < 4 minutes

For each precision (float32, mixed_float16, mixed_bfloat16) and XLA off and on
(``model.compile(jit_compile=...)``, passed explicitly), it builds the network
as ``train.py`` builds it (``models.get_model``, float32 logits under mixed
precision, the paper's optimiser for ResNet-18: SGD 0.1, momentum 0.9, weight
decay) with ReLU, step FTP-SH and staircase FTP-SH units, the three from the
same seed and one fixed synthetic batch, and trains each ``--steps`` (50) steps
on that batch with Keras's own training step. The first ``--warmup_steps``
(10) steps trace, compile and tune; the rest are timed in chunks of
``--chunk_steps``, the three activations taking turns, so a change in the
machine's speed hits them alike. Per setting it reports images/s (median over
chunks), the step time relative to ReLU in the same setting, the loss at the
first and the last step, and the dtypes of the gradients at the hidden units'
inputs (FTPROP's custom gradients for step and staircase) and of their
weights (batch norm's, in a fused ``BatchNormThreshold``). Then
``MirroredStrategy`` over all visible GPUs trains the step network at the same
batch per GPU (scaling efficiency: images/s over N times one GPU's), and the
``folder:`` JPEG training pipeline of ``train.py`` runs over synthetic JPEGs,
beside the fastest training rate measured.

Verdict, the last line: ``gpu_check: OK`` or ``gpu_check: FAILED: <what>``
(exit status 1) when a setting raised, a loss is not finite, a gradient has
another dtype than its unit (the compute dtype) or its weight (float32), or a
mixed-precision run strays from float32 beyond the tolerances: the first
step's loss (same weights, same batch: the forward's rounding only) by more
than ``--first_loss_tolerance`` (10%) relative, or the loss fallen over the
run by less than ``--fall_tolerance`` (0.5) of float32's fall (see
``check_mixed``). Step units within rounding of 0 flip, and a flip changes
the next layer's input by 2, so a step network's first loss moves by a few
per cent under rounding alone (ResNet-18, 64x64, batch 16, float16: 1.9%;
convnet4, 16x16, batch 4, bfloat16: 7.2%); a broken cast moves it by more.

A batch that does not fit (``ResourceExhaustedError``) is halved and the
setting retried. Settings that would exceed ``--budget_minutes`` are skipped
and named (mixed_bfloat16 also on GPUs before compute capability 8.0, which
lack its kernels). Under a MirroredStrategy over several devices Keras cannot
compile the step with XLA (``training.distribute.check_jit_compile``): the
scaling run then uses XLA off.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as train.py; not on import, where it would leak into child processes
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import input_pipeline  # noqa: E402
from keras_ftprop import BatchNormThreshold, HardThreshold, Staircase  # noqa: E402
from training import config as config_lib  # noqa: E402
from training import data, distribute, recipes  # noqa: E402
from training import setup as setup_lib  # noqa: E402
from training.errors import UsageError  # noqa: E402

ACTIVATIONS = ("relu", "step", "staircase")  # step and staircase with FTP-SH (soft_hinge)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BASELINE = "relu"
SCALING_ACTIVATION = "step"
# Layers whose inputs' gradients are reported: ReLU's, and the FTPROP custom gradients.
HIDDEN_UNITS = (keras.layers.ReLU, HardThreshold, Staircase, BatchNormThreshold)
OOM_ERRORS = (tf.errors.ResourceExhaustedError,)


@dataclasses.dataclass(frozen=True)
class Mode:
    """What runs: on GPUs the paper's ImageNet network, else a tiny stand-in on 2 logical CPUs."""

    name: str  # "gpu" or "cpu"
    devices: tuple  # device names, e.g. ("/device:GPU:0", "/device:GPU:1")
    model: str
    image_size: int
    batch_size: int  # per device
    classes: int
    jpegs: int  # synthetic JPEGs for the input pipeline
    jpeg_shape: tuple  # (height, width)
    budget_minutes: float


GPU_DEFAULTS = dict(model="resnet18", image_size=224, batch_size=256, classes=1000, jpegs=512,
                    jpeg_shape=(375, 500), budget_minutes=8.0)
CPU_DEFAULTS = dict(model="convnet4", image_size=16, batch_size=4, classes=10, jpegs=32,
                    jpeg_shape=(48, 64), budget_minutes=4.0)
CPU_DEVICES = ("/device:CPU:0", "/device:CPU:1")


def define_flags(flag_values):
    """The flags of this program, in ``flag_values`` (their own set: no clash with train.py's)."""
    define = dict(flag_values=flag_values)
    flags.DEFINE_string("model", None, "Network (default: resnet18 on GPUs, convnet4 on CPUs).", **define)
    flags.DEFINE_integer("image_size", None, "Image side (default: 224 on GPUs, 16 on CPUs).",
                         lower_bound=1, **define)
    flags.DEFINE_integer("batch_size", None, "Batch per device; halved while it does not fit (default: 256 "
                         "on GPUs, 4 on CPUs).", lower_bound=1, **define)
    flags.DEFINE_integer("classes", None, "Classes of the synthetic labels (default: 1000 on GPUs, 10 on "
                         "CPUs).", lower_bound=2, **define)
    flags.DEFINE_integer("steps", 50, "Training steps per setting; the loss is reported after the last.",
                         lower_bound=3, **define)
    flags.DEFINE_integer("warmup_steps", 10, "Untimed first steps (tracing, compiling, autotuning).",
                         lower_bound=1, **define)
    flags.DEFINE_integer("chunk_steps", 10, "Steps timed at a time, the activations taking turns.",
                         lower_bound=1, **define)
    flags.DEFINE_float("learning_rate", None, "Learning rate (default: the paper recipe's for --model "
                       "and each activation).", **define)
    flags.DEFINE_list("activations", list(ACTIVATIONS), "Hidden activations; relu, the baseline, "
                      "always runs.", **define)
    flags.DEFINE_list("precisions", list(PRECISIONS), "Keras dtype policies.", **define)
    flags.DEFINE_list("xla", ["off", "on"], "jit_compile settings: off, on.", **define)
    flags.DEFINE_boolean("scaling", True, "Also train under MirroredStrategy over all devices.", **define)
    flags.DEFINE_integer("jpegs", None, "Synthetic JPEGs for the input pipeline; 0: skip it (default: "
                         "512 on GPUs, 32 on CPUs).", lower_bound=0, **define)
    flags.DEFINE_float("budget_minutes", None, "Skip settings that would end the check later (default: 8 "
                       "on GPUs, 4 on CPUs).", **define)
    flags.DEFINE_float("first_loss_tolerance", 0.1, "Largest relative difference of a mixed-precision "
                       "first-step loss from float32's.", **define)
    flags.DEFINE_float("fall_tolerance", 0.5, "Smallest fall of a mixed-precision loss over the run, as "
                       "a fraction of float32's fall (when float32's loss fell).", **define)
    flags.DEFINE_integer("seed", 0, "Seed of the weights and of the synthetic batch.", **define)


FLAGS = flags.FlagValues()
define_flags(FLAGS)


# --------------------------------------------------------------------------
# Devices and mode
# --------------------------------------------------------------------------


def detect_mode(values):
    """The ``Mode`` for this machine and the parsed flags; without GPUs it splits the CPU in two
    logical devices (before TensorFlow initialises; a process that has them already keeps them)."""
    gpus = tf.config.list_physical_devices("GPU")
    defaults = GPU_DEFAULTS if gpus else CPU_DEFAULTS
    if gpus:
        for gpu in gpus:  # several models live in one process: take memory as needed
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised
                pass
        devices = tuple(f"/device:GPU:{i}" for i in range(len(gpus)))
    else:
        distribute.configure_devices(list(CPU_DEVICES))
        devices = CPU_DEVICES
    chosen = {key: getattr(values, key) if getattr(values, key) is not None else default
              for key, default in defaults.items() if key != "jpeg_shape"}
    return Mode(name="gpu" if gpus else "cpu", devices=devices, jpeg_shape=defaults["jpeg_shape"], **chosen)


def bfloat16_support():
    """None when every GPU has bfloat16 kernels (compute capability >= 8.0) or there is no GPU,
    else the reason, e.g. "bfloat16 needs compute capability 8.0; GPU:0 has 7.0"."""
    for index, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) < (8, 0):
            return f"bfloat16 needs compute capability 8.0; GPU:{index} has {capability[0]}.{capability[1]}"
    return None


def machine_text(mode):
    if mode.name == "gpu":
        names = []
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            capability = details.get("compute_capability")
            names.append(f"{details.get('device_name', gpu.name)}"
                         + (f" (compute capability {capability[0]}.{capability[1]})" if capability else ""))
        where = f"{len(names)} GPU(s): {'; '.join(names)}"
    else:
        where = (f"no GPU: {len(mode.devices)} logical CPU devices on {os.cpu_count()} cores "
                 f"({platform.processor() or platform.machine()}), tiny sizes")
    return (f"{where}; TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
            f"{platform.python_version()}")


# --------------------------------------------------------------------------
# Building and training
# --------------------------------------------------------------------------


def recipe_for(mode, activation, learning_rate=None):
    """The paper recipe of ``mode.model`` for ``activation`` (its optimiser and weight decay)."""
    recipe = recipes.paper_recipe(mode.model, activation)
    if learning_rate is not None:
        recipe = dataclasses.replace(recipe, learning_rate=learning_rate)
    return recipe


def build(mode, activation, precision, jit_compile, strategy, recipe, weights=None):
    """The network as ``train.py`` builds and compiles it, under ``precision``'s dtype policy,
    ``jit_compile`` passed explicitly; the optimizer's variables are built (as ``fit`` would)."""
    config = config_lib.Config(model=mode.model, activation=activation, target_loss="soft_hinge",
                               mixed_precision=precision != "float32")
    info = types.SimpleNamespace(image_shape=(mode.image_size, mode.image_size, 3), num_classes=mode.classes)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        with strategy.scope():
            model = setup_lib.build_model(config, recipe, info)
            if weights is not None:
                model.set_weights(weights)
            model.compile(optimizer=recipes.optimizer(recipe),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=jit_compile)
            model.optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(policy)
    model.make_train_function()
    return model


def synthetic_batch(mode, global_batch, seed):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((global_batch, mode.image_size, mode.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, mode.classes, size=global_batch).astype(np.int32)
    return images, labels


def batches(images, labels, strategy):
    """The one batch, repeated, split over the replicas as ``fit`` splits it."""
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    return iter(strategy.experimental_distribute_dataset(dataset))


class Run:
    """One model training on one iterator: the first and last step's losses, timed chunks."""

    def __init__(self, model, iterator):
        self.model, self.iterator = model, iterator
        self.steps_done, self.chunks = 0, []  # chunks: seconds per step
        self.first_loss = self.last_loss = None

    def step_loss(self):
        """One step alone; its loss (the mean over the global batch, weight decay included)."""
        self.model.reset_metrics()
        loss = float(self.model.train_function(self.iterator)["loss"])
        self.steps_done += 1
        return loss

    def steps(self, count, timed):
        start = time.perf_counter()
        logs = None
        for _ in range(count):
            logs = self.model.train_function(self.iterator)
        float(logs["loss"])  # the last step has finished
        if timed:
            self.chunks.append((time.perf_counter() - start) / count)
        self.steps_done += count


def train_interleaved(runs, steps, warmup, chunk):
    """Train every ``Run``, whose first step is done, to ``steps`` steps: up to step ``warmup``
    untimed, then timed chunks of up to ``chunk`` steps taking turns, then the last step alone (its
    loss). Needs steps >= warmup + 2."""
    for run in runs:
        if warmup > 1:
            run.steps(warmup - 1, timed=False)
    timed = steps - 1 - warmup
    while timed > 0:
        count = min(chunk, timed)
        for run in runs:
            run.steps(count, timed=True)
        timed -= count
    for run in runs:
        run.last_loss = run.step_loss()


def gradient_dtypes(model):
    """({dtypes of the gradients at the hidden units' inputs}, {dtypes of their weights' gradients}).

    Each kind of hidden layer of ``model`` (ReLU; HardThreshold, Staircase, BatchNormThreshold, whose
    gradients are FTPROP's custom ones) is copied from its config, dtype policy included, and called
    in training mode on a batch of 2 in its input's dtype; the gradient is taken of the sum of its
    output. Copies, so the model's batch statistics do not move; eager, so nothing is traced.
    """
    units, weights, seen = set(), set(), set()
    for layer in model.layers:
        if not isinstance(layer, HIDDEN_UNITS):
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        if (type(layer), len(inputs)) in seen:
            continue
        seen.add((type(layer), len(inputs)))
        copy = type(layer).from_config(layer.get_config())
        values = [tf.random.normal((2, *tensor.shape[1:]), dtype=tensor.dtype) for tensor in inputs]
        with tf.GradientTape() as tape:
            tape.watch(values)
            outputs = copy(values if len(values) > 1 else values[0], training=True)
        grads = tape.gradient(outputs, [values, copy.trainable_variables])
        units.update(g.dtype.name for g in grads[0] if g is not None)
        weights.update(g.dtype.name for g in grads[1] if g is not None)
    return units, weights


# --------------------------------------------------------------------------
# The settings
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the table."""

    run: str  # "1 device", "mirrored", "input"
    activation: str = "-"
    precision: str = "-"
    xla: str = "-"
    devices: int = 1
    batch: int = 0  # global
    images_per_second: float = float("nan")
    ratio: float = float("nan")  # step time vs ReLU; scaling efficiency; pipeline / model
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    unit_grads: str = "-"
    weight_grads: str = "-"
    problems: list = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def ok(self):
        return not self.problems

    def label(self):
        return f"{self.activation}, {self.precision}, XLA {self.xla}" + (
            f", {self.devices} devices" if self.run == "mirrored" else "")


class Budget:
    """The time left; estimates what a group of models costs from the groups run before."""

    def __init__(self, minutes):
        self.start, self.seconds = time.perf_counter(), 60.0 * minutes
        self.per_model = {}  # jit_compile -> largest seconds per model seen

    def elapsed(self):
        return time.perf_counter() - self.start

    def estimate(self, jit_compile, count):
        seen = self.per_model.get(jit_compile, self.per_model.get(not jit_compile))
        return None if seen is None else seen * count

    def allows(self, jit_compile, count, reserve=0.0):
        """Whether ``count`` more models fit, keeping ``reserve`` seconds; unknown costs are allowed."""
        estimate = self.estimate(jit_compile, count)
        return estimate is None or self.elapsed() + estimate + reserve <= self.seconds

    def record(self, jit_compile, seconds_per_model):
        self.per_model[jit_compile] = max(self.per_model.get(jit_compile, 0.0), seconds_per_model)


def is_oom(error):
    return isinstance(error, OOM_ERRORS) or "out of memory" in str(error).lower()


@dataclasses.dataclass
class Context:
    """What the settings share: the mode, the flags, the time budget, and per activation the
    initial weights (so every precision starts from the same ones) and the gradient dtypes found."""

    mode: Mode
    flags: object
    budget: Budget
    weights: dict = dataclasses.field(default_factory=dict)  # activation -> initial weights
    dtypes: dict = dataclasses.field(default_factory=dict)  # (activation, precision) -> gradient_dtypes


def run_setting(context, activations, precision, jit_compile, strategy, batch):
    """(rows, batch): one (precision, XLA) setting, all ``activations`` trained interleaved at
    per-device ``batch``, halved while it does not fit (the batch that fitted is returned)."""
    mode, flags_ = context.mode, context.flags
    entered = time.perf_counter()
    replicas = strategy.num_replicas_in_sync
    run_kind, xla = "mirrored" if replicas > 1 else "1 device", "on" if jit_compile else "off"
    while True:
        runs, failed, out_of_memory = {}, {}, False
        images, labels = synthetic_batch(mode, batch * replicas, flags_.seed)
        for activation in activations:  # build each and take its first step (tracing, compiling)
            try:
                if activation not in context.weights:
                    keras.utils.set_random_seed(flags_.seed)
                model = build(mode, activation, precision, jit_compile, strategy,
                              recipe_for(mode, activation, flags_.learning_rate), context.weights.get(activation))
                context.weights.setdefault(activation, model.get_weights())
                run = Run(model, batches(images, labels, strategy))
                run.first_loss = run.step_loss()
                runs[activation] = run
            except Exception as error:  # noqa: BLE001 - reported in the table; the verdict fails
                out_of_memory = is_oom(error)
                failed[activation] = f"raised {type(error).__name__}: {_first_line(error)}"
                if out_of_memory:
                    break
        if not out_of_memory:
            try:
                train_interleaved(list(runs.values()), flags_.steps, flags_.warmup_steps, flags_.chunk_steps)
            except Exception as error:  # noqa: BLE001
                out_of_memory = is_oom(error)
                failed.update((activation, f"raised {type(error).__name__}: {_first_line(error)}")
                              for activation in runs)
                runs = {}
        if not (out_of_memory and batch > 1):
            break
        runs = {}
        _release()  # outside the except blocks: their tracebacks no longer hold the models
        print(f" batch {batch} per device does not fit, halving it ...", end="", flush=True)
        batch //= 2
    rows = []
    for activation in activations:
        row = Row(run_kind, activation, precision, xla, replicas, batch * replicas)
        rows.append(row)
        if activation not in runs:
            row.problems.append(failed.get(activation, "not run: out of memory at batch 1"))
            continue
        run = runs[activation]
        row.images_per_second = batch * replicas / statistics.median(run.chunks)
        row.first_loss, row.last_loss = run.first_loss, run.last_loss
        for name, loss in (("first", run.first_loss), ("last", run.last_loss)):
            if not math.isfinite(loss):
                row.problems.append(f"{name} loss {loss}")
        if replicas == 1:
            check_gradient_dtypes(row, context, run.model)
    base = next((row for row in rows if row.activation == BASELINE), None)
    for row in rows:
        if base is not None:
            row.ratio = base.images_per_second / row.images_per_second  # step time / ReLU's
    runs = {}
    _release()
    context.budget.record(jit_compile, (time.perf_counter() - entered) / len(activations))
    return rows, batch


def check_gradient_dtypes(row, context, model):
    """Fill in the row's gradient dtypes (traced once per activation and precision) and add a problem
    for units whose gradient is not in the compute dtype or weights whose gradient is not float32."""
    key = (row.activation, row.precision)
    if key not in context.dtypes:
        try:
            context.dtypes[key] = gradient_dtypes(model)
        except Exception as error:  # noqa: BLE001 - reported in the table; the verdict fails
            row.problems.append(f"tracing the gradients raised {type(error).__name__}: {_first_line(error)}")
            return
    units, weights = context.dtypes[key]
    row.unit_grads, row.weight_grads = "/".join(sorted(units)) or "-", "/".join(sorted(weights)) or "-"
    compute = keras.DTypePolicy(row.precision).compute_dtype
    if units != {compute}:
        row.problems.append(f"unit gradients {row.unit_grads}, expected {compute}")
    if weights - {"float32"}:
        row.problems.append(f"weight gradients {row.weight_grads}, expected float32")


def check_mixed(rows, first_loss_tolerance, fall_tolerance):
    """Add a problem to every mixed-precision row that strays from float32's row of the same
    activation, XLA setting and batch (same initial weights, same batch of data):

    * first step: |L1 - L1_f32| > first_loss_tolerance |L1_f32| (the first forward differs by
      rounding alone, which flips step units within rounding of 0);
    * the run: when float32's loss fell, (L1 - Ln) < fall_tolerance (L1_f32 - Ln_f32): mixed
      precision learnt the batch by less than the tolerance allows."""
    reference = {(r.activation, r.xla, r.batch): r for r in rows if r.precision == "float32" and r.ok}
    for row in rows:
        ref = reference.get((row.activation, row.xla, row.batch))
        if row.precision == "float32" or ref is None or not row.ok:
            continue
        if abs(row.first_loss - ref.first_loss) > first_loss_tolerance * abs(ref.first_loss):
            row.problems.append(f"first loss {row.first_loss:.4f} vs float32 {ref.first_loss:.4f} "
                                f"(tolerance {first_loss_tolerance:.0%})")
        ref_fall, fall = ref.first_loss - ref.last_loss, row.first_loss - row.last_loss
        if ref_fall > 0 and fall < fall_tolerance * ref_fall:
            row.problems.append(f"loss fell by {fall:.3f}, float32's by {ref_fall:.3f} "
                                f"(tolerance: at least {fall_tolerance:g} of it)")


def verdict(rows, skipped):
    """(ok, the verdict line): FAILED naming every row with a problem, else OK naming what was skipped."""
    failed = [row for row in rows if not row.ok]
    if failed:
        return False, "gpu_check: FAILED: " + "; ".join(
            f"{row.label()}: {', '.join(row.problems)}" for row in failed)
    line = "gpu_check: OK"
    if skipped:
        line += f" ({len(skipped)} skipped: {'; '.join(skipped)})"
    return True, line


def _release():
    keras.backend.clear_session()
    gc.collect()


def _first_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else repr(error))[:200]


# --------------------------------------------------------------------------
# Input pipeline
# --------------------------------------------------------------------------


def pipeline_rate(mode, batch, repeats=3):
    """(images/s, batch) of ``train.py``'s ``folder:`` training pipeline over ``mode.jpegs`` synthetic
    JPEGs, drained in-graph as ``fit`` drains it; median of ``repeats`` passes after a warm-up pass."""
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as root:
        input_pipeline.write_tree(root, mode.jpegs, *mode.jpeg_shape, classes=2)  # val: jpegs / 8 per class
        train, _, _ = data.load(f"folder:{root}", batch_size=batch, seed=0, image_size=mode.image_size)
        count = input_pipeline.counter(train, batched=True)
        input_pipeline.one_pass(count)
        rate = statistics.median(input_pipeline.one_pass(count)[0] for _ in range(repeats))
    return rate, batch


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------


def check(flags_):
    """Run the check; returns {"mode", "rows", "skipped", "verdict", "ok", "seconds"}."""
    mode = detect_mode(flags_)
    budget = Budget(mode.budget_minutes)
    activations = [BASELINE] + [a for a in flags_.activations if a != BASELINE]
    for name in activations:
        if name not in ACTIVATIONS:
            raise UsageError(f"--activations: unknown {name!r}; valid: {', '.join(ACTIVATIONS)}")
    for name in flags_.precisions:
        if name not in PRECISIONS:
            raise UsageError(f"--precisions: unknown {name!r}; valid: {', '.join(PRECISIONS)}")
    if 0 < mode.jpegs < 8:
        raise UsageError(f"--jpegs must be 0 (no input pipeline) or at least 8; got {mode.jpegs}")
    if flags_.steps < flags_.warmup_steps + 2:
        raise UsageError(f"--steps must exceed --warmup_steps by 2 or more (the first and the last step "
                         f"are not timed); got {flags_.steps} and {flags_.warmup_steps}")
    xla_modes = []
    for value in flags_.xla:
        if value not in ("off", "on"):
            raise UsageError(f"--xla: {value!r} is neither off nor on")
        xla_modes.append(value == "on")
    print(f"gpu_check: {machine_text(mode)}", flush=True)
    print(f"{mode.model}, {mode.image_size}x{mode.image_size}, batch {mode.batch_size} per device, "
          f"{flags_.steps} steps per setting, budget {mode.budget_minutes:g} minutes", flush=True)

    pipeline = pipeline_rate(mode, mode.batch_size) if mode.jpegs else None  # first: it is cheap
    rows, skipped = [], []
    one_device = distribute.make_strategy("default")
    context, batch = Context(mode, flags_, budget), mode.batch_size
    no_bfloat16 = bfloat16_support()
    # Settings in order of interest: float32, then the mixed policies, XLA off and on each.
    for precision in flags_.precisions:
        for jit_compile in xla_modes:
            label = f"{precision}, XLA {'on' if jit_compile else 'off'}"
            if precision == "mixed_bfloat16" and no_bfloat16:
                skipped.append(f"{label} ({no_bfloat16})")
                continue
            reserve = budget.estimate(False, 1) or 0.0  # keep room for the scaling run
            if not budget.allows(jit_compile, len(activations), reserve):
                skipped.append(f"{label} (time budget)")
                continue
            print(f"  {label}: {', '.join(activations)} ...", end="", flush=True)
            start = time.perf_counter()
            new_rows, batch = run_setting(context, activations, precision, jit_compile, one_device, batch)
            print(f" {time.perf_counter() - start:.0f} s", flush=True)
            rows += new_rows
    check_mixed(rows, flags_.first_loss_tolerance, flags_.fall_tolerance)

    if flags_.scaling:
        rows += scaling_rows(context, rows, skipped)
    if pipeline:
        rows.append(pipeline_row(mode, rows, pipeline))

    ok, line = verdict(rows, skipped)
    return dict(mode=mode, rows=rows, skipped=skipped, verdict=line, ok=ok, seconds=budget.elapsed())


def scaling_rows(context, rows, skipped):
    """The step network under MirroredStrategy over every device, in the setting where it trained
    fastest on one device (XLA off when there are several devices), at the same batch per device."""
    devices = context.mode.devices
    single = [r for r in rows if r.activation == SCALING_ACTIVATION and r.ok and r.run == "1 device"
              and (len(devices) == 1 or r.xla == "off")]
    if not single:
        skipped.append("MirroredStrategy (no single-device run of the step network to compare with)")
        return []
    best = max(single, key=lambda r: r.images_per_second)
    jit_compile = best.xla == "on"
    if not context.budget.allows(jit_compile, 1):
        skipped.append("MirroredStrategy (time budget)")
        return []
    print(f"  MirroredStrategy over {len(devices)} device(s): {best.label()} ...", flush=True)
    strategy = distribute.make_strategy("mirrored", list(devices))
    distribute.check_jit_compile(strategy, jit_compile)
    mirrored, _ = run_setting(context, [SCALING_ACTIVATION], best.precision, jit_compile, strategy, best.batch)
    for row in mirrored:
        row.ratio = row.images_per_second / (len(devices) * best.images_per_second)
        if row.batch != best.batch * len(devices):
            row.note = "a smaller batch per device than on one device"
    return mirrored


def pipeline_row(mode, rows, pipeline):
    """The input pipeline's row: its images/s (``pipeline_rate``) against the fastest training rate."""
    rate, batch = pipeline
    fastest = max((r.images_per_second for r in rows if r.ok), default=float("nan"))
    return Row("input", devices=0, batch=batch, images_per_second=rate, ratio=rate / fastest,
               note=f"{mode.jpegs} JPEGs {mode.jpeg_shape[0]}x{mode.jpeg_shape[1]}, train.py's folder: pipeline")


def table(rows):
    """Markdown: one row per setting, the scaling run and the input pipeline."""
    lines = ["| run | activation | precision | XLA | batch | images/s | ratio | loss step 1 | loss last "
             "| grad dtype: units / weights | check |", "|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        run = f"mirrored x{r.devices}" if r.run == "mirrored" else r.run
        check = "ok" if r.ok else "FAILED: " + ", ".join(r.problems)
        if r.note:
            check += f" ({r.note})"
        grads = "-" if r.unit_grads == "-" else f"{r.unit_grads} / {r.weight_grads}"
        lines.append(f"| {run} | {r.activation} | {r.precision} | {r.xla} | {r.batch} | "
                     f"{_number(r.images_per_second, '.1f')} | {_number(r.ratio, '.3f')} | "
                     f"{_number(r.first_loss, '.4f')} | {_number(r.last_loss, '.4f')} | {grads} | {check} |")
    return "\n".join(lines)


def _number(value, spec):
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


LEGEND = ("ratio: 1 device, step time / ReLU's in the same setting (1.000 for ReLU); mirrored, images/s / "
          "(devices x the same setting's images/s on one device), the scaling efficiency; input, the "
          "pipeline's images/s / the fastest training images/s above (below 1: the input would hold "
          "training back). Losses include weight decay; one fixed batch, so they fall as it is learnt.")


def run(argv):
    """Parse ``argv`` (program name first), check, print the table and the verdict.

    Returns (exit status, the result of ``check`` or None): 0 OK, 1 FAILED, 2 bad flags.
    """
    FLAGS.unparse_flags()
    try:
        extra = FLAGS(list(argv))
    except flags.Error as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2, None
    if len(extra) > 1:
        print(f"gpu_check: error: unexpected arguments: {' '.join(extra[1:])}", file=sys.stderr)
        return 2, None
    try:
        result = check(FLAGS)
    except UsageError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2, None
    print()
    print(table(result["rows"]))
    print(f"\n{LEGEND}\n{result['seconds'] / 60:.1f} minutes.")
    print(result["verdict"], flush=True)
    return (0 if result["ok"] else 1), result


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")  # one step function per model: tf.function's retracing notes are expected
    if any(arg in ("-h", "--help", "-help", "--helpfull") for arg in sys.argv[1:]):
        print(__doc__ + "\n" + FLAGS.get_help())
        sys.exit(0)
    sys.exit(run(sys.argv)[0])
