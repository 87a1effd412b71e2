"""Typed config trees: dataclasses filled from YAML mappings, strictly.

Every key must be a field, every value must have the field's type, and every error names the file and
the key's full path (``prep.yaml: pairs[1].format: ...``). Later stages build their configs with this too.

Every YAML file the project reads goes through ``read_yaml``: safe loading (no Python objects), a key written
twice is an error naming both lines (YAML would keep the last one silently), and aliases (``*name``) are
refused, so a file of nested aliases (a "billion laughs") fails at once instead of expanding until memory runs
out. Error messages show a bounded summary of a value, never the repr of a whole one.
"""
from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without its two silent surprises: duplicate keys and alias expansion."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"{_line(event.start_mark)}: alias *{event.anchor} is not allowed "
                              "(write the value out)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader's own error says so below
                continue
            if first is not key_node:
                raise ConfigError(f"{_line(key_node.start_mark)}: duplicate key {_summary(key)} "
                                  f"(first at {_line(first.start_mark)})")
        return super().construct_mapping(node, deep)


def _line(mark) -> str:
    return f"{mark.name}:{mark.line + 1}"


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The content of YAML file ``path``; any problem is a ConfigError naming the file (and the line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML (not UTF-8: {exc.reason})") from None
    loader = _StrictLoader(text)
    loader.name = str(path)  # the marks in error messages name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({f'line {mark.line + 1}: ' if mark else ''}{problem})") from None
    finally:
        loader.dispose()


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read ``path`` with ``read_yaml`` and build ``cls`` from it."""
    return from_dict(cls, read_yaml(path), where=str(path))


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
        if len(errors) == 1:  # X or null, given something: X's own error says what is wrong inside it
            raise errors[0]
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
    if origin is typing.Literal:  # a choice among fixed names: checked here, once, for every config
        choices = typing.get_args(tp)
        if value in choices and isinstance(value, str) == all(isinstance(c, str) for c in choices):
            return value
        raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(map(str, choices))}")
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
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return "a mapping" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))


def _summary(value: Any) -> str:
    """A value as an error shows it: reprlib stops at these sizes instead of formatting all of it."""
    short = reprlib.Repr()
    short.maxlevel, short.maxdict, short.maxlist, short.maxstring, short.maxother = 2, 4, 4, 60, 60
    return short.repr(value)


def _value_name(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {_summary(value)}"
