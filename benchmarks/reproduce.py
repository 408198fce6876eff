"""Reproduce the paper's comparison for one model and data set, over several seeds.

Trains every configuration with ``train.py`` (the same code path a user runs,
one subprocess per run, the paper's recipe unless flags override it). A
configuration is ``<units>-<target loss>`` for hard-threshold units, ``units``
``step`` or ``staircase`` and the loss any name of
``keras_ftprop.target_losses.names()`` (``ftp_sh`` is the paper's name for
``soft_hinge``), or ``relu`` or ``saturated_relu``. The default is the paper's six:

    step-sste            step activations, saturated straight-through estimator
    step-ftp_sh          step activations, FTP-SH (soft hinge target loss)
    staircase-sste       quantized ReLU, SSTE
    staircase-ftp_sh     quantized ReLU, FTP-SH
    relu                 ReLU
    saturated_relu       min(max(x, 0), 1)

then writes into ``--output_dir``:

    runs/<config>-seed<k>/   each run's model_dir (metrics.csv, checkpoints, exports)
    results.md               per configuration: mean +- std over seeds of best and final eval
                             top-1, final top-5 and train loss, top-1 change over the last
                             epochs, and the paper's published top-1 beside them; per seed;
                             paired differences (FTP-SH minus every other loss on the same
                             units, staircase minus step with the same loss); with
                             --diagnostics, the last epoch's target statistics per layer group
    results.json             the same numbers, per run and aggregated
    curves.png               train loss and eval top-1 per epoch, one line per configuration,
                             seed spread shaded

It is resumable: a finished run (all epochs in its metrics.csv and its final
export written) is not redone, and an interrupted one resumes from its last
checkpoint. With ``--record_dir``, each finished run's small outputs
(``metrics.csv``, ``settings.json``) are copied to ``<record_dir>/runs/<run>/``
and the report is written there: commit that directory and a study continues
on another machine where it stopped (recorded runs are not redone), and
``--report_only --output_dir=<record_dir>`` regenerates the report from it.
The report refuses runs that differ in a setting one study holds fixed (the
network's stem, the data, the schedule: ``STUDY_SETTINGS``): record another
study in its own directory.
Example (Debian's dataset-fashion-mnist package provides the files):

    python benchmarks/reproduce.py --model convnet4 \\
        --dataset idx:/usr/share/datasets/fashion-mnist --epochs 3 --output_dir results/convnet4

Anything after ``--`` goes to every train.py run (e.g. ``-- --steps_per_epoch=100``).
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_ftprop import target_losses  # noqa: E402

PAPER_CONFIGS = ("step-sste", "step-ftp_sh", "staircase-sste", "staircase-ftp_sh", "relu", "saturated_relu")
THRESHOLD_UNITS = ("step", "staircase")
PLAIN_ACTIVATIONS = ("relu", "saturated_relu")
LOSS_ALIASES = {"ftp_sh": "soft_hinge"}  # the paper's name
RECORDED_FILES = ("metrics.csv", "settings.json")
CONVERGENCE_EPOCHS = 2  # "top-1 change over the last epochs" spans this many epochs
# The paper's top-1 (%) on its own data set, as commonly quoted: only resnet18 staircase-ftp_sh (64.3) is
# confirmed independently (Yang et al., CVPR 2019, Table 2); the rest are unverified, "~" marks approximate.
PUBLISHED = {
    "convnet4": ("CIFAR-10", {"step-sste": "80.6", "step-ftp_sh": "81.3", "staircase-sste": "85.6",
                              "staircase-ftp_sh": "85.5", "relu": "~86", "saturated_relu": "~86"}),
    "convnet8": ("CIFAR-10", {"step-sste": "84.6", "step-ftp_sh": "84.9", "staircase-sste": "88.4",
                              "staircase-ftp_sh": "89.8", "relu": "89.3", "saturated_relu": "~89.1"}),
    "alexnet": ("ImageNet", {"step-sste": "46.7", "step-ftp_sh": "47.3", "staircase-sste": "59.4",
                             "staircase-ftp_sh": "60.7", "relu": "61.3", "saturated_relu": "61.9"}),
    "resnet18": ("ImageNet", {"step-sste": "49.1", "step-ftp_sh": "47.8", "staircase-sste": "60.6",
                              "staircase-ftp_sh": "64.3", "relu": "69.1", "saturated_relu": "66.9"}),
}
# settings.json entries that every run of one study shares: its configurations differ only in units, target
# loss, seed and the recipe's weight decays for those units. A run whose settings lack one (an older train.py)
# is not compared on it.
STUDY_SETTINGS = ("model", "dataset", "image_shape", "stem", "recipe", "steps_per_epoch", "train_examples",
                  "eval_examples", "eval_steps", "mixed_precision")
STUDY_RESOLVED = ("optimizer", "learning_rate", "momentum", "batch_size", "epochs", "lr_decay", "lr_decay_epochs")
# TargetDiagnostics columns (``<layer>/<statistic>``) summarised per layer group at the last epoch.
DIAGNOSTICS = ("target_active", "target_satisfied", "target_none", "flipped")


def split_config(name):
    """``"step-ftp_sh"`` -> ``("step", "soft_hinge")``; ``"relu"`` -> ``("relu", None)``; ValueError if unknown."""
    if name in PLAIN_ACTIVATIONS:
        return name, None
    units, _, loss = name.partition("-")
    loss = LOSS_ALIASES.get(loss, loss)
    if units not in THRESHOLD_UNITS or loss not in target_losses.names():
        raise ValueError(
            f"unknown configuration {name!r}: expected relu, saturated_relu or <units>-<loss> with units in "
            f"{', '.join(THRESHOLD_UNITS)} and loss in {', '.join(('ftp_sh',) + target_losses.names())}")
    return units, loss


def config_flags(name):
    """The train.py flags of a configuration."""
    activation, loss = split_config(name)
    return [f"--activation={activation}"] + ([f"--target_loss={loss}"] if loss else [])


def parse_args(argv):
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    else:
        extra = []
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", default="convnet4", help="train.py --model (default convnet4)")
    parser.add_argument("--dataset", default="digits", help="train.py --dataset (default digits)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    parser.add_argument("--first_seed", type=int, default=1)
    parser.add_argument("--configs", default=",".join(PAPER_CONFIGS),
                        help="comma-separated configurations (default: the paper's six)")
    parser.add_argument("--output_dir", default=None, help="default: results/<model>-<dataset>")
    parser.add_argument("--record_dir", default=None,
                        help="copy each finished run's metrics.csv and settings.json here and write the report "
                             "here; runs recorded here are not redone")
    parser.add_argument("--report_only", action="store_true", help="only aggregate the finished runs")
    args = parser.parse_args(argv)
    args.extra = extra
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    for name in args.configs:
        try:
            split_config(name)
        except ValueError as error:
            parser.error(str(error))
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.output_dir is None:
        dataset = args.dataset.split(":")[0] if ":" in args.dataset else args.dataset
        args.output_dir = os.path.join("results", f"{args.model}-{dataset}")
    return args


def read_metrics(model_dir):
    """Rows of a run's metrics.csv as dicts of floats (empty if there is none; NA cells left out)."""
    path = os.path.join(model_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None, "NA")} for row in csv.DictReader(f)]


def _has_epochs(model_dir, epochs):
    rows = read_metrics(model_dir)
    return len(rows) >= epochs if epochs else bool(rows)


def is_finished(model_dir, epochs):
    return _has_epochs(model_dir, epochs) and os.path.exists(
        os.path.join(model_dir, "export", "final", "saved_model.pb"))


def record(model_dir, record_dir):
    """Copies a finished run's small outputs into ``record_dir`` (same relative layout)."""
    os.makedirs(record_dir, exist_ok=True)
    for name in RECORDED_FILES:
        shutil.copyfile(os.path.join(model_dir, name), os.path.join(record_dir, name))


def run_name(config, seed):
    return f"{config}-seed{seed}"


def run(args, config, seed):
    name = run_name(config, seed)
    model_dir = os.path.join(args.output_dir, "runs", name)
    recorded = args.record_dir and os.path.join(args.record_dir, "runs", name)
    if recorded and _has_epochs(recorded, args.epochs):
        print(f"[recorded] {config} seed {seed}", flush=True)
        return
    if is_finished(model_dir, args.epochs):
        print(f"[done]    {config} seed {seed}", flush=True)
    else:
        command = [sys.executable, os.path.join(ROOT, "train.py"), f"--model={args.model}",
                   f"--dataset={args.dataset}", f"--seed={seed}", f"--model_dir={model_dir}", "--verbose=2",
                   *config_flags(config), *args.extra]
        if args.epochs:
            command.append(f"--epochs={args.epochs}")
        print(f"[running] {config} seed {seed}: {' '.join(command[1:])}", flush=True)
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, "train.log"), "a") as log:
            status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        if status != 0:
            sys.exit(f"train.py failed (exit {status}) for {config} seed {seed}; see {model_dir}/train.log")
    if recorded:
        record(model_dir, recorded)


def _mean_std(values):
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def study_settings(run_dir):
    """{setting: value} of a run's settings.json that its study holds fixed (``resolved.<name>`` for the
    resolved recipe); {} without a settings.json."""
    path = os.path.join(run_dir, "settings.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        settings = json.load(f)
    resolved = settings.get("resolved", {})
    return {**{key: settings[key] for key in STUDY_SETTINGS if key in settings},
            **{f"resolved.{key}": resolved[key] for key in STUDY_RESOLVED if key in resolved}}


def check_one_study(runs_dir, names):
    """Exits with the runs and settings that differ if the runs ``names`` of ``runs_dir`` are not one study.

    A report that averaged or paired runs of another stem, schedule or data set would be silently wrong."""
    seen = {}  # setting -> (value, first run with it)
    for name in names:
        for key, value in study_settings(os.path.join(runs_dir, name)).items():
            first = seen.setdefault(key, (value, name))
            if first[0] != value:
                sys.exit(f"{runs_dir}: runs of different studies: {key} is {json.dumps(first[0])} in {first[1]} "
                         f"but {json.dumps(value)} in {name}; report them from separate directories")


def aggregate(args, runs_dir):
    """Per configuration: the runs' curves and mean/std of their best and final numbers.

    Exits if the runs differ in a setting their study holds fixed (``check_one_study``)."""
    results = {}
    aggregated = []
    for config in args.configs:
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows = read_metrics(os.path.join(runs_dir, run_name(config, seed)))
            if not rows or "val_top1" not in rows[0] or (args.epochs and len(rows) < args.epochs):
                continue  # not started, no evaluation, or still running
            top1 = [row["val_top1"] for row in rows]
            top5 = [row.get("val_top5") for row in rows]
            loss = [row.get("loss") for row in rows]
            aggregated.append(run_name(config, seed))
            span = min(CONVERGENCE_EPOCHS, len(top1) - 1)
            runs.append({"seed": seed, "top1": top1, "top5": top5, "loss": loss,
                         "best_top1": max(top1), "best_epoch": top1.index(max(top1)) + 1,
                         "final_top1": top1[-1], "final_top5": top5[-1],
                         "final_loss": loss[-1], "top1_change": top1[-1] - top1[-1 - span] if span else None,
                         "diagnostics": final_diagnostics(rows[-1])})
        results[config] = {
            "runs": runs,
            **{key: _mean_std([r[key] for r in runs if r[key] is not None])
               for key in ("best_top1", "final_top1", "final_top5", "final_loss", "top1_change")},
            "diagnostics": _mean_diagnostics([r["diagnostics"] for r in runs]),
        }
    check_one_study(runs_dir, aggregated)
    return results


def _mean_diagnostics(per_run):
    """{statistic: {group: mean over the runs that logged it}}: seeds may log different layers."""
    return _group_means((statistic, group, value) for diagnostics in per_run
                        for statistic, groups in diagnostics.items() for group, value in groups.items())


def _group_means(triples):
    """(statistic, group, value) triples -> {statistic: {group: mean of its values}}, statistics in
    DIAGNOSTICS order and groups sorted."""
    pooled = {}
    for statistic, group, value in triples:
        pooled.setdefault(statistic, {}).setdefault(group, []).append(value)
    return {statistic: {group: statistics.fmean(values) for group, values in sorted(pooled[statistic].items())}
            for statistic in DIAGNOSTICS if statistic in pooled}


def layer_group(layer):
    """``stage2_block1_act1`` -> ``stage2`` (a ResNet stage); any other layer is its own group."""
    return layer.split("_block")[0]


def final_diagnostics(row):
    """{statistic: {layer group: mean over the group's layers}} of one metrics.csv row's
    ``<layer>/<statistic>`` columns (TargetDiagnostics), for the statistics in DIAGNOSTICS."""
    triples = []
    for key, value in row.items():
        layer, _, statistic = key.rpartition("/")
        if layer and statistic in DIAGNOSTICS:
            triples.append((statistic, layer_group(layer), value))
    return _group_means(triples)


def comparison_pairs(configs):
    """(a, b) pairs differing in one factor: FTP-SH vs every other loss on the same units, then
    staircase vs step with the same loss."""
    split = {name: split_config(name) for name in configs}
    pairs = [(a, b) for a in configs for b in configs
             if a != b and split[a][1] == "soft_hinge" and split[b][1] not in (None, "soft_hinge")
             and split[a][0] == split[b][0]]
    pairs += [(a, b) for a in configs for b in configs
              if split[a][0] == "staircase" and split[b][0] == "step" and split[a][1] == split[b][1]]
    return pairs


def paired_differences(results):
    """Per pair (a, b): final top-1 of a minus b for every seed both finished, and whether the mean
    difference exceeds the seed-to-seed spread (the larger std of a's and b's final top-1) with
    every seed on the same side."""
    out = []
    for a, b in comparison_pairs(list(results)):
        final_a = {r["seed"]: r["final_top1"] for r in results[a]["runs"]}
        final_b = {r["seed"]: r["final_top1"] for r in results[b]["runs"]}
        seeds = sorted(set(final_a) & set(final_b))
        if not seeds:
            continue
        diffs = [final_a[s] - final_b[s] for s in seeds]
        mean, std = _mean_std(diffs)
        spread = max(results[a]["final_top1"][1], results[b]["final_top1"][1])
        out.append({"a": a, "b": b, "seeds": seeds, "differences": diffs, "mean": mean, "std": std,
                    "a_ahead": sum(d > 0 for d in diffs), "spread": spread,
                    "beyond_spread": len(seeds) > 1 and abs(mean) > spread
                    and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs))})
    return out


def gaps_to_relu(results):
    """{configuration: mean final top-1 minus ReLU's} for every finished configuration but ReLU; {} without
    a finished ReLU run. The ReLU twin is the same network and recipe, so the gap is what the units cost."""
    relu = results.get("relu", {}).get("final_top1")
    if relu is None:
        return {}
    return {config: result["final_top1"][0] - relu[0] for config, result in results.items()
            if config != "relu" and result["final_top1"] is not None}


def _gap_table(results):
    gaps = gaps_to_relu(results)
    if not gaps:
        return []
    return ["", "Gap to ReLU: mean final top-1 minus ReLU's (the same network and recipe), points", "",
            "| configuration | runs | gap |", "|---|---|---|"] + [
        f"| {config} | {len(results[config]['runs'])} | {100 * gap:+.2f} |" for config, gap in gaps.items()]


def _cell(mean_std, scale=100, digits=2):
    return "-" if mean_std is None else f"{scale * mean_std[0]:.{digits}f} ± {scale * mean_std[1]:.{digits}f}"


def format_report(args, results, pairs):
    published_on, published = PUBLISHED.get(args.model, (None, {}))
    header = ("| configuration | runs | best top-1 | final top-1 | final top-5 | final train loss "
              f"| top-1 change, last {CONVERGENCE_EPOCHS} epochs |")
    header += f" paper, {published_on} |" if published else ""
    lines = [f"{args.model} on {_short_dataset(args.dataset)}, eval split, mean ± std over seeds (%)", "", header,
             "|" + "---|" * (header.count("|") - 1)]
    for config, result in results.items():
        lines.append("| " + " | ".join([
            config, str(len(result["runs"])), _cell(result["best_top1"]), _cell(result["final_top1"]),
            _cell(result["final_top5"]), _cell(result["final_loss"], scale=1, digits=4),
            _cell(result["top1_change"])] + ([published.get(config, "-")] if published else [])) + " |")
    if published:
        lines += ["", f"paper: the published top-1 on {published_on} (its own data and schedule, not comparable "
                  "in absolute terms); as commonly quoted, only resnet18 staircase-ftp_sh (64.3) is confirmed "
                  "independently."]
    lines += _gap_table(results)
    lines += _per_seed_table(results)
    if pairs:
        lines += ["", "Paired by seed (same seed, same data order): final top-1 of A minus B, in points", "",
                  "| A - B | seeds | per seed | mean ± std | A ahead | seed spread | beyond spread |",
                  "|---|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(
                f"| {p['a']} - {p['b']} | {len(p['seeds'])} | "
                + ", ".join(f"{100 * d:+.2f}" for d in p["differences"])
                + f" | {100 * p['mean']:+.2f} ± {100 * p['std']:.2f} | {p['a_ahead']}/{len(p['seeds'])} | "
                f"{100 * p['spread']:.2f} | {'yes' if p['beyond_spread'] else 'no'} |")
    lines += _diagnostics_table(results)
    return "\n".join(lines) + "\n"


def _per_seed_table(results):
    seeds = sorted({run["seed"] for result in results.values() for run in result["runs"]})
    if not seeds:
        return []
    lines = ["", "Per seed: final top-1 (best top-1, its epoch), %", "",
             "| configuration | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for config, result in results.items():
        by_seed = {run["seed"]: run for run in result["runs"]}
        lines.append(f"| {config} | " + " | ".join(
            f"{100 * by_seed[s]['final_top1']:.2f} ({100 * by_seed[s]['best_top1']:.2f}, {by_seed[s]['best_epoch']})"
            if s in by_seed else "-" for s in seeds) + " |")
    return lines


def _diagnostics_table(results):
    """Last epoch's TargetDiagnostics per layer group, mean over the group's layers and the seeds."""
    configs = [config for config, result in results.items() if result["diagnostics"]]
    if not configs:
        return []
    lines = ["", "Targets at the last epoch (TargetDiagnostics), mean over each layer group and the seeds, %: "
             "active = inside the loss's active region, satisfied = output already equals the target, "
             "none = no target (zero gradient), flipped = outputs changed since the previous log", "",
             "| statistic | layers | " + " | ".join(configs) + " |", "|---|---|" + "---|" * len(configs)]
    for statistic in DIAGNOSTICS:
        groups = sorted({g for c in configs for g in results[c]["diagnostics"].get(statistic, {})})
        for group in groups:
            cells = [results[c]["diagnostics"].get(statistic, {}).get(group) for c in configs]
            lines.append(f"| {statistic.removeprefix('target_')} | {group} | "
                         + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
    return lines


def plot(args, results, report_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    figure, (loss_axis, top1_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    for config, result in results.items():
        if not result["runs"]:
            continue
        color = None
        for axis, key, scale in ((loss_axis, "loss", 1), (top1_axis, "top1", 100)):
            curves = [run[key] for run in result["runs"] if None not in run[key]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            curves = scale * np.array([c[:length] for c in curves])
            epochs = np.arange(1, length + 1)
            (line,) = axis.plot(epochs, curves.mean(axis=0), marker="o", markersize=3, label=config, color=color)
            color = line.get_color()
            axis.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2)
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("train loss (with weight decay)")
    top1_axis.set_ylabel("eval top-1 (%)")
    for axis in (loss_axis, top1_axis):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    top1_axis.legend(fontsize=8)
    figure.suptitle(f"{args.model} on {_short_dataset(args.dataset)}: mean over seeds, shaded min-max",
                    fontsize=10)
    figure.tight_layout()
    path = os.path.join(report_dir, "curves.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short_dataset(spec):
    """``idx:/a/b/fashion-mnist`` -> ``idx:fashion-mnist``; other names unchanged."""
    kind, _, path = spec.partition(":")
    return f"{kind}:{os.path.basename(os.path.normpath(path))}" if path else spec


def report(args):
    """Aggregates the finished runs of ``--record_dir`` (else ``--output_dir``) into results.md/.json and the figure."""
    report_dir = args.record_dir or args.output_dir
    os.makedirs(report_dir, exist_ok=True)
    results = aggregate(args, os.path.join(report_dir, "runs"))
    pairs = paired_differences(results)
    with open(os.path.join(report_dir, "results.json"), "w") as f:
        json.dump({"configurations": results, "paired": pairs, "gap_to_relu": gaps_to_relu(results)}, f, indent=1)
    text = format_report(args, results, pairs)
    with open(os.path.join(report_dir, "results.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"figure: {plot(args, results, report_dir)}")
    return results, pairs


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for config in args.configs:
                run(args, config, seed)
    return report(args)


if __name__ == "__main__":
    main()
