"""benchmarks/gpu_check.py in its CPU mode (the two logical CPUs of tests/conftest.py), tiny.

The end-to-end run trains convnet4 at 16x16, batch 4, four steps per setting, XLA
off: XLA's compilation of each model is what makes the CPU mode take minutes (the
op-level tests check the FTPROP gradients' dtypes under XLA and mixed precision).
The verdict logic is tested on rows made by hand.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import gpu_check

# At batch 4 the step network's first loss moves by 7% in bfloat16 on this suite's CPUs (units within
# rounding of 0 flip), and other CPUs round otherwise: a wider first-loss tolerance than the 10% a
# batch of 256 gets.
TINY = ["gpu_check", "--model=convnet4", "--image_size=16", "--batch_size=4", "--steps=4", "--warmup_steps=1",
        "--chunk_steps=1", "--activations=relu,step", "--jpegs=8", "--first_loss_tolerance=0.25"]


@pytest.fixture(scope="module")
def tiny_run():
    if len(tf.config.list_logical_devices("CPU")) < 2 or tf.config.list_logical_devices("GPU"):
        pytest.skip("the CPU mode needs two logical CPUs (tests/conftest.py) and no GPU")
    return gpu_check.run(TINY + ["--xla=off"])


def test_cpu_mode_trains_every_precision_and_passes(tiny_run):
    status, result = tiny_run
    assert status == 0 and result["ok"] and result["verdict"] == "gpu_check: OK"
    single = [row for row in result["rows"] if row.run == "1 device"]
    assert [(r.activation, r.precision, r.xla) for r in single] == [
        (activation, precision, "off") for precision in gpu_check.PRECISIONS for activation in ("relu", "step")]
    for row in single:
        assert row.batch == 4 and row.images_per_second > 0
        assert math.isfinite(row.first_loss) and math.isfinite(row.last_loss)
        compute = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[row.precision]
        assert (row.unit_grads, row.weight_grads) == (compute, "-")  # FTPROP's custom gradient too; no weights
        assert row.ratio == (1.0 if row.activation == "relu" else pytest.approx(
            next(r.images_per_second for r in single if (r.activation, r.precision) == ("relu", row.precision))
            / row.images_per_second))
    by_setting = {(r.activation, r.precision): r for r in single}
    for activation in ("relu", "step"):  # the same weights and batch: the same loss in float32, rounded otherwise
        reference = by_setting[activation, "float32"].first_loss
        for precision in ("mixed_float16", "mixed_bfloat16"):
            assert by_setting[activation, precision].first_loss == pytest.approx(reference, rel=0.25)


def test_cpu_mode_mirrors_over_both_logical_cpus_and_measures_the_input(tiny_run):
    _, result = tiny_run
    mirrored = [row for row in result["rows"] if row.run == "mirrored"]
    assert len(mirrored) == 1
    row = mirrored[0]
    assert (row.activation, row.devices, row.batch, row.xla) == ("step", 2, 8, "off")
    assert row.ok and math.isfinite(row.last_loss) and 0 < row.ratio
    best = max((r for r in result["rows"] if r.run == "1 device" and r.activation == "step"),
               key=lambda r: r.images_per_second)
    assert row.precision == best.precision
    assert row.ratio == pytest.approx(row.images_per_second / (2 * best.images_per_second))
    pipeline = result["rows"][-1]
    assert pipeline.run == "input" and pipeline.images_per_second > 0 and pipeline.ratio > 0


def test_the_table_has_a_line_per_row(tiny_run):
    _, result = tiny_run
    lines = gpu_check.table(result["rows"]).splitlines()
    assert len(lines) == 2 + len(result["rows"])
    assert lines[2].startswith("| 1 device | relu | float32 | off | 4 | ") and lines[2].endswith("| ok |")


def test_bad_flags_exit_2(capsys):
    assert gpu_check.run(["gpu_check", "--steps=5", "--warmup_steps=4"])[0] == 2
    assert "--steps must exceed --warmup_steps by 2" in capsys.readouterr().err
    assert gpu_check.run(["gpu_check", "--precisions=float64"])[0] == 2
    assert gpu_check.run(["gpu_check", "--xla=maybe"])[0] == 2


def _row(activation, precision, first, last, xla="off", batch=256):
    return gpu_check.Row("1 device", activation, precision, xla, 1, batch, images_per_second=100.0,
                         first_loss=first, last_loss=last)


def test_mixed_precision_within_the_tolerances_passes():
    rows = [_row("step", "float32", 6.90, 4.00), _row("step", "mixed_float16", 6.90 * 1.099, 4.5),
            _row("step", "mixed_bfloat16", 6.90 * 0.901, 4.75)]  # fell by 1.467; half of 2.9 is 1.45
    gpu_check.check_mixed(rows, first_loss_tolerance=0.1, fall_tolerance=0.5)
    assert all(row.ok for row in rows)


def test_mixed_precision_that_strays_from_float32_fails():
    rows = [_row("step", "float32", 6.90, 4.00), _row("step", "mixed_float16", 6.90 * 1.101, 4.0),
            _row("step", "mixed_bfloat16", 6.90, 6.00),  # learnt 0.9 where float32 learnt 2.9
            _row("relu", "mixed_bfloat16", 6.90, 1.00)]  # no float32 row to compare with
    gpu_check.check_mixed(rows, first_loss_tolerance=0.1, fall_tolerance=0.5)
    assert rows[0].ok and rows[3].ok
    assert rows[1].problems == ["first loss 7.5969 vs float32 6.9000 (tolerance 10%)"]
    assert rows[2].problems == ["loss fell by 0.900, float32's by 2.900 (tolerance: at least 0.5 of it)"]
    ok, line = gpu_check.verdict(rows, skipped=[])
    assert not ok and line == (
        "gpu_check: FAILED: step, mixed_float16, XLA off: first loss 7.5969 vs float32 6.9000 (tolerance 10%); "
        "step, mixed_bfloat16, XLA off: loss fell by 0.900, float32's by 2.900 (tolerance: at least 0.5 of it)")


def test_float32_that_did_not_learn_leaves_the_fall_unchecked_and_other_batches_uncompared():
    rows = [_row("step", "float32", 6.9, 7.5), _row("step", "mixed_float16", 6.9, 9.0),
            _row("relu", "float32", 6.9, 1.0), _row("relu", "mixed_float16", 3.0, 3.0, batch=128)]
    gpu_check.check_mixed(rows, first_loss_tolerance=0.1, fall_tolerance=0.5)
    assert all(row.ok for row in rows)


def test_verdict_names_what_was_skipped():
    assert gpu_check.verdict([_row("relu", "float32", 6.9, 1.0)], ["mixed_bfloat16, XLA on (time budget)"]) == (
        True, "gpu_check: OK (1 skipped: mixed_bfloat16, XLA on (time budget))")


def test_budget_skips_what_the_last_settings_say_will_not_fit(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: now[0])
    budget = gpu_check.Budget(minutes=1)
    assert budget.allows(jit_compile=True, count=3)  # nothing seen yet
    budget.record(False, 5.0)
    now[0] = 50.0
    assert budget.allows(True, 3) is False  # XLA unseen: estimated as XLA off, 50 s + 3 x 5 s > 60 s
    assert budget.allows(False, 2) and not budget.allows(False, 2, reserve=15.0)
    budget.record(True, 1.0)
    assert budget.allows(True, 3)


def test_a_batch_that_does_not_fit_is_halved(monkeypatch):
    real = gpu_check.batches

    def out_of_memory_above_2(images, labels, strategy):
        if len(images) > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real(images, labels, strategy)

    monkeypatch.setattr(gpu_check, "batches", out_of_memory_above_2)
    gpu_check.FLAGS.unparse_flags()
    gpu_check.FLAGS(TINY)
    mode = gpu_check.Mode("cpu", gpu_check.CPU_DEVICES, "convnet4", 16, 8, 10, 0, (48, 64), 4.0)
    context = gpu_check.Context(mode, gpu_check.FLAGS, gpu_check.Budget(4.0))
    rows, batch = gpu_check.run_setting(context, ["relu"], "float32", False, tf.distribute.get_strategy(), 8)
    assert batch == 2 and rows[0].batch == 2 and rows[0].ok
    # The first build's initial weights are kept, and later builds start from them.
    model = gpu_check.build(mode, "relu", "float32", False, tf.distribute.get_strategy(),
                            gpu_check.recipe_for(mode, "relu"), context.weights["relu"])
    for kept, built in zip(context.weights["relu"], model.get_weights()):
        np.testing.assert_array_equal(kept, built)


def test_a_setting_that_raises_or_diverges_fails_the_verdict(capsys):
    status, result = gpu_check.run(TINY + ["--xla=off", "--precisions=float32", "--activations=relu", "--noscaling",
                                           "--jpegs=0", "--learning_rate=1e30"])
    assert status == 1 and not result["ok"]
    assert result["verdict"].startswith("gpu_check: FAILED: relu, float32, XLA off: last loss ")
    assert capsys.readouterr().out.rstrip().endswith(result["verdict"])
