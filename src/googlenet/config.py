"""Typed command configs: defaults < recipe file (TOML) < command-line flags; unknown keys are errors.

Each command owns one dataclass. Its fields become ``--flags`` (underscores as dashes), a field's
``metadata["help"]`` becomes the flag's help, and ``bool`` fields get ``--x / --no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

RECIPE_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the key and the problem."""


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``--config NAME``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (``paper``, ``fast``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / f"{name_or_path.replace('-', '_')}.toml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"no recipe file or shipped recipe named {name_or_path!r}; shipped: {', '.join(list_recipes())}")


def _fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in _fields(cls)}


def _base_type(tp: Any) -> tuple[type, bool, bool]:
    """(scalar type, whether None is allowed, whether a list) for ``int``, ``float | None``, ``list[str]``..."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        base, _, is_list = _base_type(non_none[0])
        return base, len(non_none) < len(args), is_list
    if typing.get_origin(tp) is list:
        return args[0], False, True
    return tp, False, False


def check_range(key: str, value: Any, metadata: Any) -> None:
    """The field's ``min`` / ``max`` metadata, where given; the message says which bound and the value."""
    low, high = metadata.get("min"), metadata.get("max")
    if low is not None and value < low:
        raise ConfigError(f"{key} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{key} must be at most {high}, got {value}")


def _coerce_scalar(base: type, key: str, value: Any, metadata: Any) -> Any:
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {base.__name__}, got {value!r}")
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if base in (int, float):
        check_range(key, value, metadata)
    return value


def coerce(cls: type, key: str, value: Any) -> Any:
    """Check ``value`` against the type, choices and range of field ``key`` of ``cls``; an int is a float too."""
    types_ = _field_types(cls)
    if key not in types_:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types_))}")
    base, optional, is_list = _base_type(types_[key])
    metadata = next(f.metadata for f in _fields(cls) if f.name == key)
    if value is None and optional:
        return None
    if is_list:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key} must be a non-empty list of {base.__name__}, got {value!r}")
        return [_coerce_scalar(base, key, v, metadata) for v in value]
    return _coerce_scalar(base, key, value, metadata)


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _flag(f: dataclasses.Field) -> str:
    """How the field is named on the command line: ``--flag-name``, or ``NAME`` for a positional one."""
    return f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")


def resolve(cls: type[T], recipe: str | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from its defaults, then a recipe file, then ``overrides`` (flags), each checked."""
    values: dict[str, Any] = {}
    if recipe is not None:
        path = recipe_path(recipe)
        for key, value in load_toml(path).items():
            try:
                values[key] = coerce(cls, key, value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    for key, value in (overrides or {}).items():
        values[key] = coerce(cls, key, value)
    missing = [_flag(f) for f in _fields(cls) if _is_required(f) and f.name not in values]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (on the command line or in the --config file)")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _argparse_type(base: type, metadata: Any) -> Any:
    """The scalar parser, with the field's range checked at parse time (a usage error, exit status 2)."""
    if base not in (int, float):
        return base

    def parse(text: str) -> Any:
        try:
            value = base(text)
        except ValueError:
            kind = "whole number" if base is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}") from None
        try:
            check_range("value", value, metadata)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None
        return value

    return parse


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    if _is_required(f):
        text += " (required)"
    elif f.default_factory is not dataclasses.MISSING:
        text += f" (default: {f.default_factory()})"
    elif f.default is not None:  # None: the help says what happens by default
        text += f" (default: {f.default})"
    # argparse %-formats help strings: a literal "75%" must reach it as "75%%" or --help crashes.
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls``; unset flags stay absent so recipe values are not overwritten.

    Field metadata: ``help``, ``choices``, ``metavar``, ``min`` / ``max`` (checked for flags and files alike),
    ``positional`` (a positional argument; a list field takes one or more). ``bool`` fields get
    ``--x / --no-x``; a list field's flag may be repeated.
    """
    for f in _fields(cls):
        base, _, is_list = _base_type(_field_types(cls)[f.name])
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=_help(f))
        if base is bool:
            parser.add_argument(_flag(f), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs.update(type=_argparse_type(base, f.metadata), choices=f.metadata.get("choices"))
        kwargs["metavar"] = f.metadata.get("metavar")
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="*" if is_list else "?", **kwargs)
        else:
            parser.add_argument(_flag(f), action="append" if is_list else "store", **kwargs)


def positional_list(cls: type) -> str | None:
    """The name of ``cls``'s positional list field (``predict``'s paths), if it has one."""
    for f in _fields(cls):
        if f.metadata.get("positional") and _base_type(_field_types(cls)[f.name])[2]:
            return f.name
    return None


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line (an empty positional list is not given)."""
    names = {f.name for f in _fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v != []}


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A config field: its default (none: required), help text and metadata (see :func:`add_arguments`)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})
