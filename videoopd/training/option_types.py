"""How an option's value is checked: its type and choices read from the dataclass annotation, its flag name,
the coercion of a flag's or a YAML file's value, the bounds; :class:`ConfigError` for what fails."""

from __future__ import annotations

import argparse
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

__all__: list[str] = []  # nothing here is promised: docs/api.md


class ConfigError(ValueError):
    """A bad option value, file or combination, reported before any work starts."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(bool/int/float/str, the Literal's choices or None) of a field's annotation, Optional
    removed."""
    origin = get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation, origin = args[0], get_origin(args[0])
    if origin is Literal:
        choices = get_args(annotation)
        return type(choices[0]), choices
    return annotation, None


def flag_name(name: str) -> str:
    """The command-line spelling of option ``name`` (``max_new_tokens`` -> ``--max-new-tokens``), as
    error messages name it (a YAML key may be spelt either way)."""
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def coerce(name: str, kind: type, value: Any) -> Any:
    """``value`` (from YAML, a preset or a flag) as option ``name`` of type ``kind``: strings are
    parsed as their flags are (``"false"`` is False, ``"3"`` is 3); a float for an int option,
    or a number for a bool, is a ConfigError rather than a truncation or a truthy string."""
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _bool(value)
            except argparse.ArgumentTypeError:
                pass
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def describe_bounds(bounds: Mapping[str, float], kind: type) -> str:
    """The bounds as the error message and ``--help`` say them: ``> 0``, ``in [0, 1)``..."""
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    text = (
        f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
        if low
        else f"{'<' if high[0] == ')' else '<='} {high[1]:g}"
        if high
        else ""
    )
    return f"{text} and finite" if kind is float else text


def within(value: float, bounds: Mapping[str, float]) -> bool:
    return (
        ("gt" not in bounds or value > bounds["gt"])
        and ("ge" not in bounds or value >= bounds["ge"])
        and ("lt" not in bounds or value < bounds["lt"])
        and ("le" not in bounds or value <= bounds["le"])
    )
