"""Set-up checks that need no training: same-run check on resume, image sides."""

import json
import os

import pytest
import tensorflow as tf

from training import data, setup
from training.errors import UsageError

SETTINGS = {"model": "convnet4", "activation": "step", "target_loss": "soft_hinge",
            "staircase_steps": None, "scale_by_grad": True, "dataset": "digits",
            "mixed_precision": False, "image_shape": [32, 32, 3], "num_classes": 10,
            "optimizer": "adam", "seed": 1}


def run_dir(tmp_path, saved):
    """A model_dir with a checkpoint and ``saved`` as its settings.json."""
    model_dir = str(tmp_path / "run")
    tf.train.Checkpoint(step=tf.Variable(1)).save(os.path.join(model_dir, "checkpoints", "ckpt"))
    with open(os.path.join(model_dir, "settings.json"), "w") as f:
        json.dump(saved, f)
    return model_dir


def test_same_run_passes_and_refuses_another_network(tmp_path):
    model_dir = run_dir(tmp_path, SETTINGS)
    setup.check_same_run(model_dir, {**SETTINGS, "seed": 2})  # the seed may change
    with pytest.raises(UsageError, match="holds a run with activation='step', this command "
                                         "has activation='relu'"):
        setup.check_same_run(model_dir, {**SETTINGS, "activation": "relu"})


def test_a_run_saved_with_the_old_steps_key_resumes(tmp_path):
    old = {key: value for key, value in SETTINGS.items() if key != "staircase_steps"}
    model_dir = run_dir(tmp_path, {**old, "activation": "staircase", "steps": 3})
    setup.check_same_run(model_dir, {**SETTINGS, "activation": "staircase", "staircase_steps": 3})
    with pytest.raises(UsageError, match="staircase_steps=3, this command has staircase_steps=5"):
        setup.check_same_run(model_dir, {**SETTINGS, "activation": "staircase", "staircase_steps": 5})


def test_no_checkpoint_no_check(tmp_path):
    setup.check_same_run(str(tmp_path), SETTINGS)


@pytest.mark.parametrize("model, side", [("convnet4", 32), ("resnet18", 32), ("alexnet", 60)])
def test_small_images_are_resized_to_the_cifar_side_or_the_model_minimum(model, side):
    assert setup.min_image_side(model) == side


def stem_config(model="resnet18", stem="auto", dataset="cifar10"):
    return setup.config_lib.Config(model=model, stem=stem, dataset=dataset)


@pytest.mark.parametrize("model", ["resnet18", "resnet34", "bireal_resnet18"])
def test_auto_stem_is_cifars_below_64_pixels_and_says_it_deviates(model):
    stem, why = setup.resolve_stem(stem_config(model), (32, 32, 3))
    assert stem == "cifar" and "below 64 pixels" in why and "deviation from the paper's ImageNet layout" in why
    stem, why = setup.resolve_stem(stem_config(model), (64, 64, 3))
    assert stem == "imagenet" and "deviation" not in why
    assert setup.resolve_stem(stem_config(model, stem="imagenet"), (32, 32, 3)) == ("imagenet", "--stem")
    # The digits demo keeps the ImageNet stem under auto (minutes, not an hour), and says why.
    stem, why = setup.resolve_stem(stem_config(model, dataset="digits"), (32, 32, 3))
    assert stem == "imagenet" and "digits" in why


def test_stem_on_a_network_without_one_is_refused():
    assert setup.resolve_stem(stem_config("convnet4"), (32, 32, 3)) == (None, None)
    with pytest.raises(UsageError, match="--stem applies to resnet18, resnet34, bireal_resnet18, not to "
                                         "--model=convnet4"):
        setup.resolve_stem(stem_config("convnet4", stem="cifar"), (32, 32, 3))


def test_a_run_with_another_stem_is_not_resumed(tmp_path):
    model_dir = run_dir(tmp_path, {**SETTINGS, "model": "resnet18", "stem": "imagenet"})
    with pytest.raises(UsageError, match="stem='imagenet', this command has stem='cifar'"):
        setup.check_same_run(model_dir, {**SETTINGS, "model": "resnet18", "stem": "cifar"})


@pytest.mark.parametrize("model, side", [("convnet4", 32), ("convnet8", 32), ("alexnet", 224), ("resnet18", 224)])
def test_large_images_default_to_the_models_own_input_side(model, side):
    assert setup.model_image_side(model) == side


def _info(side=224, **fields):
    """A folder's DatasetInfo at crop ``side`` (resize side round(256 / 224 side)), or digits' at 32."""
    from training import data

    recipe = data.large_recipe(image_size=side)
    base = dict(name="x", num_classes=2, image_shape=(side, side, 3), train_examples=8, eval_examples=2,
                recipe=recipe)
    return data.DatasetInfo(**{**base, **fields})


def _config(**fields):
    from training import config

    return config.Config(**{"model": "resnet18", "dataset": "folder:/data", **fields})


def test_image_size_notes_say_where_the_size_came_from_and_warn_above_2x():
    # A folder of 40x48 images at ResNet-18's 224: resized to 256 first, 6.4x.
    notes = setup.image_size_notes(_config(), _info(native_side=40, size_from_model=True))
    assert notes == (
        "image size 224x224: resnet18's input size (--image_size=N for another)",
        "warning: the images are upsampled 6.4x (shorter side 40 to 256 pixels): more time and memory, no more "
        "detail; --image_size=N sets another side")
    # Exactly 2x is not warned about; --image_size (not the model) set the side: no first line.
    assert setup.image_size_notes(_config(image_size=224), _info(native_side=128)) == ()
    assert len(setup.image_size_notes(_config(), _info(native_side=127))) == 1
    # The digits demo is enlarged 4x by design: no warning.
    digits = _info(32, native_side=8, recipe=data.small_recipe(8, name="digits", mean=(0,) * 3, std=(1,) * 3,
                                                                min_image_size=32))
    assert setup.image_size_notes(_config(dataset="digits"), digits) == ()
    assert len(setup.image_size_notes(_config(dataset="idx:/mnist"), digits)) == 1
