"""Reproduce the paper's comparison for one model and data set, over several seeds.

Trains every configuration below with ``train.py`` (the same code path a user
runs, one subprocess per run, the paper's recipe unless flags override it):

    step-sste            step activations, saturated straight-through estimator
    step-ftp_sh          step activations, FTP-SH (soft hinge target loss)
    staircase-sste       quantized ReLU, SSTE
    staircase-ftp_sh     quantized ReLU, FTP-SH
    relu                 ReLU
    saturated_relu       min(max(x, 0), 1)

then writes into ``--output_dir``:

    runs/<config>-seed<k>/   each run's model_dir (metrics.csv, checkpoints, exports)
    results.md               mean +- std over seeds of best and final eval top-1 (and top-5)
    results.json             the same numbers, per run and aggregated
    top1.png                 eval top-1 per epoch, one line per configuration, seed spread shaded

It is resumable: a finished run (all epochs in its metrics.csv and its final
export written) is not redone, and an interrupted one resumes from its last
checkpoint. Example (Debian's dataset-fashion-mnist package provides the files):

    python benchmarks/reproduce.py --model convnet4 \\
        --dataset idx:/usr/share/datasets/fashion-mnist --epochs 3 --output_dir results/convnet4

Anything after ``--`` goes to every train.py run (e.g. ``-- --steps_per_epoch=100``).
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {  # name: train.py flags
    "step-sste": ["--activation=step", "--target_loss=sste"],
    "step-ftp_sh": ["--activation=step", "--target_loss=soft_hinge"],
    "staircase-sste": ["--activation=staircase", "--target_loss=sste"],
    "staircase-ftp_sh": ["--activation=staircase", "--target_loss=soft_hinge"],
    "relu": ["--activation=relu"],
    "saturated_relu": ["--activation=saturated_relu"],
}


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
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--output_dir", default=None, help="default: results/<model>-<dataset>")
    parser.add_argument("--report_only", action="store_true", help="only aggregate the finished runs")
    args = parser.parse_args(argv)
    args.extra = extra
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; valid: {', '.join(CONFIGS)}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.output_dir is None:
        dataset = args.dataset.split(":")[0] if ":" in args.dataset else args.dataset
        args.output_dir = os.path.join("results", f"{args.model}-{dataset}")
    return args


def read_metrics(model_dir):
    """Rows of a run's metrics.csv as dicts of floats (empty if there is none)."""
    path = os.path.join(model_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def is_finished(model_dir, epochs):
    rows = read_metrics(model_dir)
    done = len(rows) >= epochs if epochs else bool(rows)
    return done and os.path.exists(os.path.join(model_dir, "export", "final", "saved_model.pb"))


def run(args, config, seed):
    model_dir = os.path.join(args.output_dir, "runs", f"{config}-seed{seed}")
    if is_finished(model_dir, args.epochs):
        print(f"[done]    {config} seed {seed}", flush=True)
        return model_dir
    command = [sys.executable, os.path.join(ROOT, "train.py"), f"--model={args.model}",
               f"--dataset={args.dataset}", f"--seed={seed}", f"--model_dir={model_dir}", "--verbose=2",
               *CONFIGS[config], *args.extra]
    if args.epochs:
        command.append(f"--epochs={args.epochs}")
    print(f"[running] {config} seed {seed}: {' '.join(command[1:])}", flush=True)
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "train.log"), "a") as log:
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        sys.exit(f"train.py failed (exit {status}) for {config} seed {seed}; see {model_dir}/train.log")
    return model_dir


def _mean_std(values):
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(args):
    """Per configuration: the runs' curves and mean/std of best and final eval top-1/top-5."""
    results = {}
    for config in args.configs:
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows = read_metrics(os.path.join(args.output_dir, "runs", f"{config}-seed{seed}"))
            if not rows or "val_top1" not in rows[0] or (args.epochs and len(rows) < args.epochs):
                continue  # not started, no evaluation, or still running
            top1 = [row["val_top1"] for row in rows]
            top5 = [row.get("val_top5") for row in rows]
            runs.append({"seed": seed, "top1": top1, "top5": top5, "best_top1": max(top1), "final_top1": top1[-1],
                         "best_top5": max(v for v in top5 if v is not None) if None not in top5 else None,
                         "final_top5": top5[-1]})
        results[config] = {
            "runs": runs,
            **{key: _mean_std([r[key] for r in runs if r[key] is not None])
               for key in ("best_top1", "final_top1", "best_top5", "final_top5")},
        }
    return results


def _cell(mean_std):
    return "-" if mean_std is None else f"{100 * mean_std[0]:.2f} ± {100 * mean_std[1]:.2f}"


def write_table(args, results, num_classes):
    with_top5 = num_classes is None or num_classes > 5
    header = "| configuration | runs | best top-1 | final top-1 |" + (" best top-5 | final top-5 |" if with_top5 else "")
    lines = [f"{args.model} on {args.dataset}, eval split, mean ± std over seeds (%)", "", header,
             "|" + "---|" * (header.count("|") - 1)]
    for config, result in results.items():
        cells = [config, str(len(result["runs"])), _cell(result["best_top1"]), _cell(result["final_top1"])]
        if with_top5:
            cells += [_cell(result["best_top5"]), _cell(result["final_top5"])]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(text)
    return text


def plot(args, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for config, result in results.items():
        curves = [run["top1"] for run in result["runs"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        curves = 100 * np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        (line,) = axis.plot(epochs, curves.mean(axis=0), marker="o", markersize=3, label=config)
        axis.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_ylabel("eval top-1 (%)")
    axis.set_title(f"{args.model} on {_short_dataset(args.dataset)}: mean over seeds, shaded min-max",
                   fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = os.path.join(args.output_dir, "top1.png")
    figure.savefig(path, dpi=120)
    return path


def _short_dataset(spec):
    """``idx:/a/b/fashion-mnist`` -> ``idx:fashion-mnist``; other names unchanged."""
    kind, _, path = spec.partition(":")
    return f"{kind}:{os.path.basename(os.path.normpath(path))}" if path else spec


def _num_classes(args):
    for config in args.configs:
        path = os.path.join(args.output_dir, "runs", f"{config}-seed{args.first_seed}", "settings.json")
        if os.path.exists(path):
            with open(path) as f:
                settings = json.load(f)
            return settings.get("data", {}).get("num_classes")
    return None


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if not args.report_only:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for config in args.configs:
                run(args, config, seed)
    results = aggregate(args)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(write_table(args, results, _num_classes(args)))
    print(f"figure: {plot(args, results)}")


if __name__ == "__main__":
    main()
