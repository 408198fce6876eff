"""benchmarks/staircase_variants.py: each variant builds what it names, trains, and is reported."""

import importlib.util
import os

import pytest

from keras_ftprop import Staircase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("staircase_variants",
                                               os.path.join(ROOT, "benchmarks", "staircase_variants.py"))
staircase_variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(staircase_variants)


def test_centred_variant_has_zero_mean_levels():
    factory, kwargs = staircase_variants.VARIANTS["staircase_centred"]
    layer = factory()
    assert isinstance(layer, Staircase) and (layer.low, layer.high, layer.steps) == (-1.0, 1.0, 3) and not kwargs
    assert staircase_variants.VARIANTS["staircase_bn"][1] == {"batch_norm": True}


def test_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        staircase_variants.main(["--variants=staircase,stairs"])
    assert "unknown variant(s) stairs" in capsys.readouterr().err


@pytest.mark.slow
def test_trains_and_reports_every_layer(tmp_path, capsys):
    output = tmp_path / "variants.md"
    accuracy, statistics = staircase_variants.main(
        ["--variants=step,staircase_bn", "--steps=2", "--images=64", f"--output={output}"])
    assert set(accuracy) == {"step", "staircase_bn"} and all(0 <= a[0] <= 1 for a in accuracy.values())
    assert [run for run, _ in statistics] == ["step (seed 1)", "staircase_bn (seed 1)"]
    assert all(list(layers) == ["conv1_act", "conv2_act", "fc1_act"] for _, layers in statistics)
    assert "| staircase_bn (seed 1) | fc1_act |" in output.read_text()


def test_tripled_staircase_triples_the_output_only():
    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.linspace(-0.5, 1.5, 17, dtype=np.float32))
    plain = Staircase(steps=3)
    tripled = staircase_variants.VARIANTS["staircase_x3"][0]()
    np.testing.assert_allclose(tripled(x), 3.0 * np.asarray(plain(x)), rtol=1e-6)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_plain, y_tripled = plain(x), tripled(x)
    np.testing.assert_allclose(tape.gradient(y_tripled, x), 3.0 * np.asarray(tape.gradient(y_plain, x)), rtol=1e-6)


def test_learning_rate_decays_tenfold_after_each_given_step():
    rate = staircase_variants.learning_rate([4, 6])
    lr = staircase_variants.LEARNING_RATE
    expected = [lr] * 4 + [lr / 10] * 2 + [lr / 100] * 3  # steps 0..3, 4..5, 6..8
    assert [float(rate(step)) for step in range(9)] == pytest.approx(expected, rel=1e-6)
    assert staircase_variants.learning_rate() == lr


def test_decay_steps_outside_the_run_are_refused(capsys):
    with pytest.raises(SystemExit):
        staircase_variants.main(["--steps=10", "--lr_decay_steps=5,12"])
    assert "--lr_decay_steps must increase within (0, --steps)" in capsys.readouterr().err
