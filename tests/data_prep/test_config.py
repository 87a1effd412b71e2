"""The typed config loader that every CLI shares."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from data_prep.typed_config import ConfigError, from_dict, load_yaml


@dataclass
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    steps: int
    inner: Inner = field(default_factory=Inner)
    path: str | list[str] | None = None


def test_values_are_typed_and_defaults_filled():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"rate": 1, "names": ["a"]}, "path": ["x", "y"]})
    assert cfg == Outer(3, Inner(1.0, ["a"]), ["x", "y"]) and isinstance(cfg.inner.rate, float)
    assert from_dict(Outer, {"steps": 1}).inner == Inner()


@pytest.mark.parametrize("data, message", [
    ({"steps": 1, "inner": {"rat": 1}}, "run.yaml: inner.rat: unknown key (expected one of: rate, names)"),
    ({"steps": "1"}, "run.yaml: steps: expected int, got str '1'"),
    ({"steps": True}, "run.yaml: steps: expected int, got bool True"),
    ({"steps": 1, "inner": {"names": ["a", 2]}}, "run.yaml: inner.names[1]: expected str, got int 2"),
    ({"steps": 1, "path": 3}, "run.yaml: path: expected str or a list of str or null, got int 3"),
    ({}, "run.yaml: steps: required key is missing"),
    ([1], "run.yaml: <root>: expected a mapping"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data, where="run.yaml")
    assert str(err.value).startswith(message)


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("steps: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        load_yaml(Outer, path)
