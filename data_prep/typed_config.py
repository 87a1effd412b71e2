"""Typed config trees: dataclasses filled from YAML mappings, strictly.

Every key must be a field, every value must have the field's type, and every error names the file and
the key's full path (``prep.yaml: pairs[1].format: ...``). Later stages build their configs with this too.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read ``path`` with ``yaml.safe_load`` and build ``cls`` from it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return from_dict(cls, raw, where=str(path))


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` prefixes error messages."""
    return _convert(cls, data, f"{where}: ", "")


def to_dict(obj: Any) -> Any:
    """The plain (YAML/JSON-ready) form of a config dataclass."""
    return dataclasses.asdict(obj)


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, where, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}{key or '<root>'}: expected {_type_name(tp)}, got {_value_name(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}{key}: expected a list, got {_value_name(value)}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item_type, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key}: expected a mapping, got {_value_name(value)}")
        key_type, value_type = typing.get_args(tp)
        return {_convert(key_type, k, where, f"{key}.{k}"): _convert(value_type, v, where, f"{key}.{k}")
                for k, v in value.items()}
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int, so an int field must refuse True/False explicitly.
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}{key}: expected {_type_name(tp)}, got {_value_name(value)}")


def _build_dataclass(cls: Any, value: Any, where: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key or '<root>'}: expected a mapping, got {_value_name(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ConfigError(f"{where}{prefix}{unknown[0]}: unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], where, prefix + name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ checks raise with a key relative to the dataclass; add where it sits.
        raise ConfigError(f"{where}{prefix}{exc}") from None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return "a mapping" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))


def _value_name(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]
