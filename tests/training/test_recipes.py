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
    sources = dict(resolved.sources)
    if (model, activation) == ("convnet8", "step"):  # the one deviation: no decay on batch norm
        assert resolved.recipe == dataclasses.replace(paper, batch_norm_weight_decay=0.0)
        assert sources.pop("batch_norm_weight_decay").startswith("deviation from the paper: ")
    else:  # the paper decays batch norm's gamma and beta like every other weight
        assert resolved.recipe == dataclasses.replace(paper, batch_norm_weight_decay=paper.weight_decay)
        assert sources.pop("batch_norm_weight_decay") == "as weight_decay"
    assert set(sources.values()) == {f"paper recipe for {model}/{activation}"}


def test_batch_norm_weight_decay_follows_weight_decay_unless_given():
    follows = recipes.resolve("paper", "convnet8", "staircase", "cifar10", {"weight_decay": 1e-5}).recipe
    assert follows.batch_norm_weight_decay == 1e-5
    resolved = recipes.resolve("paper", "convnet8", "staircase", "cifar10", {"batch_norm_weight_decay": 0.0})
    assert (resolved.recipe.weight_decay, resolved.recipe.batch_norm_weight_decay) == (5e-4, 0.0)
    assert resolved.sources["batch_norm_weight_decay"] == "--batch_norm_weight_decay"
    assert resolved.as_dict()["batch_norm_weight_decay"] == 0.0
    assert any(line.startswith("batch_norm_weight_decay 0.0 ") for line in resolved.lines())


def test_convnet8_step_exempts_batch_norm_from_decay_and_says_why_unless_told_otherwise():
    resolved = recipes.resolve("paper", "convnet8", "step", "cifar10", {})
    assert (resolved.recipe.weight_decay, resolved.recipe.batch_norm_weight_decay) == (5e-4, 0.0)
    (line,) = [line for line in resolved.lines() if line.startswith("batch_norm_weight_decay")]
    assert "deviation from the paper" in line and "docs/notes/weight-decay.md" in line
    told = recipes.resolve("paper", "convnet8", "step", "cifar10", {"batch_norm_weight_decay": 5e-4})
    assert told.recipe.batch_norm_weight_decay == 5e-4
    assert recipes.resolve("none", "convnet8", "step", "cifar10", {}).recipe.batch_norm_weight_decay == 0.0


@pytest.mark.parametrize("recipe, model, activation, dataset, expected, source", [
    ("paper", "convnet8", "step", "cifar10", 0.0, "deviation from the paper"),  # the deviation on
    ("paper", "convnet8", "step", "digits", 0.0, "deviation from the paper"),
    ("paper", "convnet8", "staircase", "cifar10", 5e-4, "as weight_decay"),  # other units: the paper's
    ("paper", "convnet4", "step", "cifar10", 5e-4, "as weight_decay"),  # another network: the paper's
    ("none", "convnet8", "step", "cifar10", 3e-4, "as weight_decay"),  # no recipe: no deviation from it
])
def test_the_batch_norm_decay_exemption_applies_to_the_paper_recipe_of_convnet8_step_alone(
        recipe, model, activation, dataset, expected, source):
    given = {"weight_decay": 3e-4} if recipe == "none" else {}
    resolved = recipes.resolve(recipe, model, activation, dataset, given)
    assert resolved.recipe.batch_norm_weight_decay == expected
    assert resolved.sources["batch_norm_weight_decay"].startswith(source)


def test_recipe_none_keeps_an_explicit_decay_on_batch_norm_in_front_of_steps_and_warns():
    for overrides in ({"weight_decay": 5e-4}, {"batch_norm_weight_decay": 5e-4}):
        resolved = recipes.resolve("none", "convnet8", "step", "cifar10", overrides)
        assert resolved.recipe.batch_norm_weight_decay == 5e-4
        assert recipes.batch_norm_decay_warning(resolved, "step", has_batch_norm=True) is not None
    resolved = recipes.resolve("none", "convnet8", "step", "cifar10", {"weight_decay": 5e-4,
                                                                      "batch_norm_weight_decay": 0.0})
    assert (resolved.recipe.weight_decay, resolved.recipe.batch_norm_weight_decay) == (5e-4, 0.0)
    assert recipes.batch_norm_decay_warning(resolved, "step", has_batch_norm=True) is None


@pytest.mark.parametrize("model, activation, overrides, warns", [
    ("convnet8", "step", {}, False),  # the deviation: no decay on batch norm
    ("convnet8", "step", {"batch_norm_weight_decay": 5e-4}, True),
    ("convnet8", "step", {"batch_norm_weight_decay": 1e-4}, True),  # the threshold itself
    ("convnet8", "step", {"batch_norm_weight_decay": 5e-5}, False),
    ("convnet8", "step", {"weight_decay": 1e-3}, False),  # batch norm keeps the deviation's 0
    ("alexnet", "step", {"weight_decay": 5e-4}, True),  # batch norm takes the weight decay given
    ("alexnet", "step", {}, False),  # the paper's 5e-6
    ("convnet8", "staircase", {"batch_norm_weight_decay": 5e-4}, False),
    ("convnet8", "relu", {"weight_decay": 5e-4}, False),
])
def test_explicit_decay_on_batch_norm_in_front_of_steps_warns(model, activation, overrides, warns):
    resolved = recipes.resolve("paper", model, activation, "cifar10", overrides)
    warning = recipes.batch_norm_decay_warning(resolved, activation, has_batch_norm=True)
    assert (warning is not None) == warns
    if warns:
        assert warning.startswith("warning: ") and "\n" not in warning and "--batch_norm_weight_decay=0" in warning
    assert recipes.batch_norm_decay_warning(resolved, activation, has_batch_norm=False) is None


@pytest.mark.parametrize("model, epochs, expected", [
    ("convnet4", 12, (9, 11)),  # 200, 250 of 300
    ("resnet18", 15, (6, 11)),  # 30, 60 of 90
    ("resnet18", 45, (16, 31)),
    ("alexnet", 10, (8, 9)),  # 56, 64 of 80
    ("convnet4", 2, (2,)),  # both after 2/3 and 5/6 of 2 epochs: from epoch 2
    ("convnet4", 1, ()),  # both after the one epoch
])
def test_a_shortened_paper_schedule_keeps_its_decays_at_the_same_fractions(model, epochs, expected):
    resolved = recipes.resolve("paper", model, "relu", "cifar10", {"epochs": epochs})
    assert resolved.recipe.lr_decay_epochs == expected
    assert "same fractions" in resolved.sources["lr_decay_epochs"]


@pytest.mark.parametrize("epochs, expected, scaled", [
    (299, (200, 250), True),  # one epoch short: 199.33 and 249.17 -> from epochs 200 and 250
    (300, (200, 250), False),  # the paper's own length: its decays untouched
    (301, (200, 250), False),  # longer: untouched
])
def test_the_decays_at_the_papers_own_epoch_count_and_one_epoch_either_side(epochs, expected, scaled):
    resolved = recipes.resolve("paper", "convnet4", "relu", "cifar10", {"epochs": epochs})
    assert resolved.recipe.lr_decay_epochs == expected
    assert ("same fractions" in resolved.sources["lr_decay_epochs"]) == scaled
    if not scaled:
        assert resolved.sources["lr_decay_epochs"] == "paper recipe for convnet4/relu"


@pytest.mark.parametrize("decay, expected", [
    # d of 100 epochs scaled to 10: from epoch floor(d / 10 + 1/2) + 1, a half-way fraction rounded up
    (24, 3), (25, 4), (26, 4),  # 2.4, 2.5 (a tie, even floor), 2.6
    (34, 4), (35, 5), (36, 5),  # 3.4, 3.5 (a tie, odd floor), 3.6
])
def test_a_scaled_decay_at_a_half_way_fraction_rounds_up(decay, expected):
    assert recipes.scaled_decay_epochs((decay,), 100, 10) == (expected,)


def test_a_shortened_paper_schedule_with_a_half_way_fraction():
    # AlexNet's 56, 64 of 80 epochs in 15: 10.5 (a tie) and 12 -> from epochs 12 and 13
    resolved = recipes.resolve("paper", "alexnet", "relu", "cifar10", {"epochs": 15})
    assert resolved.recipe.lr_decay_epochs == (12, 13)


def test_given_decay_epochs_or_a_longer_run_keep_the_decays_as_they_are():
    given = recipes.resolve("paper", "convnet4", "relu", "cifar10", {"epochs": 12, "lr_decay_epochs": [5]})
    assert given.recipe.lr_decay_epochs == (5,) and given.sources["lr_decay_epochs"] == "--lr_decay_epochs"
    longer = recipes.resolve("paper", "resnet18", "relu", "cifar10", {"epochs": 120})
    assert longer.recipe.lr_decay_epochs == (30, 60)
    assert recipes.resolve("paper", "convnet4", "relu", "digits", {"epochs": 3}).recipe.lr_decay_epochs == ()


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


def _printed(resolved):
    return [line.split()[0] for line in resolved.lines()]


def test_the_printed_settings_are_those_the_optimizer_and_schedule_use():
    # The digits demo of ResNet-18: Adam, no decay epochs: neither SGD's momentum nor the decay factor.
    adam = recipes.resolve("paper", "resnet18", "step", "digits", {})
    assert adam.recipe.optimizer == "adam" and adam.recipe.lr_decay_epochs == ()
    assert "momentum" not in _printed(adam) and "lr_decay" not in _printed(adam)
    assert _printed(adam) == ["optimizer", "learning_rate", "batch_size", "epochs", "lr_decay_epochs",
                              "weight_decay", "batch_norm_weight_decay"]
    # The paper's ResNet-18 on ImageNet: SGD with momentum 0.9, decays at 30 and 60.
    sgd = recipes.resolve("paper", "resnet18", "step", "imagenet2012", {})
    assert _printed(sgd) == list(recipes.FIELDS)
    assert any(line.split()[:2] == ["momentum", "0.9"] for line in sgd.lines())
    # Adam with decay epochs (convnet4 on CIFAR-10): the factor, not the momentum.
    decayed = recipes.resolve("paper", "convnet4", "step", "cifar10", {})
    assert "lr_decay" in _printed(decayed) and "momentum" not in _printed(decayed)
    # The record keeps every setting.
    assert set(adam.as_dict()) == set(recipes.FIELDS)


def test_the_optimizer_is_the_recipes_at_its_or_a_given_learning_rate():
    sgd = recipes.TrainingRecipe(optimizer="sgd", learning_rate=0.1, momentum=0.8,  # not the 0.9 default
                                 batch_size=64, epochs=1)
    adam = dataclasses.replace(sgd, optimizer="adam", learning_rate=2.5e-4)
    built = recipes.optimizer(sgd)
    assert type(built).__name__ == "SGD" and float(built.learning_rate) == pytest.approx(0.1)
    assert float(built.momentum) == pytest.approx(0.8)
    assert float(recipes.optimizer(sgd, 0.001).learning_rate) == pytest.approx(0.001)  # a fine-tune's rate
    built = recipes.optimizer(adam)
    assert type(built).__name__ == "Adam" and float(built.learning_rate) == pytest.approx(2.5e-4)
