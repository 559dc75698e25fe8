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


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, whether None is allowed) for ``int``, ``float | None``, ``str``, ``bool``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def coerce(cls: type, key: str, value: Any) -> Any:
    """Check ``value`` against the type of field ``key`` of ``cls``; int is accepted for float."""
    types_ = _field_types(cls)
    if key not in types_:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types_))}")
    base, optional = _base_type(types_[key])
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {base.__name__}, got {value!r}")
    choices = next(f.metadata.get("choices") for f in dataclasses.fields(cls) if f.name == key)
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


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
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls``; unset flags stay absent so recipe values are not overwritten."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base, _ = _base_type(_field_types(cls)[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        # argparse %-formats help strings: a literal "75%" must reach it as "75%%" or --help crashes.
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(
                flag,
                type=base,
                default=argparse.SUPPRESS,
                choices=choices,
                metavar=f.metadata.get("metavar"),
                help=help_text,
            )


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
