"""benchmarks/reproduce.py: aggregation of finished runs into the table, JSON and figure."""

import csv
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "benchmarks", "reproduce.py"))
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _write_run(output_dir, config, seed, top1, top5):
    run_dir = os.path.join(output_dir, "runs", f"{config}-seed{seed}")
    os.makedirs(os.path.join(run_dir, "export", "final"))
    open(os.path.join(run_dir, "export", "final", "saved_model.pb"), "w").close()
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_top1", "val_top5"])
        for epoch, (a, b) in enumerate(zip(top1, top5)):
            writer.writerow([epoch, 1.0, a, b])
    with open(os.path.join(run_dir, "settings.json"), "w") as f:
        json.dump({"data": {"num_classes": 10}}, f)


def test_report_aggregates_seeds(tmp_path, capsys):
    out = str(tmp_path)
    _write_run(out, "step-sste", 1, [0.5, 0.7, 0.6], [0.9, 0.95, 0.96])
    _write_run(out, "step-sste", 2, [0.6, 0.8, 0.8], [0.9, 0.97, 0.98])
    _write_run(out, "relu", 1, [0.7, 0.9, 0.85], [0.99, 0.99, 0.99])
    _write_run(out, "relu", 2, [0.1], [0.5])  # still running: left out
    reproduce.main(["--report_only", "--seeds=2", "--configs=step-sste,relu", "--epochs=3",
                    f"--output_dir={out}"])
    results = json.load(open(os.path.join(out, "results.json")))
    best, std = results["step-sste"]["best_top1"]
    assert best == pytest.approx(0.75) and std == pytest.approx(0.0707107, rel=1e-5)  # best 0.7 and 0.8
    assert results["step-sste"]["final_top1"][0] == pytest.approx(0.7)  # final 0.6 and 0.8
    assert results["relu"]["final_top1"] == [pytest.approx(0.85), 0.0]
    table = open(os.path.join(out, "results.md")).read()
    assert "| step-sste | 2 | 75.00 ± 7.07 | 70.00 ± 14.14 | 97.00 ± 1.41 | 97.00 ± 1.41 |" in table
    assert os.path.getsize(os.path.join(out, "top1.png")) > 1000
    assert reproduce.is_finished(os.path.join(out, "runs", "relu-seed1"), 3)
    assert not reproduce.is_finished(os.path.join(out, "runs", "relu-seed1"), 4)


def test_unknown_configuration_is_refused():
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--configs=step-ste"])


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
