"""MirroredStrategy over two virtual CPU devices vs the default strategy.

Builds the paper's network once (fixed seed) and, from its initial weights,
four copies: {default strategy, ``MirroredStrategy`` over ``/cpu:0,/cpu:1``
as ``train.py --strategy=mirrored --devices=/cpu:0,/cpu:1`` builds it} x
{batch norm as built (per-replica statistics), every ``BatchNormalization``
with ``synchronized=True``}, dropout off in all (its random masks cannot be
the same on a split batch). Each is compiled as ``train.py`` does (optimizer,
learning rate and weight decay of the paper recipe, sparse categorical
cross-entropy on the logits, no XLA) and trained by the step ``model.fit``
runs: ``model.train_function`` on an iterator of
``strategy.experimental_distribute_dataset``, as Keras's epoch iterator
builds it (not ``train_on_batch``: under a MirroredStrategy it hands every
replica the whole batch). Same global batch everywhere. Measured:

* same loss: ``--check-steps`` steps on the same sequence of seeded
  synthetic global batches; the per-step losses (global-batch mean,
  regularisation included), the largest difference mirrored - default of the
  loss and of the final weights, and the first step whose losses are apart.
  With per-replica batch norm each replica normalises its half batch (like
  PyTorch's DataParallel without SyncBN), so the losses differ; with
  synchronized batch norm both runs use the global batch statistics and
  differ only by the order of floating-point sums. Hard-threshold units turn
  such rounding into a different output once a pre-activation is within
  rounding of 0, after which the trajectories part; as a yardstick for that,
  the two single-device runs (the same function, but synchronized batch norm
  computes the variance as E[x^2] - E[x]^2) are compared too.
* step time: then one seeded synthetic batch, repeated; after a warm-up step
  the four models take turns for ``--rounds`` rounds of ``--steps`` steps;
  median ms/step, images/s and the ratio mirrored / default. The two virtual
  devices share the same physical cores, so this measures the overhead of
  the distribution machinery, not a speed-up.

``training.distribute.configure_devices`` splits the CPU into two logical
devices before TensorFlow initialises; a process that already has two
logical CPUs (the tests) uses them. Run from the repository root:

    python benchmarks/distribution.py [--model convnet8] [--activation step]
        [--batch-norm | --no-batch-norm] [--image-size 32] [--batch-size 64]
        [--rounds 15] [--steps 5] [--check-steps 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from training import distribute, recipes  # noqa: E402

DEVICES = "/cpu:0,/cpu:1"
CLASSES = 10
# Batch-norm variant -> the ``synchronized`` it gets (None: as built, per replica).
BN_VARIANTS = {"per_replica_bn": None, "synchronized_bn": True}
BN_LABELS = {"per_replica_bn": "per replica", "synchronized_bn": "synchronized"}
# Losses (about 2.3 for 10 classes, float32 spacing 2.4e-7) further apart than
# this differ by more than the rounding of a few sums.
LOSS_APART = 1e-5
STRATEGY_LABELS = {"default": "default (1 device)", "mirrored": "MirroredStrategy (CPU:0, CPU:1)"}


def strategies():
    """{"default": the default strategy, "mirrored": MirroredStrategy over two CPUs}."""
    devices = distribute.parse_devices(DEVICES)
    distribute.configure_devices(devices)
    return {"default": distribute.make_strategy("default"),
            "mirrored": distribute.make_strategy("mirrored", devices)}


def variant_config(config, synchronized=None, dropout=True):
    """A copy of a functional model config with every BatchNormalization's (and
    BatchNormThreshold's) ``synchronized`` set (unless None) and, without ``dropout``, every dropout rate 0."""
    config = {**config, "layers": [dict(layer) for layer in config["layers"]]}
    for layer in config["layers"]:
        inner = layer["config"] = dict(layer["config"])
        if synchronized is not None and layer["class_name"] in ("BatchNormalization", "BatchNormThreshold"):
            inner["synchronized"] = synchronized
        if not dropout and "Dropout" in layer["class_name"]:
            inner["rate"] = 0.0
    return config


def build(config, weights, recipe, strategy):
    """The model of ``config`` with ``weights``, compiled under ``strategy`` as train.py does."""
    with strategy.scope():
        # A copy: Keras 3.15's from_config pops the keys of the config it is given.
        model = keras.Model.from_config(copy.deepcopy(config))
        model.set_weights(weights)
        model.compile(optimizer=recipes.optimizer(recipe),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
    model.make_train_function()
    return model


def batches(images, labels, batch_size, strategy, repeat=False):
    """An iterator over the global batches of (images, labels), in order, distributed like fit."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if repeat:
        dataset = dataset.repeat()
    return iter(strategy.experimental_distribute_dataset(dataset))


def synthetic(rng, count, image_size):
    images = rng.standard_normal((count, image_size, image_size, 3)).astype(np.float32)
    return images, rng.integers(0, CLASSES, size=count).astype(np.int32)


def time_steps(runs, rounds, steps):
    """{name: median seconds per step}; ``runs`` maps name -> (model, iterator)."""
    for model, iterator in runs.values():  # warm up (traced already)
        float(model.train_function(iterator)["loss"])
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, iterator) in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                logs = model.train_function(iterator)
            float(logs["loss"])
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_check(model, iterator, steps):
    """(per-step losses, trainable weights, non-trainable weights) of ``steps`` steps;
    a loss is the mean over the global batch, regularisation included."""
    losses = []
    for _ in range(steps):
        model.reset_metrics()
        losses.append(float(model.train_function(iterator)["loss"]))
    return (losses, [w.numpy() for w in model.trainable_weights],
            [w.numpy() for w in model.non_trainable_weights])


def compare(a, b):
    """How far two runs of ``run_check`` are apart: the largest difference of the
    per-step losses, the first step where they differ by more than LOSS_APART (None:
    never), and the largest differences of the final weights and moving statistics."""
    (a_loss, a_train, a_stats), (b_loss, b_train, b_stats) = a, b
    loss_diff = np.abs(np.subtract(a_loss, b_loss))
    apart = np.flatnonzero(loss_diff > LOSS_APART)
    return {
        "max_loss_diff": float(loss_diff.max()),
        "first_step_apart": int(apart[0]) + 1 if apart.size else None,
        "max_weight_diff": max_difference(a_train, b_train),
        "max_moving_stat_diff": max_difference(a_stats, b_stats),
    }


def max_difference(a, b):
    return max((float(np.max(np.abs(x - y))) for x, y in zip(a, b)), default=0.0)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet8", choices=recipes.PAPER_MODELS)
    parser.add_argument("--activation", default="step", choices=models.ACTIVATION_NAMES)
    parser.add_argument("--target-loss", default="soft_hinge")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="the builder's batch_norm (convnet4, convnet8, alexnet); "
                             "default: the builder's default")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (even)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--check-steps", type=int, default=20, help="steps of the same-loss check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch_size % 2:
        parser.error("--batch-size must be even (it is split over two replicas)")
    return args


def main(argv=None):
    """Run the benchmark, print its tables and return its numbers::

        {"ms_per_step": {variant: {"default": ms, "mirrored": ms}},
         "images_per_second": {variant: {...}},
         "ratio": {variant: mirrored / default step time},
         "check": {variant: mirrored vs default, a dict of ``compare``,
                   "single_device": default, per-replica vs synchronized BN (rounding only),
                   "losses": {"default, per_replica_bn": per-step losses, ...}}}

    with the variants of ``BN_VARIANTS``.
    """
    args = parse_args(argv)
    strats = strategies()
    recipe = recipes.paper_recipe(args.model, args.activation)
    keras.utils.set_random_seed(args.seed)
    options = {} if args.batch_norm is None else {"batch_norm": args.batch_norm}
    reference = models.get_model(
        args.model, activation=args.activation, target_loss=args.target_loss,
        weight_decay=recipe.weight_decay, input_shape=(args.image_size,) * 2 + (3,),
        classes=CLASSES, **options)
    config, weights = reference.get_config(), reference.get_weights()
    rng = np.random.default_rng(args.seed)
    data = synthetic(rng, args.check_steps * args.batch_size, args.image_size)
    one_batch = synthetic(rng, args.batch_size, args.image_size)

    checked, runs = {}, {}
    for variant, synchronized in BN_VARIANTS.items():
        variant_model = variant_config(config, synchronized=synchronized, dropout=False)
        for name, strategy in strats.items():
            model = build(variant_model, weights, recipe, strategy)
            checked[variant, name] = run_check(
                model, batches(*data, args.batch_size, strategy), args.check_steps)
            # Then timed, on one repeated batch.
            runs[variant, name] = (model, batches(*one_batch, args.batch_size, strategy,
                                                  repeat=True))
    seconds = time_steps(runs, args.rounds, args.steps)

    check = {variant: compare(checked[variant, "default"], checked[variant, "mirrored"])
             for variant in BN_VARIANTS}
    # Two single-device runs of the same function, whose batch norms compute the
    # variance differently: how far rounding alone takes the trajectories apart.
    check["single_device"] = compare(checked["per_replica_bn", "default"],
                                     checked["synchronized_bn", "default"])
    check["losses"] = {f"{name}, {variant}": losses
                       for (variant, name), (losses, _, _) in checked.items()}
    result = {"ms_per_step": {}, "images_per_second": {}, "ratio": {}, "check": check}
    for variant in BN_VARIANTS:
        result["ms_per_step"][variant] = {name: 1e3 * seconds[variant, name] for name in strats}
        result["images_per_second"][variant] = {
            name: args.batch_size / seconds[variant, name] for name in strats}
        result["ratio"][variant] = seconds[variant, "mirrored"] / seconds[variant, "default"]
    report(args, recipe, result)
    return result


def report(args, recipe, result):
    size = f"{args.image_size}x{args.image_size}x3"
    optimizer = f"{recipe.optimizer} {recipe.learning_rate:g}, weight decay {recipe.weight_decay:g}"
    print(f"{args.model} ({args.activation}), {size}, global batch {args.batch_size}, {optimizer}, "
          f"dropout off, no XLA; median of {args.rounds} interleaved rounds x {args.steps} steps, "
          f"{os.cpu_count()} CPU cores")
    print("The two virtual CPU devices share the same physical cores: this is the overhead "
          "of the distribution machinery, not a speed-up.\n")
    print("| strategy | batch norm | ms/step | images/s | ratio to default |\n|---|---|---|---|---|")
    for variant, bn in BN_LABELS.items():
        for name, label in STRATEGY_LABELS.items():
            ms = result["ms_per_step"][variant][name]
            print(f"| {label} | {bn} | {ms:.1f} | "
                  f"{result['images_per_second'][variant][name]:.0f} | "
                  f"{ms / result['ms_per_step'][variant]['default']:.3f} |")

    check = result["check"]
    print(f"\nSame-loss check: {args.check_steps} steps from the same weights on the same "
          "batches; largest difference over the steps / the final weights; first step whose "
          f"losses differ by more than {LOSS_APART:g}:\n")
    print("| runs compared | loss | first step apart | trainable weights | moving statistics |"
          "\n|---|---|---|---|---|")
    rows = {"per_replica_bn": "mirrored vs default, per-replica BN",
            "synchronized_bn": "mirrored vs default, synchronized BN",
            "single_device": "default: per-replica vs synchronized BN (1 device: rounding only)"}
    for key, label in rows.items():
        c = check[key]
        print(f"| {label} | {c['max_loss_diff']:.3g} | {c['first_step_apart'] or '-'} | "
              f"{c['max_weight_diff']:.3g} | {c['max_moving_stat_diff']:.3g} |")
    columns = [f"{name}, {variant}" for variant in BN_VARIANTS for name in STRATEGY_LABELS]
    print("\n| step | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|")
    for step, row in enumerate(zip(*(check["losses"][column] for column in columns)), 1):
        print(f"| {step} | " + " | ".join(f"{loss:.7f}" for loss in row) + " |")


if __name__ == "__main__":
    main()
