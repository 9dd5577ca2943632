"""Settings: one dataclass per set of settings, and the CLI derived from it.

A field made by `setting()` carries its flag's help and its one validator; `validate()` runs them on
a dataclass (the Python API), and `add_flags()` turns the same fields into argparse flags whose
type runs the same validator (the CLI), so a default, a limit or a message lives in one place.
Torch-free; imports only wordlm.errors.
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields

from wordlm.errors import WordLMError

Check = Callable[[object], None]  # raises ValueError(the reason) for a bad value


def integer(lo: int, hi: int | None = None) -> Check:
    """An integer in [lo, hi] (hi None: no upper bound)."""

    def check(value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be an integer {f'from {lo} to {hi}' if hi is not None else f'>= {lo}'}")

    return check


def number(lo: float, hi: float | None = None, lo_open: bool = False) -> Check:
    """A finite number in [lo, hi] ((lo, hi] with lo_open; hi None: no upper bound)."""
    interval = f"{'(' if lo_open else '['}{lo}, {'inf)' if hi is None else f'{hi}]'}"

    def check(value: object) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (value > lo if lo_open else value >= lo) or (hi is not None and value > hi):
            raise ValueError(f"must be a finite number in {interval}")

    return check


def one_of(*choices: object) -> Check:
    def check(value: object) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")

    check.choices = choices  # argparse lists them in --help
    return check


SEED_MAX = 2**63 - 1  # what torch's and numpy's generators and every JSON client take
MAX_THREADS = 256  # the kernels start this many threads at most per call
threads = integer(1, MAX_THREADS)  # every count of CPU threads: the CLI's, the runtime's, the kernels'


def checked(check: Check, value: object, what: str) -> object:
    """`value` if `check` takes it, else a one-line WordLMError naming `what` (a flag) and why."""
    try:
        check(value)
    except ValueError as e:
        raise WordLMError(f"{what}: {e}, got {value}") from None
    return value


def check_threads(value: object, what: str = "--threads") -> int:
    """`value` if it is a sane thread count, else a one-line WordLMError."""
    return checked(threads, value, what)


def setting(default: object = MISSING, *, help: str, check: Check | None = None, flag: str | None = None) -> typing.Any:
    """A dataclass field that is a user's setting: its flag (default --the-field-name), help and validator."""
    meta = {"help": help, "check": check, "flag": flag}
    if isinstance(default, list | dict | set):
        raise TypeError("a setting's default must be immutable")
    return field(default=default, metadata=meta)


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_value(f: Field, value: object) -> object:
    """The field's value, or a WordLMError naming its flag and why (None: 'not set', always valid)."""
    if value is not None and f.metadata.get("check"):
        checked(f.metadata["check"], value, flag_of(f))
    return value


def validate(obj: object) -> None:
    """Every setting of a dataclass through its validator: the Python API's checks, the CLI's own."""
    for f in fields(obj):
        if "help" in f.metadata:
            check_value(f, getattr(obj, f.name))


def _base_type(hint: object) -> type:
    """int for `int`, `int | None`; the first non-None member of a union."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """A flag for every setting of dataclass `cls` (but `skip`): kebab-case, its default, its validator."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        base, default = _base_type(hints[f.name]), f.default
        if base is bool:
            parser.add_argument(flag_of(f), action="store_true", default=default, help=f.metadata["help"])
            continue
        parser.add_argument(flag_of(f), default=default, help=_help(f, default), **flag_type(cls, f.name))


def flag_type(cls: type, name: str) -> dict:
    """argparse's `type` (and `choices`) for the setting `name` of `cls`: for a flag made by hand (one
    in a mutually exclusive group, say) that must still run the setting's own validator."""
    f = next(f for f in fields(cls) if f.name == name)
    base = _base_type(typing.get_type_hints(cls)[name])
    choices = getattr(f.metadata.get("check"), "choices", None)
    return {"type": _parser(f, base), **({"choices": choices} if choices else {})}


def _help(f: Field, default: object) -> str:
    return f.metadata["help"] + ("" if default is None else f" (default {default})")


def _parser(f: Field, base: type) -> Callable[[str], object]:
    return arg_type(base, f.metadata.get("check"))


def arg_type(base: type, check: Check | None) -> Callable[[str], object]:
    """An argparse type: the text as `base`, then the validator; a one-line error either way."""

    def parse(text: str) -> object:
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if base is int else 'a number'}, got {text!r}"
            ) from None
        try:
            check and check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e}, got {text}") from None
        return value

    parse.__name__ = base.__name__  # argparse names the type in some messages
    return parse


def from_args(cls: type, args: argparse.Namespace, **extra: object):
    """The dataclass from parsed flags (the settings add_flags made) and `extra` fields."""
    names = {f.name for f in fields(cls) if "help" in f.metadata and hasattr(args, f.name)}
    return cls(**{n: getattr(args, n) for n in names}, **extra)
