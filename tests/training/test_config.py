"""train.py's settings from one declaration: flags, Config, settings.json keys."""

import dataclasses
import json
import types

import pytest
from absl import flags

from training import config, data, recipes
from training.errors import UsageError


def parsed(*args):
    flag_values = flags.FlagValues()
    for kind, name, default, help_text, extra in config.flag_declarations():
        getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help_text,
                                          flag_values=flag_values, **extra)
    flag_values(["train.py", *args])
    return flag_values


def test_defaults_of_the_flags_are_the_config_defaults():
    assert config.from_flags(parsed()) == config.Config()


def test_every_config_field_but_the_derived_ones_is_a_flag():
    flag_names = {name for _, name, *_ in config.flag_declarations()}
    fields = {field.name for field in dataclasses.fields(config.Config)}
    assert fields - flag_names == {"scale_by_grad", "overrides", "flags_text"}
    assert "no_scale_by_grad" in flag_names
    assert set(recipes.FIELDS) <= flag_names


def test_from_flags_converts_and_gathers_the_recipe_overrides():
    cfg = config.from_flags(parsed(
        "--model=convnet8", "--staircase_steps=7", "--no_scale_by_grad", "--devices=/cpu:0,/cpu:1",
        "--epochs=3", "--lr_decay_epochs=1,2", "--learning_rate=0.5"), flags_text="x")
    assert (cfg.model, cfg.staircase_steps, cfg.scale_by_grad, cfg.devices, cfg.flags_text) == (
        "convnet8", 7, False, "/cpu:0,/cpu:1", "x")
    assert cfg.overrides == {"epochs": 3, "lr_decay_epochs": [1, 2], "learning_rate": 0.5}


def test_a_config_built_without_flags_checks_the_flag_bounds():
    with pytest.raises(UsageError, match="--steps_per_epoch must be >= 1, got 0"):
        config.Config(steps_per_epoch=0)
    with pytest.raises(UsageError, match="--save_every_steps must be >= 0"):
        config.Config(save_every_steps=-1)


def test_settings_hold_the_saved_fields_and_what_the_run_resolved():
    cfg = config.Config(model="convnet4", staircase_steps=3, seed=7)
    resolved = recipes.resolve("paper", "convnet4", "step", "cifar10", {})
    recipe = data.small_recipe(28, name="mnist", mean=(0.1307,) * 3, std=(0.3081,) * 3,
                               min_image_size=32, grey=True)
    info = types.SimpleNamespace(image_shape=(32, 32, 3), num_classes=10, train_examples=100,
                                 eval_examples=20, skipped_files=0, recipe=recipe)
    settings = config.settings(cfg, resolved, info, "default strategy, 1 replica(s)", 12)
    assert set(settings) == {
        "model", "activation", "target_loss", "staircase_steps", "scale_by_grad", "recipe",
        "dataset", "eval_steps", "seed", "mixed_precision", "jit_compile", "deterministic", "save_every_steps",
        "optimizer", "resolved", "sources", "image_shape", "num_classes", "train_examples",
        "eval_examples", "skipped_files", "steps_per_epoch", "strategy", "stem", "preprocessing"}
    preprocessing = settings["preprocessing"]
    assert (preprocessing["transform"], preprocessing["image_size"], preprocessing["resize_size"],
            preprocessing["color"]) == ("resize", 32, 32, "grey")
    assert preprocessing["mean"] == [0.1307] * 3 and preprocessing["std"] == [0.3081] * 3
    json.dumps(settings)  # settings.json holds it
    assert (settings["staircase_steps"], settings["seed"], settings["steps_per_epoch"]) == (3, 7, 12)
    assert settings["stem"] is None  # convnet4 has no stem option
    assert config.settings(cfg, resolved, info, "", 12, stem="cifar")["stem"] == "cifar"
    assert set(config.SAME_RUN_KEYS) <= set(settings)
    assert config.SAME_RUN_KEYS == ("model", "activation", "target_loss", "staircase_steps",
                                    "scale_by_grad", "dataset", "mixed_precision", "image_shape",
                                    "num_classes", "optimizer", "stem")


def test_settings_of_earlier_versions_get_todays_keys():
    old = {"model": "convnet4", "steps": None, "seed": 1}
    assert config.upgrade_settings(old) == {"model": "convnet4", "staircase_steps": None, "seed": 1}
