"""How much of the loss gradient reaches each stage's convolutions, per estimator and layout.

For each model and configuration (activation and target loss), at initialisation, on
one training batch (batch norm in training mode, as in a training step), with
``W_s`` the kernels of the 3x3 convolutions of stage ``s`` (those that read a
threshold; ``stem``: the first convolution, which reads the image):

    reach_s = ||dL/dW_s|| / ||dL/dW_4||      (L: the batch's cross-entropy; Frobenius norms)

median over ``--seeds`` initialisations; with run directories (``train.py --model_dir``), of
each run's ``final.keras`` instead, on a batch of its own data set. SSTE passes the gradient only inside its
window (staircase: 0 <= x' <= 1, about a third of the units at initialisation), FTP-SH's
soft hinge everywhere, attenuated by 1 - tanh(u)^2. In ResNet-18 the way from the loss
to stage 1 crosses a threshold after every residual sum, shortcut included; in Bi-Real
every threshold has an identity path around it. The table's last column divides each
configuration's stage-1 reach by FTP-SH's in the same network (for runs, of the same seed). Usage:

    python benchmarks/gradient_reach.py [--dataset digits] [--seeds 3] [--models resnet18,bireal_resnet18]
    python benchmarks/gradient_reach.py RUN_DIR [RUN_DIR ...]
"""

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # several times faster on AVX2 CPUs (docs/training.md)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.registry import get_model  # noqa: E402
from training import data  # noqa: E402

CONFIGS = ("staircase-soft_hinge", "staircase-sste", "step-soft_hinge", "step-sste", "step-approx_sign", "relu")
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


def stage_of(kernel_path):
    """The stage a 3x3 (or stem) kernel belongs to, None for the rest (1x1 shortcuts, classifier)."""
    layer = kernel_path.split("/")[0]
    if layer == "stem_conv":
        return "stem"
    if layer.startswith("stage") and "_shortcut" not in layer and "_conv" in layer:
        return layer.split("_")[0]
    return None


def stage_gradient_norms(model, images, labels):
    """{stage: ||dL/dW_stage||} for one batch, batch norm in training mode."""
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel") and stage_of(v.path)]
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    grads = tape.gradient(loss, kernels)
    squares = {stage: 0.0 for stage in STAGES}
    for variable, grad in zip(kernels, grads):
        squares[stage_of(variable.path)] += float(tf.reduce_sum(tf.square(grad)))
    return {stage: float(np.sqrt(total)) for stage, total in squares.items()}


def stage_reach(model, images, labels):
    """{stage: reach_s}: the stage norms relative to the last stage's."""
    norms = stage_gradient_norms(model, images, labels)
    return {stage: norms[stage] / norms["stage4"] for stage in STAGES}


def reach(model_name, config, images, labels, seed, classes):
    activation, _, loss = config.partition("-")
    keras.utils.set_random_seed(seed)
    model = get_model(model_name, activation=activation, target_loss=loss or "soft_hinge",
                      input_shape=images.shape[1:], classes=classes, stem="imagenet")
    return stage_reach(model, images, labels)


def trained_reach(run_dir, batch_size, image_size):
    """(model name, run name, reach) of a finished run's final model, on the first batch of its data."""
    with open(os.path.join(run_dir, "settings.json")) as f:
        settings = json.load(f)
    model = keras.saving.load_model(os.path.join(run_dir, "final.keras"))
    train, _, _ = data.load(settings["dataset"], batch_size=batch_size,
                            image_size=image_size or settings["image_shape"][0], seed=1)
    images, labels = next(iter(train))
    name = os.path.basename(os.path.normpath(run_dir))
    return settings["model"], name, stage_reach(model, images, labels)


def ftp_sh_twin(config):
    """The FTP-SH configuration to compare ``config`` with: step-sste -> step-soft_hinge at
    initialisation, step-sste-seed2 -> step-ftp_sh-seed2 for a run (reproduce.py's names)."""
    parts = config.split("-")
    seed = parts.pop() if parts[-1].startswith("seed") else None
    if len(parts) != 2:
        return None
    return f"{parts[0]}-ftp_sh-{seed}" if seed else f"{parts[0]}-soft_hinge"


def format_table(results):
    lines = ["| model | configuration | " + " | ".join(STAGES) + " | stage 1 vs FTP-SH |",
             "|---|---|" + "---:|" * (len(STAGES) + 1)]
    for model_name, by_config in results.items():
        for config, values in by_config.items():
            twin = by_config.get(ftp_sh_twin(config))
            versus = f"{values['stage1'] / twin['stage1']:.3f}" if twin else "-"
            lines.append(f"| {model_name} | {config} | " + " | ".join(f"{values[s]:.3g}" for s in STAGES)
                         + f" | {versus} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="train.py model directories (default: models at initialisation)")
    parser.add_argument("--dataset", default="digits", help="train.py's --dataset (default: digits)")
    parser.add_argument("--image_size", type=int, default=None, help="default: 32; a run's own")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="resnet18,bireal_resnet18")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args(argv)
    if args.runs:
        results = {}
        for run_dir in args.runs:
            model_name, run, values = trained_reach(run_dir, args.batch_size, args.image_size)
            results.setdefault(model_name, {})[run] = values
        print(f"\nreach_s = ||dL/dW_s|| / ||dL/dW_stage4||, final models, batch {args.batch_size}\n")
        print(format_table(results))
        return results
    args.image_size = args.image_size or 32
    train, _, info = data.load(args.dataset, batch_size=args.batch_size, image_size=args.image_size, seed=1)
    images, labels = next(iter(train))
    results = {}
    for model_name in args.models.split(","):
        results[model_name] = {}
        for config in args.configs.split(","):
            runs = [reach(model_name, config, images, labels, seed, info.num_classes)
                    for seed in range(1, args.seeds + 1)]
            results[model_name][config] = {s: statistics.median(r[s] for r in runs) for s in STAGES}
            print(model_name, config, {s: round(v, 4) for s, v in results[model_name][config].items()},
                  flush=True)
    print(f"\nreach_s = ||dL/dW_s|| / ||dL/dW_stage4||, at initialisation, median of {args.seeds} seeds, "
          f"{args.dataset}, batch {args.batch_size} at {args.image_size}x{args.image_size}\n")
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
