"""benchmarks/reproduce.py: aggregation of finished runs into the table, JSON and figure."""

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "benchmarks", "reproduce.py"))
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _write_run(runs_dir, config, seed, top1, top5, loss=None, export=True, extra=None, settings=None):
    """A finished run's records; ``extra`` maps further metrics.csv columns to their values per epoch,
    ``settings`` is its settings.json."""
    extra = extra or {}
    run_dir = os.path.join(runs_dir, f"{config}-seed{seed}")
    os.makedirs(run_dir)
    if export:
        os.makedirs(os.path.join(run_dir, "export", "final"))
        open(os.path.join(run_dir, "export", "final", "saved_model.pb"), "w").close()
    loss = loss or [1.0] * len(top1)
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_top1", "val_top5", *extra])
        for epoch, row in enumerate(zip(loss, top1, top5, *extra.values())):
            writer.writerow([epoch, *row])
    with open(os.path.join(run_dir, "settings.json"), "w") as f:
        json.dump(settings or {"num_classes": 10}, f)
    return run_dir


def _settings(activation, weight_decay, **changed):
    """settings.json of a resnet18 run as train.py writes it, with ``changed`` entries replaced."""
    resolved = {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9, "batch_size": 256, "epochs": 2,
                "lr_decay": 0.1, "lr_decay_epochs": [6, 11], "weight_decay": weight_decay,
                "batch_norm_weight_decay": weight_decay}
    settings = {"model": "resnet18", "dataset": "idx:fashion-mnist", "image_shape": [32, 32, 3],
                "stem": "imagenet", "recipe": "paper", "steps_per_epoch": 234, "activation": activation,
                "target_loss": "soft_hinge", "num_classes": 10, "resolved": resolved}
    for key, value in changed.items():
        if key.startswith("resolved."):
            resolved[key.split(".", 1)[1]] = value
        else:
            settings[key] = value
    return settings


def test_report_pairs_configurations_that_differ_only_in_units_loss_and_weight_decay(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    _write_run(runs, "step-ftp_sh", 1, [0.5, 0.8], [0.9, 0.9], settings=_settings("step", 5e-7))
    _write_run(runs, "relu", 1, [0.6, 0.9], [0.9, 0.9], settings=_settings("relu", 1e-4, target_loss=None))
    reproduce.main(["--report_only", "--seeds=1", "--configs=step-ftp_sh,relu", "--epochs=2",
                    f"--output_dir={tmp_path}"])
    gaps = json.load(open(os.path.join(tmp_path, "results.json")))["gap_to_relu"]
    assert gaps["step-ftp_sh"] == pytest.approx(-0.1)


@pytest.mark.parametrize("changed, shown", [
    ({"stem": "cifar"}, 'stem is "imagenet" in step-ftp_sh-seed1 but "cifar" in step-sste-seed1'),
    ({"resolved.lr_decay_epochs": [30, 60]}, "resolved.lr_decay_epochs is [6, 11]"),
    ({"image_shape": [64, 64, 3]}, "image_shape is [32, 32, 3]"),
    ({"dataset": "cifar10"}, 'dataset is "idx:fashion-mnist"'),
])
def test_report_refuses_runs_of_different_studies(tmp_path, changed, shown):
    runs = os.path.join(tmp_path, "runs")
    _write_run(runs, "step-ftp_sh", 1, [0.5, 0.8], [0.9, 0.9], settings=_settings("step", 5e-7))
    _write_run(runs, "step-sste", 1, [0.5, 0.7], [0.9, 0.9], settings=_settings("step", 5e-7, **changed))
    with pytest.raises(SystemExit, match=re.escape(shown)):
        reproduce.main(["--report_only", "--seeds=1", "--configs=step-ftp_sh,step-sste", "--epochs=2",
                        f"--output_dir={tmp_path}"])
    assert not os.path.exists(os.path.join(tmp_path, "results.md"))


def test_report_compares_only_the_settings_a_run_records(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")  # a run of a train.py that did not save its stem yet
    older = _settings("step", 5e-7)
    del older["stem"]
    _write_run(runs, "step-ftp_sh", 1, [0.5, 0.8], [0.9, 0.9], settings=older)
    _write_run(runs, "step-sste", 1, [0.5, 0.7], [0.9, 0.9], settings=_settings("step", 5e-7))
    reproduce.main(["--report_only", "--seeds=1", "--configs=step-ftp_sh,step-sste", "--epochs=2",
                    f"--output_dir={tmp_path}"])
    assert os.path.exists(os.path.join(tmp_path, "results.md"))


def test_report_aggregates_seeds(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    _write_run(runs, "step-sste", 1, [0.5, 0.7, 0.6], [0.9, 0.95, 0.96], loss=[2.0, 1.0, 0.5])
    _write_run(runs, "step-sste", 2, [0.6, 0.8, 0.8], [0.9, 0.97, 0.98], loss=[2.0, 1.0, 0.7])
    _write_run(runs, "relu", 1, [0.7, 0.9, 0.85], [0.99, 0.99, 0.99])
    _write_run(runs, "relu", 2, [0.1], [0.5])  # still running: left out
    reproduce.main(["--report_only", "--seeds=2", "--configs=step-sste,relu", "--epochs=3",
                    f"--output_dir={tmp_path}"])
    results = json.load(open(os.path.join(tmp_path, "results.json")))["configurations"]
    best, std = results["step-sste"]["best_top1"]
    assert best == pytest.approx(0.75) and std == pytest.approx(0.0707107, rel=1e-5)  # best 0.7 and 0.8
    assert results["step-sste"]["final_top1"][0] == pytest.approx(0.7)  # final 0.6 and 0.8
    assert results["step-sste"]["final_loss"][0] == pytest.approx(0.6)
    assert results["step-sste"]["top1_change"][0] == pytest.approx(0.15)  # 0.6 - 0.5 and 0.8 - 0.6
    assert results["relu"]["final_top1"] == [pytest.approx(0.85), 0.0]
    table = open(os.path.join(tmp_path, "results.md")).read()
    assert "| step-sste | 2 | 75.00 ± 7.07 | 70.00 ± 14.14 | 97.00 ± 1.41 | 0.6000 ± 0.1414 | 15.00 ± 7.07 |" in table
    assert os.path.getsize(os.path.join(tmp_path, "curves.png")) > 1000
    assert reproduce.is_finished(os.path.join(runs, "relu-seed1"), 3)
    assert not reproduce.is_finished(os.path.join(runs, "relu-seed1"), 4)


def test_paired_differences_by_seed(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    finals = {"step-ftp_sh": [0.83, 0.84, 0.82], "step-sste": [0.81, 0.83, 0.80],
              "staircase-ftp_sh": [0.80, 0.86, 0.81]}
    for config, values in finals.items():
        for seed, final in enumerate(values, start=1):
            _write_run(runs, config, seed, [0.5, final], [0.9, 0.99])
    _, pairs = reproduce.main(["--report_only", f"--configs={','.join(finals)}", "--epochs=2",
                               f"--output_dir={tmp_path}"])
    by_pair = {(p["a"], p["b"]): p for p in pairs}
    assert set(by_pair) == {("step-ftp_sh", "step-sste"), ("staircase-ftp_sh", "step-ftp_sh")}
    sh = by_pair["step-ftp_sh", "step-sste"]
    assert sh["differences"] == pytest.approx([0.02, 0.01, 0.02])
    assert sh["mean"] == pytest.approx(0.05 / 3) and sh["a_ahead"] == 3
    # seed spread: the larger std of the two configurations' finals, step-sste's 1.53 points < the mean 1.67
    assert sh["spread"] == pytest.approx(0.0152753, rel=1e-4) and sh["beyond_spread"]
    stair = by_pair["staircase-ftp_sh", "step-ftp_sh"]
    assert stair["differences"] == pytest.approx([-0.03, 0.02, -0.01]) and not stair["beyond_spread"]
    table = open(os.path.join(tmp_path, "results.md")).read()
    assert "| step-ftp_sh - step-sste | 3 | +2.00, +1.00, +2.00 | +1.67 ± 0.58 | 3/3 | 1.53 | yes |" in table


def test_gap_to_relu_is_each_configurations_mean_final_minus_relus(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    for seed, final in ((1, 0.80), (2, 0.84)):
        _write_run(runs, "step-ftp_sh", seed, [0.9, final], [0.9, 0.99])  # best 0.9: the gap uses the final
    _write_run(runs, "step-sste", 1, [0.5, 0.79], [0.9, 0.99])
    argv = ["--report_only", "--seeds=2", "--configs=step-ftp_sh,step-sste,relu", "--epochs=2",
            f"--output_dir={tmp_path}"]
    results, _ = reproduce.main(argv)
    assert reproduce.gaps_to_relu(results) == {}  # no ReLU run yet: no gap, no table
    assert "Gap to ReLU" not in open(os.path.join(tmp_path, "results.md")).read()
    _write_run(runs, "relu", 1, [0.5, 0.85], [0.9, 0.99])
    reproduce.main(argv)
    gaps = json.load(open(os.path.join(tmp_path, "results.json")))["gap_to_relu"]
    assert gaps == {"step-ftp_sh": pytest.approx(-0.03), "step-sste": pytest.approx(-0.06)}
    table = open(os.path.join(tmp_path, "results.md")).read()
    assert "| step-ftp_sh | 2 | -3.00 |" in table and "| step-sste | 1 | -6.00 |" in table


def test_report_lists_every_seed_beside_the_papers_numbers(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    _write_run(runs, "step-sste", 1, [0.5, 0.7, 0.6], [0.9, 0.9, 0.9])
    _write_run(runs, "step-sste", 2, [0.6, 0.8, 0.8], [0.9, 0.9, 0.9])  # best first reached at epoch 2
    _write_run(runs, "staircase-ftp_sh", 2, [0.9, 0.8, 0.85], [0.9, 0.9, 0.9])
    argv = ["--report_only", "--seeds=2", "--configs=step-sste,staircase-ftp_sh", "--epochs=3",
            f"--output_dir={tmp_path}"]
    reproduce.main(["--model=resnet18", *argv])
    table = open(os.path.join(tmp_path, "results.md")).read()
    assert "| step-sste | 60.00 (70.00, 2) | 80.00 (80.00, 2) |" in table
    assert "| staircase-ftp_sh | - | 85.00 (90.00, 1) |" in table
    assert "| paper, ImageNet |" in table
    assert "| 70.00 ± 14.14 | 90.00 ± 0.00 | 1.0000 ± 0.0000 | 15.00 ± 7.07 | 49.1 |" in table
    assert "| 85.00 ± 0.00 | 90.00 ± 0.00 | 1.0000 ± 0.0000 | -5.00 ± 0.00 | 64.3 |" in table
    reproduce.main(["--model=resnet34", *argv])  # nothing published: no column
    assert "paper" not in open(os.path.join(tmp_path, "results.md")).read()


def test_target_diagnostics_summarised_per_layer_group_at_the_last_epoch(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    for seed, offset in ((1, 0.0), (2, 0.1)):
        _write_run(runs, "step-ftp_sh", seed, [0.5, 0.6], [0.9, 0.9], extra={
            "stem_act/target_none": [0.9, 0.7 + offset],
            "stage1_block1_act1/target_active": [0.0, 0.5 + offset],
            "stage1_block2_act2/target_active": [0.0, 0.3 + offset],
            "stage1_block1_act1/target_loss": [9.0, 9.0],  # not summarised
            "stage2_block1_act1/flipped": [1.0, 0.2],
        })
    _write_run(runs, "relu", 1, [0.5, 0.6], [0.9, 0.9])
    results, _ = reproduce.main(["--report_only", "--model=resnet18", "--seeds=2", "--configs=step-ftp_sh,relu",
                                 "--epochs=2", f"--output_dir={tmp_path}"])
    diagnostics = results["step-ftp_sh"]["diagnostics"]
    # last epoch only; mean over the stage's two layers, then over the seeds: ((0.5 + 0.3) / 2 + (0.6 + 0.4) / 2) / 2
    assert diagnostics["target_active"] == {"stage1": pytest.approx(0.45)}
    assert diagnostics["target_none"] == {"stem_act": pytest.approx(0.75)}
    assert diagnostics["flipped"] == {"stage2": pytest.approx(0.2)}
    assert "target_loss" not in diagnostics and results["relu"]["diagnostics"] == {}
    table = open(os.path.join(tmp_path, "results.md")).read()
    assert "| statistic | layers | step-ftp_sh |" in table  # relu has no column
    assert "| active | stage1 | 45.0 |" in table and "| none | stem_act | 75.0 |" in table
    assert table.index("| active |") < table.index("| none |") < table.index("| flipped |")


def test_target_diagnostics_of_seeds_that_log_different_layers(tmp_path, capsys):
    runs = os.path.join(tmp_path, "runs")
    _write_run(runs, "step-sste", 1, [0.5, 0.6], [0.9, 0.9], extra={
        "stem_act/target_active": [0.0, 0.2], "stage1_block1_act1/target_active": [0.0, 0.4]})
    _write_run(runs, "step-sste", 2, [0.5, 0.6], [0.9, 0.9], extra={
        "stage1_block1_act1/target_active": [0.0, 0.6], "stage2_block1_act1/target_active": [0.0, 0.8]})
    results, _ = reproduce.main(["--report_only", "--model=resnet18", "--seeds=2", "--configs=step-sste",
                                 "--epochs=2", f"--output_dir={tmp_path}"])
    # each group is averaged over the seeds that logged it
    assert results["step-sste"]["diagnostics"]["target_active"] == {
        "stage1": pytest.approx(0.5), "stage2": pytest.approx(0.8), "stem_act": pytest.approx(0.2)}


def test_record_dir_keeps_small_outputs_and_skips_recorded_runs(tmp_path, capsys):
    output, record = os.path.join(tmp_path, "out"), os.path.join(tmp_path, "record")
    _write_run(os.path.join(output, "runs"), "relu", 1, [0.5, 0.6], [0.9, 0.9])  # finished, not yet recorded
    args = reproduce.parse_args(["--configs=relu", "--seeds=1", "--epochs=2", f"--output_dir={output}",
                                 f"--record_dir={record}"])
    reproduce.run(args, "relu", 1)
    assert "[done]" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(record, "runs", "relu-seed1"))) == ["metrics.csv", "settings.json"]
    shutil.rmtree(output)  # a new machine: only the record is left; the run is not redone
    reproduce.run(args, "relu", 1)
    assert "[recorded] relu seed 1" in capsys.readouterr().out
    results, _ = reproduce.main(["--report_only", "--configs=relu", "--seeds=1", "--epochs=2",
                                 f"--output_dir={record}"])
    assert results["relu"]["final_top1"][0] == pytest.approx(0.6)
    assert os.path.exists(os.path.join(record, "results.md"))


@pytest.mark.parametrize("name, flags", [
    ("step-ftp_sh", ["--activation=step", "--target_loss=soft_hinge"]),
    ("staircase-truncated_hinge", ["--activation=staircase", "--target_loss=truncated_hinge"]),
    ("saturated_relu", ["--activation=saturated_relu"]),
])
def test_configuration_names_map_to_train_flags(name, flags):
    assert reproduce.config_flags(name) == flags


@pytest.mark.parametrize("name", ["step-ste_typo", "relu-sste", "step", "sigmoid-soft_hinge"])
def test_unknown_configuration_is_refused(name, capsys):
    with pytest.raises(SystemExit):
        reproduce.parse_args([f"--configs={name}"])
    assert "unknown configuration" in capsys.readouterr().err


def test_extra_flags_after_double_dash_go_to_train():
    args = reproduce.parse_args(["--model=convnet8", "--", "--steps_per_epoch=5"])
    assert args.extra == ["--steps_per_epoch=5"] and args.model == "convnet8"


@pytest.mark.slow
def test_runs_train_py_and_does_not_redo_finished_runs(tmp_path, capsys):
    argv = ["--model=convnet4", "--dataset=digits", "--configs=step-sste", "--seeds=1", "--epochs=1",
            f"--output_dir={tmp_path}", "--", "--steps_per_epoch=2", "--eval_steps=1", "--batch_size=8"]
    reproduce.main(argv)
    first = capsys.readouterr().out
    assert "[running] step-sste seed 1" in first and "| step-sste | 1 |" in first
    assert len(reproduce.read_metrics(os.path.join(tmp_path, "runs", "step-sste-seed1"))) == 1
    reproduce.main(argv)
    assert "[done]    step-sste seed 1" in capsys.readouterr().out


def test_recorded_runs_are_not_ignored_by_git():
    probe = subprocess.run(["git", "check-ignore", "-q", "docs/results/converged/convnet4/runs/relu-seed1/metrics.csv"],
                           cwd=ROOT, capture_output=True)
    if probe.returncode == 128:
        pytest.skip("not a git checkout")
    assert probe.returncode == 1, "a committed study's run records would be ignored by .gitignore"
