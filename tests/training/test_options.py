"""Dataclass fields that declare their absl flag: declarations, values back, bounds."""

import dataclasses

import pytest
from absl import flags

from training import options


@dataclasses.dataclass
class Example:
    name: str = options.option("enum", "A name.", "a", enum_values=["a", "b"], same_run=True)
    count: int | None = options.option("integer", "A count.", None, lower_bound=1, saved=True)
    scaled: bool = options.option("boolean", "Do not scale.", True, flag="no_scaled", inverted=True)
    items: tuple = options.option("list", "Numbers.", (), parse=lambda v: tuple(int(x) for x in v))
    plain: str = "not a flag"


def define(flag_values, declarations):
    for kind, name, default, help_text, args in declarations:
        getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help_text,
                                          flag_values=flag_values, **args)


def test_declarations_name_kind_default_and_arguments():
    assert options.declarations(Example) == [
        ("enum", "name", "a", "A name.", {"enum_values": ["a", "b"]}),
        ("integer", "count", None, "A count.", {"lower_bound": 1}),
        ("boolean", "no_scaled", False, "Do not scale.", {}),  # the inverted field's default
        ("list", "items", (), "Numbers.", {}),
    ]
    assert {d[2] for d in options.declarations(Example, overrides_only=True)} == {None}


def test_values_from_parsed_flags_invert_and_parse():
    flag_values = flags.FlagValues()
    define(flag_values, options.declarations(Example))
    flag_values(["prog", "--name=b", "--count=3", "--no_scaled", "--items=4,5"])
    assert Example(**options.values(Example, flag_values)) == Example("b", 3, False, (4, 5))
    flag_values.unparse_flags()
    flag_values(["prog"])
    assert Example(**options.values(Example, flag_values)) == Example()


def test_given_only_keeps_the_flags_given():
    flag_values = flags.FlagValues()
    define(flag_values, options.declarations(Example, overrides_only=True))
    flag_values(["prog", "--count=2"])
    assert options.values(Example, flag_values, given_only=True) == {"count": 2}


def test_names_and_bounds():
    assert options.names(Example, "same_run") == ("name",)
    assert options.names(Example, "saved") == ("name", "count")  # same_run implies saved
    options.check_bounds(Example(count=1))
    with pytest.raises(KeyError, match="--count must be >= 1, got 0"):
        options.check_bounds(Example(count=0), error=KeyError)
