"""Peak resident memory of training (ResNet-18 by default) with ReLU vs hard-threshold activations.

Each measurement runs in a fresh child process, because peak RSS is per
process. The child sets ``TF_ENABLE_ONEDNN_OPTS=1`` as ``train.py`` does,
builds ResNet-18 (``--model``, any ``models.get_model`` name) with one activation, compiles it as
``train.py`` does (SGD with momentum, cross-entropy on logits, no XLA unless
``--jit``), reads VmRSS after the model is built and after the first
(tracing) training step, runs ``--steps`` ``train_on_batch`` steps on one
fixed synthetic batch and reports VmHWM, the peak RSS, from
``/proc/self/status`` (elsewhere ``ru_maxrss``) as one JSON line.

Variants (``--variants``): relu, step (FTP-SH, ``target_loss="soft_hinge"``),
staircase (FTP-SH, 5 steps) and saturated_relu, as ``models.get_model`` builds
them (a threshold after batch norm is one ``BatchNormThreshold``), and
step_unfused / staircase_unfused, the same with ``fuse_batch_norm=False``
(``BatchNormalization`` and the threshold as two layers). They run in turns (relu,
step, staircase, relu, ...) ``--repeats`` times; the table gives the medians
of the peak RSS and of the training working set (peak minus the RSS after
building: activations kept for the backward pass, gradients, optimizer
slots, the traced graph), each relative to ReLU.

With ``--allocator`` the child runs TensorFlow's own allocator on the CPU
(``TF_CPU_ALLOCATOR_USE_BFC=true``) and also reports its peak of allocated
tensor bytes during the last step (``tf.config.experimental.get_memory_info``):
the tensors alone, without what malloc keeps and the process's other memory.

It also prints the float32 size of one activation-sized tensor per
activation site (batch x elements of all site outputs x 4 bytes). ReLU's
gradient reads its own output, which the next convolution keeps for its
weight gradient anyway; the step and staircase gradients read their input
(the batch-norm or residual-sum output), so as two layers they keep about
this much more alive until the backward pass reaches them, and
``BatchNormThreshold`` recomputes it instead.

Run from the repository root::

    python benchmarks/memory.py [--image-size 224] [--batch-size 32] [--steps 3] [--repeats 3]
                                [--variants relu,step,staircase] [--jit] [--allocator]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {  # name: (table label, get_model arguments)
    "relu": ("relu", dict(activation="relu")),
    "step": ("step (soft_hinge)", dict(activation="step", target_loss="soft_hinge")),
    "staircase": ("staircase (soft_hinge, 5 steps)",
                  dict(activation="staircase", target_loss="soft_hinge", steps=5)),
    "saturated_relu": ("saturated_relu", dict(activation="saturated_relu")),
    "step_unfused": ("step (soft_hinge), BN and threshold as two layers",
                     dict(activation="step", target_loss="soft_hinge", fuse_batch_norm=False)),
    "staircase_unfused": ("staircase (soft_hinge, 5 steps), two layers",
                          dict(activation="staircase", target_loss="soft_hinge", steps=5,
                               fuse_batch_norm=False)),
}
MIB = 1024 * 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a models.get_model name")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3, help="training steps after the first")
    parser.add_argument("--repeats", type=int, default=3, help="child processes per variant")
    parser.add_argument("--variants", default="relu,step,staircase",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--allocator", action="store_true",
                        help="TensorFlow's BFC allocator on the CPU; also report its tensor peak of the last step")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return args


def _status_bytes(field):
    """A ``/proc/self/status`` field (e.g. VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _peak_bytes():
    peak = _status_bytes("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return peak


def _rss_bytes():
    """Current RSS; off Linux the peak so far, the best ``resource`` offers."""
    rss = _status_bytes("VmRSS")
    return _peak_bytes() if rss is None else rss


def run_child(variant, args):
    """Build, compile and train one model in this process; its memory readings in bytes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow loads, as train.py
    if args.allocator:
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_ftprop
    from benchmarks.activation_overhead import build
    from keras_ftprop.layers import leaf_layers

    rss_imported = _rss_bytes()
    size = args.image_size
    model = build(args.model, size, args.classes, args.jit, **VARIANTS[variant][1])
    sites = [layer for layer in leaf_layers(model) if isinstance(layer, (
        keras.layers.ReLU, keras_ftprop.HardThreshold, keras_ftprop.Staircase,
        keras_ftprop.SaturatedReLU, keras_ftprop.BatchNormThreshold))]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch_size, size, size, 3)).astype("float32")
    labels = rng.integers(0, args.classes, size=args.batch_size)
    rss_built = _rss_bytes()

    loss = model.train_on_batch(images, labels)  # the first call traces the step
    float(np.asarray(loss))
    rss_first_step = _rss_bytes()
    for step in range(args.steps):
        if args.allocator and step == args.steps - 1:
            float(np.asarray(loss))
            tf.config.experimental.reset_memory_stats("CPU:0")
        loss = model.train_on_batch(images, labels)
    float(np.asarray(loss))  # the last step has finished
    tensor_peak = {"tensor_peak": tf.config.experimental.get_memory_info("CPU:0")["peak"]} if args.allocator else {}
    return {
        "variant": variant,
        "rss_imported": rss_imported,
        "rss_built": rss_built,
        "rss_first_step": rss_first_step,
        "rss_end": _rss_bytes(),
        "peak": _peak_bytes(),
        "activation_sites": len(sites),
        "activation_elements": sum(math.prod(layer.output.shape[1:]) for layer in sites),
        **tensor_peak,
    }


def measure(variant, args):
    """Readings of one fresh child process (``python benchmarks/memory.py --child VARIANT``)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", variant, f"--model={args.model}",
               f"--image-size={args.image_size}", f"--batch-size={args.batch_size}",
               f"--classes={args.classes}", f"--steps={args.steps}"] + (["--jit"] if args.jit else [])
    command += ["--allocator"] if args.allocator else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def summarize(samples, batch_size):
    """{variant: medians in MiB and ratios to ReLU} from {variant: [child readings]}."""
    rows = {}
    for variant, readings in samples.items():
        rows[variant] = {
            "peak_mib": statistics.median(r["peak"] for r in readings) / MIB,
            "built_mib": statistics.median(r["rss_built"] for r in readings) / MIB,
            "first_step_mib": statistics.median(r["rss_first_step"] for r in readings) / MIB,
            "working_set_mib": statistics.median(r["peak"] - r["rss_built"] for r in readings) / MIB,
            "activation_sites": readings[0]["activation_sites"],
            "activation_mib": batch_size * readings[0]["activation_elements"] * 4 / MIB,
        }
        if "tensor_peak" in readings[0]:
            rows[variant]["tensor_peak_mib"] = statistics.median(r["tensor_peak"] for r in readings) / MIB
    relu = rows.get("relu")
    for row in rows.values():
        row["peak_ratio"] = row["peak_mib"] / relu["peak_mib"] if relu else None
        row["working_set_ratio"] = (row["working_set_mib"] / relu["working_set_mib"]
                                    if relu else None)
        if "tensor_peak_mib" in row:
            row["tensor_peak_ratio"] = row["tensor_peak_mib"] / relu["tensor_peak_mib"] if relu else None
    return rows


def table(rows):
    ratio = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    tensors = all("tensor_peak_mib" in row for row in rows.values())
    lines = ["| activation | peak RSS (MiB) | vs ReLU | training working set (MiB) | vs ReLU |"
             + (" tensor peak (MiB) | vs ReLU |" if tensors else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if tensors else "")]
    for variant, row in rows.items():
        lines.append(f"| {VARIANTS[variant][0]} | {row['peak_mib']:.0f} | {ratio(row['peak_ratio'])} | "
                     f"{row['working_set_mib']:.0f} | {ratio(row['working_set_ratio'])} |"
                     + (f" {row['tensor_peak_mib']:.0f} | {ratio(row['tensor_peak_ratio'])} |" if tensors else ""))
    return "\n".join(lines)


def main(argv=None):
    """Run the benchmark; returns {variant: summary row} (or one child's readings with --child)."""
    args = parse_args(argv)
    if args.child:
        readings = run_child(args.child, args)
        print(json.dumps(readings), flush=True)
        return readings

    samples = {variant: [] for variant in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:
            samples[variant].append(measure(variant, args))
            print(f"repeat {repeat + 1}/{args.repeats} {variant}: peak "
                  f"{samples[variant][-1]['peak'] / MIB:.0f} MiB", file=sys.stderr, flush=True)
    rows = summarize(samples, args.batch_size)

    first = next(iter(rows.values()))
    print(f"\n{args.model}, {args.image_size}x{args.image_size} input, batch {args.batch_size}, "
          f"{args.classes} classes, jit_compile={args.jit}, 1 + {args.steps} training steps per "
          f"process, median of {args.repeats} processes per activation\n")
    print(table(rows))
    print(f"\nActivation outputs ({first['activation_sites']} sites, whole batch, float32): "
          f"{first['activation_mib']:.1f} MiB, the extra memory of keeping every activation's "
          f"input for the backward pass (as a threshold after a separate batch norm does; ReLU "
          f"keeps only its output, BatchNormThreshold recomputes the input).")
    return rows


if __name__ == "__main__":
    main()
