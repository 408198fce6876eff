"""The paper's training recipes, and how ``train.py`` resolves its settings.

A recipe fixes the optimiser, learning rate, global batch size, epoch count,
learning-rate decay and weight decay of one run (batch norm's gamma and beta
take ``weight_decay`` unless ``batch_norm_weight_decay`` is given). The
paper's are each network's ``paper_recipe`` in ``models.MODELS`` (the
reference README's table, restated in this repository's README):
cross-entropy loss everywhere, the
learning rate multiplied by ``lr_decay`` = 0.1 at each epoch of
``lr_decay_epochs``, PyTorch's coupled L2 weight decay, which for AlexNet and
ResNet-18 depends on the activation (saturated_relu takes relu's).

The table was written for CIFAR-10 and ImageNet. On the embedded ``digits``
set (1 437 training images of 8x8 pixels) it would take hours for nothing and
the ImageNet learning rates are far too aggressive for 22 steps per epoch, so
``resolve`` applies the ``DIGITS`` adaptation there: a few epochs of Adam
with no decay, the paper's weight decay kept. It says so in the printed
settings.

``resolve`` layers the sources, later ones winning: the recipe (``paper`` or
``none``), the digits adaptation, the ``DEVIATIONS`` from the paper where its
recipe provably fails (convnet8 with step units: no decay on batch norm),
then every flag given explicitly on the command line. An ``--epochs`` shorter
than the paper's keeps its learning-rate decays at the same fractions of the
run unless ``--lr_decay_epochs`` is given. Each setting remembers where it
came from, for the printout.
"""

from __future__ import annotations

import dataclasses
import math

import keras

import models
from training.errors import UsageError
from training.options import option

OPTIMIZERS = ("sgd", "adam")
RECIPE_NAMES = ("paper", "none")


def _epoch_numbers(values):
    return [int(value) for value in values]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingRecipe:
    """Optimisation settings of one run (see the module docstring), in print order.

    Each field is also a flag of ``train.py`` that, given, overrides the recipe.
    """

    optimizer: str = option("enum", "Optimiser (default: from --recipe).", enum_values=OPTIMIZERS)
    learning_rate: float = option("float", "Initial learning rate (default: from --recipe).")
    momentum: float = option("float", "SGD momentum (default: from --recipe, 0.9).", 0.9)
    batch_size: int = option("integer", "Global batch size, split over all replicas (default: from "
                             "--recipe).")
    epochs: int = option("integer", "Epochs to train (default: from --recipe).")
    lr_decay: float = option("float", "Factor applied to the learning rate at each --lr_decay_epochs "
                             "(default 0.1).", 0.1)
    lr_decay_epochs: tuple = option(
        "list", "Comma-separated 1-based epochs from which the learning rate is multiplied by "
        "--lr_decay once more, e.g. 30,60 (default: from --recipe; empty: none).", (),
        parse=_epoch_numbers)
    weight_decay: float = option("float", "Coupled L2 weight decay, as PyTorch's weight_decay "
                                 "(default: from --recipe).", 0.0)
    batch_norm_weight_decay: float = option(
        "float", "Coupled L2 decay of batch norm's gamma and beta alone (default: --weight_decay, "
        "as the paper). 0 exempts them: decay shrinks a batch norm in front of step units "
        "unopposed, until they stop learning.", None)


FIELDS = tuple(field.name for field in dataclasses.fields(TrainingRecipe))
_NAME_WIDTH = max(len(name) for name in FIELDS)
PAPER_MODELS = tuple(name for name, spec in models.MODELS.items() if spec.paper_recipe and not spec.recipe_of)

# ``--recipe none``: neutral defaults, to be overridden by flags.
NONE = TrainingRecipe(optimizer="adam", learning_rate=1e-3, batch_size=64, epochs=10)

# The embedded digits set: what the bare ``python train.py`` runs.
DIGITS_DATASET = "digits"
DIGITS = dict(optimizer="adam", learning_rate=1e-3, batch_size=64, epochs=5,
              lr_decay_epochs=())


@dataclasses.dataclass(frozen=True)
class Deviation:
    """Settings that replace the paper's where its recipe provably fails here, and why."""

    settings: dict
    reason: str


# (model, activation) -> Deviation; a flag given explicitly still wins.
DEVIATIONS = {
    ("convnet8", "step"): Deviation(
        dict(batch_norm_weight_decay=0.0),
        "its decay on batch norm in front of step units shrinks gamma until they train to chance "
        "(docs/notes/weight-decay.md)"),
}
# Decay on a batch norm in front of step units from which train.py warns (the collapse was measured at 5e-4).
BATCH_NORM_DECAY_WARNING = 1e-4


def scaled_decay_epochs(decay_epochs, recipe_epochs, epochs):
    """Decays at d of ``recipe_epochs`` (fraction d / recipe_epochs of the run) at the same fractions of
    ``epochs``: from 1-based epoch floor(d epochs / recipe_epochs + 1/2) + 1, those within the run
    (200, 250 of 300 -> 9, 11 of 12; 30, 60 of 90 -> 6, 11 of 15)."""
    scaled = {math.floor(d * epochs / recipe_epochs + 0.5) + 1 for d in decay_epochs}
    return tuple(sorted(e for e in scaled if e <= epochs))


def batch_norm_decay_warning(resolved, activation, has_batch_norm):
    """One line if flags given explicitly put a decay >= BATCH_NORM_DECAY_WARNING on batch norm in front
    of step units, else None."""
    decay, source = resolved.recipe.batch_norm_weight_decay, resolved.sources["batch_norm_weight_decay"]
    explicit = source.startswith("--") or (source == "as weight_decay"
                                           and resolved.sources["weight_decay"].startswith("--"))
    if activation != "step" or not has_batch_norm or not explicit or decay < BATCH_NORM_DECAY_WARNING:
        return None
    return (f"warning: a weight decay of {decay:g} on batch norm in front of step units shrinks its gamma until "
            "the units stop learning (measured: 5e-4 trains convnet8 to chance); --batch_norm_weight_decay=0 "
            "exempts it")


def paper_recipe(model, activation):
    """The reference recipe of ``model`` trained with hidden ``activation`` (``models.MODELS``).

    Raises UsageError for a model or activation the paper has no recipe for.
    """
    per_activation = models.get_spec(model).paper_recipe
    if not per_activation:
        raise UsageError(
            f"the paper has no recipe for model {model!r} (it has "
            f"{', '.join(PAPER_MODELS)}); pass --recipe=none and set "
            "--optimizer, --learning_rate, --batch_size and --epochs"
        )
    if activation not in per_activation:
        raise UsageError(
            f"the paper has no recipe for activation {activation!r} (it has "
            f"{', '.join(per_activation)})"
        )
    return TrainingRecipe(**per_activation[activation])


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The settings of a run and, for each, where it came from."""

    recipe: TrainingRecipe
    sources: dict  # field -> "paper recipe" | "digits adaptation" | "--flag" | ...

    def used(self):
        """The settings this run uses, in FIELDS order: momentum only with SGD, lr_decay only with decay epochs."""
        unused = set()
        if self.recipe.optimizer != "sgd":
            unused.add("momentum")
        if not self.recipe.lr_decay_epochs:
            unused.add("lr_decay")
        return tuple(name for name in FIELDS if name not in unused)

    def lines(self):
        """Human-readable ``name = value   (source)`` lines of the ``used`` settings, in FIELDS order."""
        out = []
        for name in self.used():
            value = getattr(self.recipe, name)
            if name == "lr_decay_epochs":
                value = ",".join(str(e) for e in value) or "(none)"
            out.append(f"{name:<{_NAME_WIDTH}} {value!s:<12} ({self.sources[name]})")
        return out

    def as_dict(self):
        out = dataclasses.asdict(self.recipe)
        out["lr_decay_epochs"] = list(self.recipe.lr_decay_epochs)
        return out


def resolve(recipe, model, activation, dataset, overrides):
    """Resolve the run's optimisation settings.

    Args:
        recipe: "paper" or "none".
        model, activation: the network and its hidden activation.
        dataset: the ``--dataset`` spec; ``digits`` gets the DIGITS adaptation.
        overrides: {field: value} for every flag given explicitly.

    Raises UsageError for an unknown recipe, a model without a paper recipe,
    or inconsistent values (non-positive batch size, epochs, learning rate...).
    """
    if recipe == "paper":
        base, origin = paper_recipe(model, activation), f"paper recipe for {model}/{activation}"
        if models.get_spec(model).recipe_of:
            origin = f"paper recipe for {models.get_spec(model).recipe_of}/{activation} ({model} is not in the paper)"
    elif recipe == "none":
        base, origin = NONE, "--recipe=none default"
    else:
        raise UsageError(f"unknown recipe {recipe!r}; valid names are {', '.join(RECIPE_NAMES)}")

    values = dataclasses.asdict(base)
    sources = {name: origin for name in FIELDS}
    if dataset == DIGITS_DATASET:
        for name, value in DIGITS.items():
            if values[name] != value:
                values[name] = value
                sources[name] = "digits adaptation"
    if recipe == "paper" and (model, activation) in DEVIATIONS:
        deviation = DEVIATIONS[model, activation]
        for name, value in deviation.settings.items():
            values[name] = value
            sources[name] = f"deviation from the paper: {deviation.reason}"
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        raise UsageError(f"not a recipe setting: {', '.join(sorted(unknown))}")
    for name, value in overrides.items():
        values[name] = value
        sources[name] = f"--{name}"
    if (recipe == "paper" and sources["lr_decay_epochs"] == origin and "epochs" in overrides
            and values["epochs"] < base.epochs and base.lr_decay_epochs):
        values["lr_decay_epochs"] = scaled_decay_epochs(base.lr_decay_epochs, base.epochs, values["epochs"])
        sources["lr_decay_epochs"] = (f"the paper's {','.join(map(str, base.lr_decay_epochs))} of "
                                      f"{base.epochs} epochs at the same fractions of --epochs")
    values["lr_decay_epochs"] = tuple(int(e) for e in values["lr_decay_epochs"])
    if values["batch_norm_weight_decay"] is None:
        values["batch_norm_weight_decay"] = values["weight_decay"]
        sources["batch_norm_weight_decay"] = "as weight_decay"
    resolved = Resolved(TrainingRecipe(**values), sources)
    _check(resolved.recipe)
    return resolved


def _check(r):
    if r.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {r.optimizer!r}; valid names are {', '.join(OPTIMIZERS)}")
    if not r.learning_rate > 0:
        raise UsageError(f"--learning_rate must be > 0, got {r.learning_rate}")
    if r.batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {r.batch_size}")
    if r.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {r.epochs}")
    if not r.lr_decay > 0:
        raise UsageError(f"--lr_decay must be > 0, got {r.lr_decay}")
    if not 0 <= r.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {r.momentum}")
    for name in ("weight_decay", "batch_norm_weight_decay"):
        if not getattr(r, name) >= 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(r, name)}")
    if any(e < 1 for e in r.lr_decay_epochs) or list(r.lr_decay_epochs) != sorted(set(r.lr_decay_epochs)):
        raise UsageError(
            "--lr_decay_epochs must be increasing positive epoch numbers, got "
            + ",".join(str(e) for e in r.lr_decay_epochs)
        )


def learning_rate_at(recipe, epoch):
    """The learning rate of 0-based ``epoch``: LR * lr_decay ** (#decay epochs <= epoch + 1).

    Decay epochs count from 1, as Keras's "Epoch 200/300" and the reference
    (which multiplies the rate by ``lr_decay`` at the start of its 1-based
    epoch 200): with decay at 200, the epochs shown as 1..199 use LR and
    200.. use LR * lr_decay.
    """
    drops = sum(1 for e in recipe.lr_decay_epochs if epoch + 1 >= e)
    return recipe.learning_rate * recipe.lr_decay ** drops


def optimizer(recipe, learning_rate=None):
    """The recipe's optimizer: SGD with its momentum or Adam, at ``learning_rate`` (default: the recipe's)."""
    learning_rate = recipe.learning_rate if learning_rate is None else learning_rate
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=recipe.momentum)
    return keras.optimizers.Adam(learning_rate=learning_rate)
