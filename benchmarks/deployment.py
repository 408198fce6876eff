"""int8 vs float TFLite of trained networks: latency, throughput, file size, agreement with Keras.

For each ``train.py`` run directory given (its ``final.keras`` and the data set
of its ``settings.json``), or each ``--models`` name built untrained:

* converts the model with ``keras_ftprop.deploy.to_tflite`` to a full-integer
  (int8, float input/output) and a float TFLite model, calibrated on the first
  ``--calibration`` training images (random normal images when untrained);
* times both with the LiteRT interpreter (XNNPACK delegate, the default) for
  each ``--threads``: batch 1 latency and batch 32 throughput, ``--rounds``
  rounds of ``--invokes`` invokes alternating int8 and float in this process;
  medians of the per-round means, and float / int8 ratios;
* on the evaluation split (up to ``--eval_examples``): top-1 agreement of each
  TFLite model with Keras, and the accuracy of all three.

Run from the repository root::

    python benchmarks/deployment.py --runs runs/convnet4-step,runs/convnet8-step [--threads 1,2]
    python benchmarks/deployment.py --runs runs/convnet4-step --model_files final.keras,qat.keras --threads 1
    python benchmarks/deployment.py --models convnet8,resnet18 --activation step   # speed and size only
    python benchmarks/deployment.py --runs runs/convnet4-step --flips 1000   # where int8 rounding flips units
    python benchmarks/deployment.py --models convnet8 --activation staircase --profile int8   # time per layer
    python benchmarks/deployment.py --models convnet8 --no_fuse   # every threshold as GREATER + SELECT_V2
    python benchmarks/deployment.py --models convnet8 --activation staircase --requantized_input_staircases
    python benchmarks/deployment.py --micro   # the microcontroller targets (docs/deployment.md's table)
    python benchmarks/deployment.py --runs runs/convnet4-step --model_files qat.keras --runtimes 1000

``--runtimes N``: for each run, its int8 model (int8 input and output) on N eval images under LiteRT with
XNNPACK (float32 requantization), LiteRT's builtin reference kernels and TensorFlow Lite Micro (both fixed
point): the fraction of threshold units identical between the two LiteRT runtimes (every threshold's
output tensor), of logit units and of rows whose logits are identical on all three, and each runtime's
top-1 agreement with the Keras model (for ``qat.keras``, the quantization-aware copy).

``--flips N``: for each run, the fraction of units of every threshold layer
whose int8 output differs from Keras's (decoded from the interpreter's
tensors), with threshold inputs pinned (the default of ``to_tflite``) and
calibrated (the converter's range), and the top-1 agreement of both; then
the same for the Keras model with only the image, or the weights (all, or
one layer's), rounded as the int8 model rounds them.

``--profile int8|float``: LiteRT's Python package has no per-op profiler, so
each layer's time is that of the model cut after it minus that of the model
cut before it (all cuts timed interleaved; medians).

``--micro``: ``examples/microcontroller.py``'s step network (trained on the
digits at 32x32, ``--micro_epochs`` + ``--micro_qat_epochs`` quantization-aware),
exported with int8 input and output: its export report's flatbuffer bytes
(flash, target <= ``FLASH_TARGET_BYTES``) and TFLite Micro arena (target <=
``ARENA_TARGET_BYTES``), checked (exit status 1 when missed), and the test
accuracy of the int8 model under TFLite Micro beside the float model's.
"""

import argparse
import collections
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import keras  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from keras_ftprop import BatchNormThreshold, deploy  # noqa: E402

QUANTIZATIONS = ("int8", "float")
FLASH_TARGET_BYTES = 256 * 1024  # the int8 flatbuffer of --micro, stored in a microcontroller's flash
ARENA_TARGET_BYTES = 64 * 1024  # its TFLite Micro arena, in RAM


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="", help="comma-separated train.py run directories")
    parser.add_argument("--models", default="", help="comma-separated models.get_model names, untrained")
    parser.add_argument("--activation", default="step", help="activation of --models")
    parser.add_argument("--image_size", type=int, default=32, help="input side of --models")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--invokes", type=int, default=20, help="batch-1 invokes per round (batch 32: a quarter)")
    parser.add_argument("--batch_size", type=int, default=32, help="throughput batch")
    parser.add_argument("--calibration", type=int, default=500)
    parser.add_argument("--eval_examples", type=int, default=10000)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--model_files", default="final.keras",
                        help="comma-separated models of each run to measure, e.g. final.keras,qat.keras "
                             "(the quantization-aware copy of train.py --qat_epochs)")
    parser.add_argument("--flips", type=int, default=0,
                        help="instead: per-layer flips of the runs' int8 models on this many eval images, "
                             "threshold inputs pinned vs calibrated")
    parser.add_argument("--no_fuse", action="store_true",
                        help="int8 with GREATER + SELECT_V2 at every threshold (to_tflite(fuse_thresholds=False))")
    parser.add_argument("--requantized_input_staircases", action="store_true",
                        help="int8 with a staircase on the image requantized, then compared "
                             "(to_tflite(exact_input_staircases=False)), instead of the convolution's own "
                             "requantization placed to round alike on every runtime")
    parser.add_argument("--runtimes", type=int, default=0,
                        help="instead: identical int8 codes on XNNPACK, the reference kernels and TFLite Micro, "
                             "on this many eval images")
    parser.add_argument("--profile", choices=QUANTIZATIONS, default=None,
                        help="instead: per-layer batch-1 time of the --models' int8 or float TFLite model "
                             "(unfused, 1 thread) by differencing the times of prefix models")
    parser.add_argument("--micro", action="store_true",
                        help="instead: the microcontroller network's flash and arena targets and accuracies")
    parser.add_argument("--micro_epochs", type=int, default=15, help="--micro: training epochs")
    parser.add_argument("--micro_qat_epochs", type=int, default=2, help="--micro: quantization-aware epochs")
    return parser.parse_args(argv)


def load_run(run_dir, calibration, eval_examples, model_file="final.keras"):
    """(name, model, calibration images, eval images, eval labels) of a train.py run."""
    from training import config, data

    with open(os.path.join(run_dir, "settings.json")) as f:
        settings = config.upgrade_settings(json.load(f))
    model = keras.models.load_model(os.path.join(run_dir, model_file))
    train_ds, eval_ds, _ = data.load(settings["dataset"], batch_size=100, seed=0,
                                     image_size=settings["image_shape"][0])  # the side the run trained at
    calib = np.concatenate([x.numpy() for x, _ in train_ds.take(-(-calibration // 100))])[:calibration]
    xs, ys = [], []
    for x, y in eval_ds.take(-(-eval_examples // 100)):
        xs.append(x.numpy())
        ys.append(y.numpy())
    name = f"{settings['model']} {settings['activation']} ({settings['dataset'].split('/')[-1]})"
    if model_file != "final.keras":
        name += f" {model_file}"
    return name, model, calib, np.concatenate(xs)[:eval_examples], np.concatenate(ys)[:eval_examples]


def build_untrained(name, activation, image_size, calibration):
    import models

    model = models.get_model(name, activation=activation, input_shape=(image_size, image_size, 3), classes=10)
    calib = np.random.default_rng(0).normal(size=(min(calibration, 64), image_size, image_size, 3))
    return f"{name} {activation} (untrained, {image_size}x{image_size})", model, calib.astype(np.float32), None, None


def interpreter(flatbuffer, threads, batch):
    it = Interpreter(model_content=bytes(flatbuffer), num_threads=threads)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]])
    it.allocate_tensors()
    return it


def predict(flatbuffer, images, batch=100):
    it = interpreter(flatbuffer, 2, batch)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    top1 = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) != batch:
            it = interpreter(flatbuffer, 2, len(chunk))
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        top1.append(it.get_tensor(out["index"]).argmax(axis=1))
    return np.concatenate(top1)


def time_interleaved(flatbuffers, threads, batch, rounds, invokes, image):
    """{quantization: median over rounds of the mean seconds per invoke}, rounds alternating."""
    runners = {}
    for q, fb in flatbuffers.items():
        it = interpreter(fb, threads, batch)
        it.set_tensor(it.get_input_details()[0]["index"], np.repeat(image[None], batch, axis=0))
        it.invoke()  # warm-up (XNNPACK packs weights on the first run)
        runners[q] = it
    samples = {q: [] for q in flatbuffers}
    for r in range(rounds):
        order = list(flatbuffers) if r % 2 == 0 else list(flatbuffers)[::-1]
        for q in order:
            it = runners[q]
            start = time.perf_counter()
            for _ in range(invokes):
                it.invoke()
            samples[q].append((time.perf_counter() - start) / invokes)
    return {q: statistics.median(s) for q, s in samples.items()}


def measure(name, model, calib, images, labels, args):
    row = {"model": name}
    flatbuffers = {}
    for q in QUANTIZATIONS:
        start = time.perf_counter()
        flatbuffers[q] = deploy.to_tflite(model, calib, quantize=q, fuse_thresholds=not args.no_fuse,
                                          exact_input_staircases=not args.requantized_input_staircases)
        row[f"convert_s_{q}"] = time.perf_counter() - start
        row[f"size_{q}"] = len(flatbuffers[q])
    row["ops_int8"] = {f"{op} {dtype}": n for (op, dtype), n in flatbuffers["int8"].report.ops.items()}
    image = calib[0].astype(np.float32)
    for threads in [int(t) for t in args.threads.split(",")]:
        latency = time_interleaved(flatbuffers, threads, 1, args.rounds, args.invokes, image)
        batch = time_interleaved(flatbuffers, threads, args.batch_size, args.rounds,
                                 max(1, args.invokes // 4), image)
        for q in QUANTIZATIONS:
            row[f"latency_ms_{q}_t{threads}"] = 1000 * latency[q]
            row[f"throughput_{q}_t{threads}"] = args.batch_size / batch[q]
        row[f"latency_ratio_t{threads}"] = latency["float"] / latency["int8"]
        row[f"throughput_ratio_t{threads}"] = batch["float"] / batch["int8"]
    if images is not None:
        keras_top1 = model.predict(images, verbose=0, batch_size=100).argmax(axis=1)
        row["eval_examples"] = len(images)
        row["accuracy_keras"] = float(np.mean(keras_top1 == labels))
        for q in QUANTIZATIONS:
            top1 = predict(flatbuffers[q], images.astype(np.float32))
            row[f"agreement_{q}"] = float(np.mean(top1 == keras_top1))
            row[f"accuracy_{q}"] = float(np.mean(top1 == labels))
    return row


def int8_codes(model, images, scale, zero_point):
    """The int8 codes of ``images``: a quantization-aware copy's own input rounding (``input_quant``, whose
    float32 fake quant can round a value a hair below a half code up, where x / scale rounds it down: 0.5
    at scale 1/255), else round(x / scale) + zero point."""
    names = [layer.name for layer in model.layers]
    if "input_quant" in names:
        rounded = keras.Model(model.inputs, model.get_layer("input_quant").output).predict(images, verbose=0)
        return np.clip(np.round(rounded / scale) + zero_point, -128, 127).astype(np.int8)
    return np.clip(np.round(images / scale) + zero_point, -128, 127).astype(np.int8)


def runtime_agreement(name, model, calib, images, labels, examples):
    """{identical threshold units, identical logit units and rows, top-1 agreement with Keras per runtime}
    of the int8 model (int8 input and output) of ``model`` on XNNPACK, the reference kernels and TFLM."""
    from ai_edge_litert.interpreter import OpResolverType

    from keras_ftprop import micro

    images = images[:examples].astype(np.float32)
    flatbuffer = deploy.to_tflite(model, calib, quantize="int8", io_dtype="int8")
    runtimes = {"xnnpack": None, "reference": OpResolverType.BUILTIN_REF}
    interpreters = {}
    for runtime, resolver in runtimes.items():
        kwargs = {} if resolver is None else {"experimental_op_resolver_type": resolver}
        interpreters[runtime] = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True,
                                            **kwargs)
        interpreters[runtime].allocate_tensors()
    inp, out = interpreters["xnnpack"].get_input_details()[0], interpreters["xnnpack"].get_output_details()[0]
    scale, zero_point = inp["quantization"]
    codes = int8_codes(model, images, scale, zero_point)
    by_name = {t["name"]: t["index"] for t in interpreters["xnnpack"].get_tensor_details()}
    thresholds = [by_name[outputs] for _, outputs in flatbuffer.report.activation_tensors.values()]
    logits = {runtime: [] for runtime in (*runtimes, "tflite_micro")}
    same_units = total_units = 0
    for example in codes:
        units = {}
        for runtime, it in interpreters.items():
            it.set_tensor(inp["index"], example[None])
            it.invoke()
            logits[runtime].append(it.get_tensor(out["index"])[0].copy())
            units[runtime] = np.concatenate([it.get_tensor(i).reshape(-1) for i in thresholds])
        same_units += int(np.sum(units["xnnpack"] == units["reference"]))
        total_units += units["xnnpack"].size
    (logits["tflite_micro"],) = micro.run(flatbuffer, codes)
    logits = {runtime: np.asarray(values).astype(int) for runtime, values in logits.items()}
    equal = (logits["xnnpack"] == logits["reference"]) & (logits["reference"] == logits["tflite_micro"])
    keras_top1 = model.predict(images, verbose=0, batch_size=100).argmax(axis=1)
    row = {"model": name, "examples": len(images), "threshold_units": total_units,
           "threshold_units_identical_xnnpack_reference": same_units / total_units,
           "logit_units_identical": float(equal.mean()), "rows_identical": float(equal.all(axis=1).mean()),
           "accuracy_keras": float(np.mean(keras_top1 == labels[:len(images)]))}
    for runtime, values in logits.items():
        row[f"agreement_{runtime}"] = float(np.mean(values.argmax(axis=1) == keras_top1))
    return row


def threshold_outputs(model, names, images):
    """Keras's outputs of the threshold layers ``names`` on ``images`` (a list of arrays)."""
    outputs = {layer.name: layer.output for layer in model.layers}
    # A BatchNormThreshold's output is its threshold's (named as its activation in the export).
    outputs.update({layer.activation.name: layer.output for layer in model.layers
                    if isinstance(layer, BatchNormThreshold)})
    probe = keras.Model(model.input, [outputs[n] for n in names] + [model.output])
    return probe.predict(images, verbose=0, batch_size=100)[:len(names)]


def rounded_like_int8(model, flatbuffer, images, weights=()):
    """(images, model) as the int8 model rounds them, the activations left in float.

    images: on the grid of the int8 model's input quantization; the layers
    ``weights`` (Conv2D, DepthwiseConv2D, Dense): kernels rounded per output
    channel to 127 levels each side of 0, as the converter does.
    """
    (quantize,) = [op for op in deploy.inspect_tflite(flatbuffer)["ops"] if op["op"] == "QUANTIZE"][:1]
    (scale,), (zero_point,) = quantize["outputs"][0]["scale"], quantize["outputs"][0]["zero_point"]
    rounded = (np.clip(np.round(images / scale) + zero_point, -128, 127) - zero_point) * scale
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name in weights:
        layer = copy.get_layer(name)
        kernel = layer.kernel.numpy()
        channel_scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 127
        layer.kernel.assign(np.round(kernel / np.maximum(channel_scale, 1e-30)) * channel_scale)
    return rounded.astype(np.float32), copy


def flip_sources(model, flatbuffer, images, keras_top1, labels):
    """{what is rounded: (per-layer flip fractions, agreement, accuracy)}: Keras with the image and/or
    the weights (all, or one layer's) rounded as in the int8 model, activations in float."""
    names = list(flatbuffer.report.activation_tensors)
    expected = threshold_outputs(model, names, images)
    weighted = [layer.name for layer in model.layers
                if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D))]
    variants = {"image": (True, ()), "weights": (False, weighted), "image + weights": (True, weighted)}
    variants.update({f"{name} weights": (False, [name]) for name in weighted})
    rows = {}
    for label, (image, weights) in variants.items():
        rounded, copy = rounded_like_int8(model, flatbuffer, images, weights)
        inputs = rounded if image else images
        got = threshold_outputs(copy, names, inputs)
        top1 = copy.predict(inputs, verbose=0, batch_size=100).argmax(axis=1)
        rows[label] = {"layers": {n: float(np.mean(~np.isclose(g, e, rtol=0, atol=1e-6)))
                                  for n, g, e in zip(names, got, expected)},
                       "agreement": float(np.mean(top1 == keras_top1)), "accuracy": float(np.mean(top1 == labels))}
    return rows


def flip_rates(model, flatbuffer, images):
    """{threshold layer: fraction of its int8 outputs that differ from Keras's} on ``images``."""
    report = flatbuffer.report
    names = list(report.activation_tensors)
    expected = threshold_outputs(model, names, images)
    it = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    by_name = {t["name"]: t for t in it.get_tensor_details()}
    inp = it.get_input_details()[0]
    differ = {n: 0 for n in names}
    for i in range(len(images)):
        it.set_tensor(inp["index"], images[i:i + 1])
        it.invoke()
        for n, keras_out in zip(names, expected):
            detail = by_name[report.activation_tensors[n][1]]
            scale, zero_point = detail["quantization"]
            decoded = (it.get_tensor(detail["index"]).astype(np.float64) - zero_point) * scale
            differ[n] += int(np.sum(~np.isclose(decoded, keras_out[i:i + 1], rtol=0, atol=1e-6)))
    return {n: differ[n] / expected[k].size for k, n in enumerate(names)}


def flips(name, model, calib, images, labels, examples):
    """Per-layer flips and top-1 agreement, threshold inputs pinned vs calibrated, and where they come from."""
    images, labels = images[:examples].astype(np.float32), labels[:examples]
    keras_top1 = model.predict(images, verbose=0, batch_size=100).argmax(axis=1)
    rows = {}
    for mode in ("calibrated", "pinned"):
        fb = deploy.to_tflite(model, calib, quantize="int8", threshold_input=mode)
        top1 = predict(fb, images)
        rows[f"int8, threshold inputs {mode}"] = {
            "layers": flip_rates(model, fb, images), "agreement": float(np.mean(top1 == keras_top1)),
            "accuracy": float(np.mean(top1 == labels))}
    sources = flip_sources(model, fb, images, keras_top1, labels)
    rows.update({f"Keras, {what} rounded": row for what, row in sources.items()})
    layers = list(rows["int8, threshold inputs pinned"]["layers"])
    lines = [f"{name}, {len(images)} eval images (Keras accuracy {100 * np.mean(keras_top1 == labels):.2f}%): "
             "units whose output differs from Keras's",
             "| model | " + " | ".join(layers) + " | top-1 agreement | accuracy |",
             "|---|" + "---:|" * (len(layers) + 2)]
    for mode, row in rows.items():
        lines.append(f"| {mode} | " + " | ".join(f"{100 * v:.3f}%" for v in row["layers"].values())
                     + f" | {100 * row['agreement']:.2f}% | {100 * row['accuracy']:.2f}% |")
    return "\n".join(lines)


def profile(name, args):
    """Per-layer time of a TFLite chain network: t(model cut after the layer) - t(cut after the one before).

    Each prefix model is converted as the whole is (the same calibration
    images, batch norm folded), so a layer's time includes what it costs in
    place: its kernels and the split of the XNNPACK graph around ops the
    delegate does not take. All prefixes are timed interleaved in one process.
    """
    import models

    model = models.get_model(name, activation=args.activation, fuse_batch_norm=False, classes=10,
                             input_shape=(args.image_size, args.image_size, 3))
    calib = np.random.default_rng(0).normal(size=(64, args.image_size, args.image_size, 3)).astype(np.float32)
    prefixes, layers = {}, []
    for layer in model.layers[1:]:
        try:
            prefixes[layer.name] = deploy.to_tflite(keras.Model(model.input, layer.output), calib,
                                                    quantize=args.profile, fuse_thresholds=not args.no_fuse)
        except ValueError:  # a cut that does not convert alone (e.g. a convolution ending the model after a
            continue  # fused staircase): its time counts in the next layer's
        layers.append(layer)
    times = time_interleaved(prefixes, 1, 1, args.rounds, args.invokes, calib[0])
    lines = [f"{name} {args.activation} {args.profile} ({args.image_size}x{args.image_size}, batch 1, 1 thread): "
             f"{1000 * times[layers[-1].name]:.3f} ms in all",
             "| layer | TFLite ops it adds | ms |", "|---|---|---:|"]
    previous_ops, previous_time = collections.Counter(), 0.0
    for layer in layers:
        ops = collections.Counter(op["op"] for op in deploy.inspect_tflite(prefixes[layer.name])["ops"])
        added = ops - previous_ops
        lines.append(f"| {layer.name} | " + ", ".join(f"{op} x{n}" if n > 1 else op
                                                     for op, n in sorted(added.items()))
                     + f" | {1000 * (times[layer.name] - previous_time):.3f} |")
        previous_ops, previous_time = ops, times[layer.name]
    return "\n".join(lines)


def table(rows, threads):
    lines = ["| model | threads | batch-1 latency int8 / float (ms) | speed-up | batch-32 img/s int8 / float "
             "| speed-up | size int8 / float (MB) | size ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for t in threads:
            lines.append(
                f"| {row['model']} | {t} | {row[f'latency_ms_int8_t{t}']:.3f} / {row[f'latency_ms_float_t{t}']:.3f} "
                f"| {row[f'latency_ratio_t{t}']:.2f}x | {row[f'throughput_int8_t{t}']:.0f} / "
                f"{row[f'throughput_float_t{t}']:.0f} | {row[f'throughput_ratio_t{t}']:.2f}x "
                f"| {row['size_int8'] / 1e6:.2f} / {row['size_float'] / 1e6:.2f} "
                f"| {row['size_float'] / row['size_int8']:.2f}x |")
    accuracy = [row for row in rows if "agreement_int8" in row]
    if accuracy:
        lines += ["", "| model | eval images | agreement int8 | agreement float | accuracy Keras | int8 | float |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in accuracy:
            lines.append(
                f"| {row['model']} | {row['eval_examples']} | {100 * row['agreement_int8']:.2f}% "
                f"| {100 * row['agreement_float']:.2f}% | {100 * row['accuracy_keras']:.2f}% "
                f"| {100 * row['accuracy_int8']:.2f}% | {100 * row['accuracy_float']:.2f}% |")
    return "\n".join(lines)


def missed_micro_targets(report):
    """What of the microcontroller targets the export ``report`` misses (empty: all met)."""
    missed = []
    if report.size_bytes > FLASH_TARGET_BYTES:
        missed.append(f"flatbuffer {report.size_bytes:,} bytes > {FLASH_TARGET_BYTES:,}")
    if report.arena_bytes is None:
        missed.append(f"TFLite Micro arena {report.arena_note}")
    elif report.arena_bytes > ARENA_TARGET_BYTES:
        missed.append(f"TFLite Micro arena {report.arena_bytes:,} bytes > {ARENA_TARGET_BYTES:,}")
    return missed


def micro_table(result):
    """The table of docs/deployment.md "On a microcontroller" from ``examples/microcontroller.measure``'s
    result."""
    report, accuracy, agreement = result["report"], result["accuracy"], result["agreement"]
    arena = f"{report.arena_bytes:,} bytes" if report.arena_bytes is not None else report.arena_note
    return "\n".join([
        "| | value | target |", "|---|---:|---:|",
        f"| flatbuffer (flash) | {report.size_bytes:,} bytes | {FLASH_TARGET_BYTES // 1024} KB |",
        f"| TFLite Micro arena | {arena} | {ARENA_TARGET_BYTES // 1024} KB |",
        f"| test top-1 ({result['test_images']} digits): float Keras / quantization-aware copy "
        f"| {100 * accuracy['float']:.2f}% / {100 * accuracy['quantization-aware']:.2f}% | |",
        f"| test top-1: int8 under TFLite Micro / on XNNPACK "
        f"| {100 * accuracy['int8 TFLite Micro']:.2f}% / {100 * accuracy['int8 XNNPACK']:.2f}% | |",
        f"| top-1 agreement with the quantization-aware copy: TFLite Micro / XNNPACK "
        f"| {100 * agreement['TFLite Micro']:.1f}% / {100 * agreement['XNNPACK']:.1f}% | |",
        f"| int8 logits identical between TFLite Micro and XNNPACK | {100 * result['identical_logits']:.1f}% of "
        "images | |",
        "", "ops: " + ", ".join(f"{name} x{count}" for name, count in sorted(report.op_counts.items())),
    ])


def micro(args):
    """``--micro``: prints the table; SystemExit naming the missed targets, if any. Returns the result."""
    from examples import microcontroller

    result = microcontroller.measure(args.micro_epochs, args.micro_qat_epochs)
    print(micro_table(result), flush=True)
    missed = missed_micro_targets(result["report"])
    if missed:
        raise SystemExit("microcontroller targets missed: " + "; ".join(missed))
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.micro:
        return micro(args)
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    sources = [("run", r) for r in args.runs.split(",") if r] + [("model", m) for m in args.models.split(",") if m]
    if args.profile:
        for name in [m for m in args.models.split(",") if m]:
            print(profile(name, args), flush=True)
        return None
    if args.runtimes:
        for _, source in sources:
            for model_file in args.model_files.split(","):
                loaded = load_run(source, args.calibration, args.runtimes, model_file)
                rows.append(runtime_agreement(*loaded, args.runtimes))
                print(json.dumps(rows[-1]), flush=True)
        return rows
    if args.flips:
        for _, source in sources:
            print(flips(*load_run(source, args.calibration, args.flips), args.flips), flush=True)
        return None
    jobs = [(kind, source, model_file) for kind, source in sources
            for model_file in (args.model_files.split(",") if kind == "run" else [None])]
    for kind, source, model_file in jobs:
        if kind == "run":
            loaded = load_run(source, args.calibration, args.eval_examples, model_file)
        else:
            loaded = build_untrained(source, args.activation, args.image_size, args.calibration)
        try:
            row = measure(*loaded, args)
        except RuntimeError as error:  # the interpreter refuses a model: say so, measure the others
            print(f"{loaded[0]}: not measured: {str(error).splitlines()[0]}", flush=True)
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(table(rows, threads))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
