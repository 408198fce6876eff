"""The paper's recipe table and how train.py layers recipe, digits adaptation and flags."""

import dataclasses

import pytest

from training import recipes

PAPER = {
    # model: (optimizer, lr, batch, epochs, decay epochs, {activation: weight decay})
    "convnet4": ("adam", 2.5e-4, 64, 300, (200, 250),
                 dict(step=5e-4, staircase=5e-4, relu=5e-4, saturated_relu=5e-4)),
    "convnet8": ("adam", 1e-3, 64, 300, (200, 250),
                 dict(step=5e-4, staircase=5e-4, relu=5e-4, saturated_relu=5e-4)),
    "alexnet": ("adam", 1e-4, 128, 80, (56, 64),
                dict(step=5e-6, staircase=5e-5, relu=5e-4, saturated_relu=5e-4)),
    "resnet18": ("sgd", 0.1, 256, 90, (30, 60),
                 dict(step=5e-7, staircase=1e-5, relu=1e-4, saturated_relu=1e-4)),
}
CASES = [(m, a) for m in PAPER for a in PAPER[m][5]]


@pytest.mark.parametrize("model,activation", CASES)
def test_paper_table(model, activation):
    optimizer, lr, batch, epochs, decay_epochs, decays = PAPER[model]
    r = recipes.paper_recipe(model, activation)
    assert (r.optimizer, r.learning_rate, r.batch_size, r.epochs) == (optimizer, lr, batch, epochs)
    assert r.lr_decay_epochs == decay_epochs and r.lr_decay == 0.1
    assert r.weight_decay == decays[activation]
    if optimizer == "sgd":
        assert r.momentum == 0.9


@pytest.mark.parametrize("model,activation", CASES)
def test_resolve_paper_on_a_real_dataset_is_the_table(model, activation):
    resolved = recipes.resolve("paper", model, activation, "cifar10", {})
    paper = recipes.paper_recipe(model, activation)
    # The paper decays batch norm's gamma and beta like every other weight.
    assert resolved.recipe == dataclasses.replace(paper, batch_norm_weight_decay=paper.weight_decay)
    sources = dict(resolved.sources)
    assert sources.pop("batch_norm_weight_decay") == "as weight_decay"
    assert set(sources.values()) == {f"paper recipe for {model}/{activation}"}


def test_batch_norm_weight_decay_follows_weight_decay_unless_given():
    follows = recipes.resolve("paper", "convnet8", "step", "cifar10", {"weight_decay": 1e-5}).recipe
    assert follows.batch_norm_weight_decay == 1e-5
    resolved = recipes.resolve("paper", "convnet8", "step", "cifar10", {"batch_norm_weight_decay": 0.0})
    assert (resolved.recipe.weight_decay, resolved.recipe.batch_norm_weight_decay) == (5e-4, 0.0)
    assert resolved.sources["batch_norm_weight_decay"] == "--batch_norm_weight_decay"
    assert resolved.as_dict()["batch_norm_weight_decay"] == 0.0
    assert any(line.startswith("batch_norm_weight_decay 0.0 ") for line in resolved.lines())


def test_digits_adaptation_replaces_optimisation_but_keeps_weight_decay():
    resolved = recipes.resolve("paper", "resnet18", "step", "digits", {})
    r = resolved.recipe
    assert (r.optimizer, r.learning_rate, r.batch_size, r.epochs) == ("adam", 1e-3, 64, 5)
    assert r.lr_decay_epochs == ()
    assert r.weight_decay == 5e-7
    assert resolved.sources["epochs"] == "digits adaptation"
    assert resolved.sources["weight_decay"] == "paper recipe for resnet18/step"
    # convnet8 already trains with Adam 1e-3 and batch 64: only the epochs change.
    sources = recipes.resolve("paper", "convnet8", "relu", "digits", {}).sources
    assert sources["learning_rate"] == sources["batch_size"] == "paper recipe for convnet8/relu"


def test_explicit_flags_override_recipe_and_adaptation():
    overrides = {"epochs": 2, "learning_rate": 0.05, "optimizer": "sgd",
                 "lr_decay_epochs": [1], "weight_decay": 0.0}
    resolved = recipes.resolve("paper", "resnet18", "staircase", "digits", overrides)
    r = resolved.recipe
    assert (r.epochs, r.learning_rate, r.optimizer, r.lr_decay_epochs, r.weight_decay) == (
        2, 0.05, "sgd", (1,), 0.0)
    assert resolved.sources["epochs"] == "--epochs"
    assert resolved.sources["batch_size"] == "digits adaptation"
    text = "\n".join(resolved.lines())
    assert "--learning_rate" in text and "digits adaptation" in text
    assert resolved.as_dict()["lr_decay_epochs"] == [1]


def test_recipe_none_and_unknown_recipes():
    r = recipes.resolve("none", "resnet34", "relu", "cifar10", {"epochs": 3}).recipe
    assert (r.optimizer, r.learning_rate, r.epochs, r.weight_decay) == ("adam", 1e-3, 3, 0.0)
    with pytest.raises(ValueError, match="no recipe for model 'resnet34'.*--recipe=none"):
        recipes.resolve("paper", "resnet34", "relu", "cifar10", {})
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        recipes.resolve("fast", "convnet4", "relu", "cifar10", {})
    with pytest.raises(ValueError, match="no recipe for activation 'tanh'"):
        recipes.paper_recipe("convnet4", "tanh")


@pytest.mark.parametrize("overrides,message", [
    ({"batch_size": 0}, "--batch_size must be >= 1"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"learning_rate": 0.0}, "--learning_rate must be > 0"),
    ({"learning_rate": float("nan")}, "--learning_rate must be > 0"),
    ({"momentum": 1.0}, "--momentum must be in"),
    ({"weight_decay": -1.0}, "--weight_decay must be >= 0"),
    ({"batch_norm_weight_decay": -1.0}, "--batch_norm_weight_decay must be >= 0"),
    ({"batch_norm_weight_decay": float("nan")}, "--batch_norm_weight_decay must be >= 0"),
    ({"lr_decay": 0.0}, "--lr_decay must be > 0"),
    ({"lr_decay_epochs": [60, 30]}, "--lr_decay_epochs must be increasing"),
    ({"lr_decay_epochs": [0]}, "--lr_decay_epochs must be increasing"),
    ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"nesterov": True}, "not a recipe setting: nesterov"),
])
def test_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        recipes.resolve("paper", "convnet4", "step", "cifar10", overrides)


def test_learning_rate_steps_at_one_based_decay_epochs():
    r = recipes.paper_recipe("resnet18", "step")
    # 0-based epoch e is Keras's "Epoch e+1": decay "at 30" starts with Epoch 30/90.
    assert recipes.learning_rate_at(r, 0) == pytest.approx(0.1)
    assert recipes.learning_rate_at(r, 28) == pytest.approx(0.1)
    assert recipes.learning_rate_at(r, 29) == pytest.approx(0.01)
    assert recipes.learning_rate_at(r, 58) == pytest.approx(0.01)
    assert recipes.learning_rate_at(r, 59) == pytest.approx(0.001)
    assert recipes.learning_rate_at(r, 89) == pytest.approx(0.001)
    flat = recipes.resolve("paper", "resnet18", "step", "digits", {}).recipe
    assert {recipes.learning_rate_at(flat, e) for e in range(10)} == {1e-3}
