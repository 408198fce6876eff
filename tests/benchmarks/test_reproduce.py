"""benchmarks/reproduce.py: aggregation of finished runs into the table, JSON and figure."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "benchmarks", "reproduce.py"))
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _write_run(runs_dir, config, seed, top1, top5, loss=None, export=True):
    run_dir = os.path.join(runs_dir, f"{config}-seed{seed}")
    os.makedirs(run_dir)
    if export:
        os.makedirs(os.path.join(run_dir, "export", "final"))
        open(os.path.join(run_dir, "export", "final", "saved_model.pb"), "w").close()
    loss = loss or [1.0] * len(top1)
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_top1", "val_top5"])
        for epoch, row in enumerate(zip(loss, top1, top5)):
            writer.writerow([epoch, *row])
    with open(os.path.join(run_dir, "settings.json"), "w") as f:
        json.dump({"num_classes": 10}, f)
    return run_dir


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
