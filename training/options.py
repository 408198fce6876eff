"""Dataclass fields that declare their own absl flag, so that each setting is written once.

``option(kind, help, default)`` is a ``dataclasses.field`` whose metadata holds
the flag ``--name`` (``flags.DEFINE_<kind>``); ``declarations`` lists the
flags of a dataclass for ``train.py`` to define, ``values`` reads them back
into field values, and ``check_bounds`` applies the flags' ``lower_bound`` to
an instance built without flags.
"""

import dataclasses


def option(kind, help, default=dataclasses.MISSING, *, flag=None, inverted=False, parse=None,
           saved=False, same_run=False, **flag_args):
    """A field set by the absl flag ``DEFINE_<kind>(flag or field name, default, help, **flag_args)``.

    inverted: a boolean flag that sets the negation (``--no_x`` for field ``x``);
    parse: turns the flag's value (not None) into the field's;
    saved: the value goes to the run's settings.json;
    same_run: saved, and resuming a run with another value is refused.
    """
    metadata = dict(kind=kind, help=help, flag=flag, inverted=inverted, parse=parse,
                    saved=saved or same_run, same_run=same_run, flag_args=flag_args)
    return dataclasses.field(default=default, metadata={"option": metadata})


def _options(cls):
    return [(field, field.metadata["option"]) for field in dataclasses.fields(cls)
            if "option" in field.metadata]


def declarations(cls, *, overrides_only=False):
    """``(kind, flag name, default, help, flag_args)`` of each option of dataclass ``cls``.

    overrides_only: every flag defaults to None (it overrides some other source when given).
    """
    out = []
    for field, opt in _options(cls):
        if overrides_only or field.default is dataclasses.MISSING:
            default = None
        else:
            default = (not field.default) if opt["inverted"] else field.default
        out.append((opt["kind"], opt["flag"] or field.name, default, opt["help"], opt["flag_args"]))
    return out


def values(cls, flag_values, *, given_only=False):
    """``{field: value}`` of the options of ``cls`` from parsed ``flag_values``.

    given_only: only the flags whose value is not None (the overrides).
    """
    out = {}
    for field, opt in _options(cls):
        value = flag_values[opt["flag"] or field.name].value
        if value is None:
            if given_only:
                continue
        elif opt["inverted"]:
            value = not value
        elif opt["parse"]:
            value = opt["parse"](value)
        out[field.name] = value
    return out


def names(cls, key):
    """The fields of ``cls`` whose option sets ``key`` ("saved" or "same_run")."""
    return tuple(field.name for field, opt in _options(cls) if opt[key])


def check_bounds(instance, error=ValueError):
    """Raise ``error`` for a value under its flag's ``lower_bound`` (as the flag would)."""
    for field, opt in _options(type(instance)):
        bound, value = opt["flag_args"].get("lower_bound"), getattr(instance, field.name)
        if bound is not None and value is not None and value < bound:
            raise error(f"--{opt['flag'] or field.name} must be >= {bound}, got {value}")
