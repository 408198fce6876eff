"""Training-step time of each hidden activation relative to ReLU, on the paper's networks.

For every model in ``--models`` (default: convnet8 at 32x32, batch 64, and
ResNet-18 at 64x64, batch 32) builds one network per configuration of
``benchmarks/reproduce.py`` with ``models.get_model``:

    relu, saturated_relu, step-sste, step-ftp_sh, staircase-sste, staircase-ftp_sh

(a threshold after batch norm is one ``BatchNormThreshold``, as ``get_model``
builds it) and step-ftp_sh-unfused, the step with ``fuse_batch_norm=False``;
compiles each as ``train.py`` does (cross-entropy on logits, SGD with
momentum; ``--jit`` for XLA, off by default like ``train.py``), warms them
up, then times ``train_on_batch`` on one fixed batch in interleaved rounds
(each round: ``--steps`` steps of every configuration), so load changes on
the machine hit all configurations alike. Prints, per model, the median
step time over rounds and its ratio to ReLU (target: <= 1.10). With
``--cpu-time`` the time is the process's CPU time (``time.process_time``)
instead of the wall clock: on a core shared with other processes it leaves
out the time the step waited for the core.

With ``--site NxHxWxC`` it times instead one activation site of those
networks alone, batch norm and its activation as the builders make them
(``BatchNormThreshold`` for step and staircase, batch norm then ReLU
otherwise), forward and backward on a fixed input and upstream gradient:
what a training step costs beyond its convolutions, so the ratio a machine
whose convolutions are fast (a GPU, AMX) approaches.

With ``--profile`` it then traces ``--steps`` steps of every configuration
with ``tf.profiler`` and prints where the time goes: the time of each
TensorFlow (or, with ``--jit``, XLA) op type per step, summed over the
trace, for the op types whose time differs most from ReLU's.

    python benchmarks/activation_overhead.py [--models convnet8,resnet18] [--rounds 9] [--steps 5] [--jit]
                                             [--cpu-time] [--profile] [--site 32x56x56x64]
"""

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as train.py; not on import, where it would leak into child processes
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from models import get_model  # noqa: E402
from models.activations import activation_factory  # noqa: E402
from models.layers import ActivationSites  # noqa: E402

CONFIGS = {  # name: get_model arguments (the configurations of benchmarks/reproduce.py)
    "relu": dict(activation="relu"),
    "saturated_relu": dict(activation="saturated_relu"),
    "step-sste": dict(activation="step", target_loss="sste"),
    "step-ftp_sh": dict(activation="step", target_loss="soft_hinge"),
    "staircase-sste": dict(activation="staircase", target_loss="sste"),
    "staircase-ftp_sh": dict(activation="staircase", target_loss="soft_hinge"),
    # The same as two layers (BatchNormalization, then the threshold), no recomputation:
    "step-ftp_sh-unfused": dict(activation="step", target_loss="soft_hinge", fuse_batch_norm=False),
}
DEFAULT_SHAPES = {  # model: (image side, batch size)
    "convnet4": (32, 64), "convnet8": (32, 64), "alexnet": (64, 32),
    "resnet18": (64, 32), "resnet34": (64, 32),
}


def build(model_name, image_size, classes, jit, **activation):
    """``get_model(model_name, **activation)`` (seed 0), compiled as train.py compiles it."""
    keras.utils.set_random_seed(0)
    model = get_model(model_name, input_shape=(image_size, image_size, 3), classes=classes,
                      **activation)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def warm_models(model_name, *, image_size, batch_size, classes=10, warmup=2, jit=False, configs=tuple(CONFIGS)):
    """({config: compiled model, trained ``1 + warmup`` steps}, images, labels) on one fixed batch."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, image_size, image_size, 3)).astype("float32")
    labels = rng.integers(0, classes, size=batch_size)
    models = {}
    for config in configs:
        models[config] = build(model_name, image_size, classes, jit, **CONFIGS[config])
        for _ in range(1 + warmup):  # the first call traces and compiles
            models[config].train_on_batch(images, labels)
    return models, images, labels


def time_configs(model_name, *, image_size, batch_size, classes=10, rounds=9, steps=5, warmup=2,
                 jit=False, configs=tuple(CONFIGS), clock=time.perf_counter, models=None):
    """{config: [seconds per step, one per round]} of interleaved training steps, timed by ``clock``.

    ``models``: the result of :func:`warm_models`, to reuse; built here when None.
    """
    models, images, labels = models or warm_models(model_name, image_size=image_size, batch_size=batch_size,
                                                   classes=classes, warmup=warmup, jit=jit, configs=configs)
    times = {config: [] for config in configs}
    for _ in range(rounds):
        for config, model in models.items():
            start = clock()
            for _ in range(steps):
                loss = model.train_on_batch(images, labels)
            float(np.asarray(loss))  # the last step has finished
            times[config].append((clock() - start) / steps)
    return times


SITE_STAIRCASE_STEPS = 5  # ResNet-18's; the steps change the forward's levels only


def site_model(shape, activation="relu", target_loss="soft_hinge", fuse_batch_norm=True):
    """One site of the paper's networks on inputs of ``shape`` (batch first): batch norm and the activation,
    built by the builders' ``ActivationSites`` (fused into a ``BatchNormThreshold`` where they fuse)."""
    inputs = keras.Input(shape[1:])
    factory = activation_factory(activation, target_loss=target_loss, steps=SITE_STAIRCASE_STEPS)
    sites = ActivationSites(factory, fuse_batch_norm)
    return keras.Model(inputs, sites.after_batch_norm(inputs, keras.layers.BatchNormalization(), "act"))


def time_sites(shape, *, rounds=9, steps=5, jit=False, configs=tuple(CONFIGS), clock=time.perf_counter):
    """{config: [seconds per forward and backward of its site, one per round]}: the gradients with respect
    to the input and the batch-norm weights for a fixed upstream gradient, in interleaved rounds."""
    rng = np.random.default_rng(0)
    inputs, upstream = (tf.constant(rng.standard_normal(shape).astype("float32")) for _ in range(2))
    functions = {}
    for config in configs:
        keras.utils.set_random_seed(0)
        model = site_model(shape, **CONFIGS[config])

        @tf.function(jit_compile=jit)
        def forward_backward(z, g, model=model):
            with tf.GradientTape() as tape:
                tape.watch(z)
                h = model(z, training=True)
            return tape.gradient(h, [z, *model.trainable_variables], output_gradients=g)[0]

        forward_backward(inputs, upstream).numpy()  # traced, compiled
        functions[config] = forward_backward
    times = {config: [] for config in configs}
    for r in range(rounds):
        for config in configs[::1 if r % 2 else -1]:  # who goes first alternates
            start = clock()
            for _ in range(steps):
                out = functions[config](inputs, upstream)
            out.numpy()
            times[config].append((clock() - start) / steps)
    return times


def op_times(model, images, labels, steps=5):
    """{op type: milliseconds per step}: the op events of a ``tf.profiler`` trace of ``steps`` training steps.

    A TensorFlow op event is named ``"<op name>:<op type>"``; under XLA each HLO instruction (a fusion, a
    convolution) is an event ``"<instruction>.<number>"``, grouped by its name without the number. Times
    are summed over the trace and divided by ``steps``; ops on parallel threads add up.
    """
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                loss = model.train_on_batch(images, labels)
            float(np.asarray(loss))
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name == "python":  # the caller's scopes, which contain the ops
                continue
            for event in line.events:
                kind = _op_type(plane.event_metadata[event.metadata_id].name)
                if kind:
                    totals[kind] += event.duration_ps / 1e9 / steps
    return dict(totals)


def _op_type(event_name):
    """``Conv2D`` of a TensorFlow op event ``"<name>:Conv2D"``, ``fusion`` of an XLA one ``"fusion.12"``;
    None for the others (runtime scopes, the compiled function as a whole)."""
    if "::" in event_name or "__inference" in event_name:
        return None
    if ":" in event_name:
        return event_name.rsplit(":", 1)[1].strip()
    if re.fullmatch(r"[\w-]+\.\d+", event_name):
        return event_name.rsplit(".", 1)[0]
    return None


def profile_table(profiles, baseline="relu", top=12):
    """Markdown rows per configuration: the ``top`` op types by |ms/step - the baseline's|."""
    base = profiles[baseline]
    rows = []
    for config, ops in profiles.items():
        if config == baseline:
            continue
        total, base_total = sum(ops.values()), sum(base.values())
        rows += [f"\n{config} vs {baseline}: all ops {total:.1f} vs {base_total:.1f} ms/step "
                 f"({total - base_total:+.1f})\n",
                 f"| op type | {baseline} ms/step | {config} ms/step | difference |", "|---|---:|---:|---:|"]
        kinds = sorted(set(ops) | set(base), key=lambda k: -abs(ops.get(k, 0.0) - base.get(k, 0.0)))
        for kind in kinds[:top]:
            a, b = base.get(kind, 0.0), ops.get(kind, 0.0)
            rows.append(f"| {kind} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    return "\n".join(rows)


def table(times, baseline="relu"):
    """Markdown rows: configuration, median ms/step, ratio to the baseline's median."""
    base = statistics.median(times[baseline])
    rows = ["| configuration | median ms/step | ratio to ReLU |", "|---|---:|---:|"]
    for config, samples in times.items():
        median = statistics.median(samples)
        rows.append(f"| {config} | {1000 * median:.1f} | {median / base:.3f} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="convnet8,resnet18")
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 for convnets, 64 otherwise")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 for convnets, 32 otherwise")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per configuration per round")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time instead of the wall clock")
    parser.add_argument("--profile", action="store_true",
                        help="then trace --steps steps of each configuration: time per op type against ReLU")
    parser.add_argument("--site", default=None, metavar="NxHxWxC",
                        help="time one batch norm + activation site on inputs of this shape instead of --models")
    args = parser.parse_args(argv)
    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    if "relu" not in configs:
        parser.error("--configs must include relu, the baseline")
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.site:
        try:
            shape = tuple(int(d) for d in args.site.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            parser.error(f"--site takes a shape NxHxWxC, e.g. 32x56x56x64; got {args.site!r}")
        times = time_sites(shape, rounds=args.rounds, steps=args.steps, jit=args.jit, configs=configs, clock=clock)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\none site, batch norm + activation, forward and backward, {args.site}, jit_compile={args.jit}, "
              f"{'CPU' if args.cpu_time else 'wall-clock'} time, median of {args.rounds} interleaved rounds x "
              f"{args.steps} calls, {os.cpu_count()} CPUs, load average {load:.2f}\n")
        print(table(times).replace("ms/step", "ms/call"), flush=True)
        return {"site": times}
    results = {}
    for model_name in (m.strip() for m in args.models.split(",") if m.strip()):
        side, batch = DEFAULT_SHAPES[model_name]
        side, batch = args.image_size or side, args.batch_size or batch
        models = warm_models(model_name, image_size=side, batch_size=batch, jit=args.jit, configs=configs)
        times = time_configs(model_name, image_size=side, batch_size=batch, rounds=args.rounds,
                             steps=args.steps, jit=args.jit, configs=configs,
                             clock=clock, models=models)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\n{model_name}, {side}x{side}x3, batch {batch}, jit_compile={args.jit}, "
              f"{'CPU' if args.cpu_time else 'wall-clock'} time, median of "
              f"{args.rounds} interleaved rounds x {args.steps} steps, {os.cpu_count()} CPUs, "
              f"load average {load:.2f}\n")
        print(table(times), flush=True)
        if args.profile:
            profiles = {config: op_times(model, *models[1:], steps=args.steps)
                        for config, model in models[0].items()}
            print(profile_table(profiles), flush=True)
        results[model_name] = times
    return results


if __name__ == "__main__":
    main()
