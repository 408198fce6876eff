"""Why does the 2-bit staircase trail the step on convnet4? Train variants that each change one thing.

Every variant is convnet4 with FTP-SH (soft hinge), the paper's recipe for it
(Adam 2.5e-4, batch 64, coupled weight decay 5e-4) and the same seeded data
order, for ``--steps`` training steps (the learning rate times 0.1 after each
of ``--lr_decay_steps``, none by default); then it reports eval top-1 and, per
threshold layer, where the layer's inputs fall (benchmarks/threshold_inputs.py):

    step               the step, {-1, +1}
    step_bn            the step with the reference's optional batch norms (as staircase_bn)
    staircase          the paper's staircase, 3 steps on [0, 1]: levels {0, 1/3, 2/3, 1}
    staircase_bn       the same with the reference's optional batch norms (--use-bn: after
                       conv2's activation and after fc1's, in front of the dense layers)
    staircase_centred  3 steps on [-1, 1]: levels {-1, -1/3, 1/3, 1}, thresholds at -1, 0, 1;
                       zero-mean outputs like the step's, the same backward on the centred unit
    staircase_x3       the paper's staircase with its output times 3: levels {0, 1, 2, 3}, the
                       thresholds unchanged (is it the scale of what the dense layers see?)

Usage (Debian's dataset-fashion-mnist package provides the files):

    python benchmarks/staircase_variants.py --dataset idx:/usr/share/datasets/fashion-mnist \\
        --steps 938 --seeds 1,2 --output staircase_variants.md

train.py's converged recipe (12 epochs of 937 steps, decays at the start of
epochs 9 and 11) is ``--steps 11244 --lr_decay_steps 7496,9370``.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import threshold_inputs  # noqa: E402

import models  # noqa: E402
from keras_ftprop import HardThreshold, Staircase  # noqa: E402
from training import data  # noqa: E402


class TripledStaircase(Staircase):
    """The staircase with its output multiplied by 3 (thresholds and backward unchanged)."""

    def call(self, inputs):
        return 3.0 * super().call(inputs)


VARIANTS = {  # name: (activation factory, convnet4 keyword arguments)
    "step": (lambda: HardThreshold(target_loss="soft_hinge"), {}),
    "step_bn": (lambda: HardThreshold(target_loss="soft_hinge"), {"batch_norm": True}),
    "staircase": (lambda: Staircase(steps=3, target_loss="soft_hinge"), {}),
    "staircase_bn": (lambda: Staircase(steps=3, target_loss="soft_hinge"), {"batch_norm": True}),
    "staircase_centred": (lambda: Staircase(steps=3, target_loss="soft_hinge", low=-1.0, high=1.0), {}),
    "staircase_x3": (lambda: TripledStaircase(steps=3, target_loss="soft_hinge"), {}),
}
LEARNING_RATE, BATCH_SIZE, WEIGHT_DECAY = 2.5e-4, 64, 5e-4  # the paper's convnet4 recipe


def learning_rate(decay_steps=()):
    """The paper's rate, times 0.1 from each of ``decay_steps`` (steps counted from 0) on."""
    if not decay_steps:
        return LEARNING_RATE
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [step - 1 for step in decay_steps], [LEARNING_RATE * 0.1 ** k for k in range(len(decay_steps) + 1)])


def train_variant(name, dataset, steps, seed, images, decay_steps=()):
    """Eval top-1 after ``steps`` steps, and threshold-input statistics per layer."""
    keras.utils.set_random_seed(seed)
    train, evaluation, info = data.load(dataset, batch_size=BATCH_SIZE, seed=seed)
    factory, kwargs = VARIANTS[name]
    model = models.get_model("convnet4", activation=factory, weight_decay=WEIGHT_DECAY,
                             input_shape=tuple(info.image_shape), classes=info.num_classes, **kwargs)
    model.compile(keras.optimizers.Adam(learning_rate(decay_steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")])
    model.fit(train.repeat(), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # shuffled by tf.data
    top1 = model.evaluate(evaluation, verbose=0, return_dict=True)["top1"]
    layers = threshold_inputs.threshold_layers(model)
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    inputs = [np.concatenate(parts)[:images] for parts in zip(*(
        probe.predict_on_batch(x) for x, _ in evaluation.take(-(-images // BATCH_SIZE))))]
    return top1, {layer.name: threshold_inputs.layer_statistics(layer, x) for layer, x in zip(layers, inputs)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--dataset", default="digits", help="train.py --dataset (default digits)")
    parser.add_argument("--steps", type=int, default=938, help="training steps per run (default 938)")
    parser.add_argument("--lr_decay_steps", default="",
                        help="comma-separated steps after which the learning rate is multiplied by 0.1")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--images", type=int, default=2000, help="eval images for the input statistics")
    parser.add_argument("--output", default=None, help="also write the tables (markdown) here")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    decay_steps = [int(s) for s in args.lr_decay_steps.split(",") if s.strip()]
    if decay_steps != sorted(set(decay_steps)) or not all(0 < s < args.steps for s in decay_steps):
        parser.error(f"--lr_decay_steps must increase within (0, --steps), got {args.lr_decay_steps}")
    accuracy, statistics = {}, []
    for seed in seeds:
        for name in variants:
            top1, layers = train_variant(name, args.dataset, args.steps, seed, args.images, decay_steps)
            accuracy.setdefault(name, []).append(top1)
            statistics.append((f"{name} (seed {seed})", layers))
            print(f"{name} seed {seed}: eval top-1 {100 * top1:.2f}%", flush=True)
    decays = f" (learning rate times 0.1 after steps {args.lr_decay_steps})" if decay_steps else ""
    lines = [f"convnet4, FTP-SH, {args.steps} steps of batch {BATCH_SIZE}{decays} on {args.dataset}, "
             f"seeds {args.seeds}: eval top-1 (%)", "", "| variant | per seed | mean |", "|---|---|---|"]
    for name, values in accuracy.items():
        lines.append(f"| {name} | {', '.join(f'{100 * v:.2f}' for v in values)} | {100 * np.mean(values):.2f} |")
    text = "\n".join(lines) + "\n\nOutput levels in % (step: -1 / +1; staircase: lowest / ... / highest)\n\n"
    text += threshold_inputs.format_table(statistics)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return accuracy, statistics


if __name__ == "__main__":
    main()
