"""The study file (``study.yaml``): a base run config, the axes of the grid, named language subsets, the
training budget, the evaluation and where the cells run; validated as strictly as ``run.yaml`` (errors name
the key). ``expand`` turns it into cells: one resolved, checked run config each.

```yaml
name: demo
study_dir: out/demo/study
base: out/demo/run.yaml             # a run config (its output_dir is replaced per cell), or a mapping
languages:                          # named subsets of language pairs: the "number of languages" axis
  langs_1: [fr-en]
  langs_5: [fr-en, es-en, ru-en, ja-en, ko-en]
axes:                               # dotted run-config keys and their values; the grid is their product
  model: [tiny, mini]
  data.pairs: [langs_1, langs_5]    # subset names
  objective.name: [weam, mlm]
  train.seed: [1234]
budget: {rule: steps, steps: 120}   # or {rule: tokens_per_language, tokens_per_language: 500000}
evaluation:
  tatoeba: {layer: null}            # retrieval on the datasets' held-out test pairs, every language
  xtreme_r: null                    # or {data: XTREME_DIR, tasks: [xnli, udpos], seeds: [1, 2, 3], recipes: DIR}
launch: {backend: local, nproc_per_node: 2}   # launcher backend and cluster settings (docs/launching.md)
```

``model``, ``data.pairs``, ``objective.name`` and ``train.seed`` always name a cell (from the base config when
they are not axes); any other run-config key (``objective.exchange``, ``data.temperature`` ...) can be an axis.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_prep.manifest import read_manifest
from data_prep.typed_config import ConfigError, from_dict, load_yaml, read_yaml
from launcher.cluster import ClusterConfig
from weam_ds.config import RunConfig, load_run_config
from weam_ds.registry import cell_name
from weam_ds.registry_rows import NAMED_AXES, cell_languages

log = logging.getLogger(__name__)

ALL_PAIRS = "all"
"""The language subset of a base config whose data.pairs is null (every pair of its datasets)."""


@dataclass
class BudgetConfig:
    rule: str = "steps"
    """steps: every cell trains the same number of optimizer steps; tokens_per_language: a cell trains until
    it has seen about this many tokens per pre-training language (more languages, more steps)."""
    steps: int | None = None
    """rule steps: the steps of every cell (default: the base config's train.steps)."""
    tokens_per_language: int | None = None
    """rule tokens_per_language: real tokens (both sides) per language; a cell's steps are this × its number
    of languages over the tokens of one step (pairs per step × the mean tokens of its pairs' train data)."""

    def __post_init__(self):
        if self.rule not in ("steps", "tokens_per_language"):
            raise ConfigError(f"rule: {self.rule!r} is not one of steps, tokens_per_language")
        if self.rule == "tokens_per_language" and (self.tokens_per_language or 0) < 1:
            raise ConfigError("tokens_per_language: required (a positive number) with rule tokens_per_language")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("steps: must be at least 1")


@dataclass
class TatoebaConfig:
    layer: int | None = None
    """Hidden layer to mean-pool (default: the one XTREME-R pools for the model type, ``tatoeba.official_layer``)."""
    batch_size: int = 64


@dataclass
class XtremeConfig:
    data: str
    """The official XTREME download folder (weam_ds.xtreme_r run --data)."""
    tasks: list[str]
    languages: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Fine-tuning seeds: three give a spread over seeds in the report."""
    deepspeed: str | None = None
    recipes: str | None = None
    """A folder of <task>.yaml recipes (default: the shipped ones, the official baselines')."""

    def __post_init__(self):
        if not self.tasks or not self.seeds:
            raise ConfigError("tasks, seeds: name at least one of each")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} names a seed twice (the spread over seeds needs distinct runs)")
        if not Path(self.data).is_dir():
            raise ConfigError(f"data: {self.data} is not a directory")


@dataclass
class EvaluationConfig:
    tatoeba: TatoebaConfig | None = None
    xtreme_r: XtremeConfig | None = None

    def __post_init__(self):
        if self.tatoeba is None and self.xtreme_r is None:
            raise ConfigError("tatoeba, xtreme_r: choose at least one evaluation")


@dataclass
class StudyConfig:
    name: str
    study_dir: str
    base: str | dict[str, Any]
    """A run config file, or a run config as a mapping; its output_dir is replaced by each cell's."""
    axes: dict[str, list[Any]]
    evaluation: EvaluationConfig
    languages: dict[str, list[str]] = field(default_factory=dict)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    launch: ClusterConfig = field(default_factory=lambda: ClusterConfig(backend="local"))

    def __post_init__(self):
        if not self.axes:
            raise ConfigError("axes: name at least one axis")
        if "output_dir" in self.axes:
            raise ConfigError("axes.output_dir: the study sets each cell's output_dir (cells/<cell>/run), so it "
                              "cannot be an axis")
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"axes.{key}: expected a non-empty list of values")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ConfigError(f"axes.{key}: a value is listed twice")
        for name, pairs in self.languages.items():
            if not pairs or len(set(pairs)) != len(pairs):
                raise ConfigError(f"languages.{name}: expected a non-empty list of distinct pairs")
        for value in self.axes.get("data.pairs", []):
            if value not in self.languages:
                raise ConfigError(f"axes.data.pairs: {value!r} is not a subset named under languages "
                                  f"({', '.join(self.languages) or 'none'})")


@dataclass(frozen=True)
class CellPlan:
    """One cell: its name, its axes as the registry names them, and its resolved run config."""

    name: str
    axes: dict[str, Any]
    run: dict
    """The resolved run config (a plain mapping, as written to the cell's run.yaml)."""
    pairs: list[str]
    directory: Path

    @property
    def config_file(self) -> Path:
        return self.directory / "run.yaml"

    @property
    def run_dir(self) -> Path:
        return Path(self.run["output_dir"])

    @property
    def export_dir(self) -> Path:
        return self.directory / "export"

    @property
    def eval_dir(self) -> Path:
        return self.directory / "eval"


def load_study(path: str | Path) -> StudyConfig:
    return load_yaml(StudyConfig, path)


def study_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _base(study: StudyConfig, where: str) -> dict:
    if isinstance(study.base, dict):
        return copy.deepcopy(study.base)
    try:
        base = read_yaml(study.base, "run config")
    except ConfigError as exc:
        raise ConfigError(f"{where}: base: {exc}") from None
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base: {study.base} is not a run config (a mapping)")
    return base


def _set(config: dict, dotted: str, value: Any, where: str) -> None:
    """Sets ``a.b.c`` in a nested mapping; an unknown key is caught when the result is checked as a RunConfig."""
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: axes.{dotted}: {part} is not a section of the run config")
    node[last] = value


def _get(config: RunConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def expand(study: StudyConfig, where: str) -> list[CellPlan]:
    """Every cell of the grid, its run config written to ``<study_dir>/cells/<cell>/run.yaml`` and checked as
    ``weam_ds.train`` checks it (datasets, pairs, model, DeepSpeed config)."""
    base = _base(study, where)
    cells_dir = Path(study.study_dir) / "cells"
    keys = list(study.axes)
    _check_nested(study.languages)
    plans, resolved = [], {}
    for values in itertools.product(*(study.axes[k] for k in keys)):
        config = copy.deepcopy(base)
        subset = None
        for key, value in zip(keys, values):
            if key == "data.pairs":
                subset, value = value, list(study.languages[value])
            _set(config, key, value, where)
        config["output_dir"] = "."  # replaced below, once the cell's name is known
        cfg = from_dict(RunConfig, config, where=f"{where}: cell {dict(zip(keys, values))}")
        pairs = cfg.data.pairs or sorted({p for d in cfg.data.datasets for p in read_manifest(d)["pairs"]})
        if subset is None:
            subset = next((n for n, p in study.languages.items() if sorted(p) == sorted(pairs)), ALL_PAIRS
                          if cfg.data.pairs is None else None)
            if subset is None:
                raise ConfigError(f"{where}: base: data.pairs {cfg.data.pairs} is not a subset named under languages")
        axes = {axis: (subset if key == "data.pairs" else _get(cfg, key)) for axis, key in NAMED_AXES.items()}
        axes.update({k: v for k, v in zip(keys, values) if k not in NAMED_AXES.values()})
        name = cell_name(axes)
        directory = cells_dir / name
        config["output_dir"] = str(directory / "run")
        _apply_budget(study.budget, config, cfg, pairs, study.launch)
        _refuse_twin(resolved, config, dict(zip(keys, values)), where)
        plans.append(CellPlan(name, axes, config, pairs, directory))
    for plan in plans:  # every cell is checked before any runs: a bad one costs nothing
        plan.directory.mkdir(parents=True, exist_ok=True)
        plan.config_file.write_text(yaml.safe_dump(plan.run, sort_keys=False), encoding="utf-8")
        load_run_config(plan.config_file)
    return plans


def _refuse_twin(resolved: dict[str, dict], config: dict, values: dict, where: str) -> None:
    """Two cells with one run config (the study overrides what their axis values set, e.g. train.steps by
    the budget, or two language subsets list the same pairs) would train the same run twice as two results."""
    same = json.dumps({k: v for k, v in config.items() if k != "output_dir"}, sort_keys=True)
    first = resolved.setdefault(same, values)
    if first is not values:
        axis = next(k for k in values if values[k] != first[k])
        raise ConfigError(f"{where}: axes.{axis}: {first[axis]!r} and {values[axis]!r} give the same run config "
                          "once the study resolves the cells (the study sets this key itself, or the values mean "
                          "the same)")


def _check_nested(subsets: dict[str, list[str]]) -> None:
    """Nested subsets (each larger one holds the smaller ones) let the report compare the languages that
    every cell saw; other subsets still work, with a warning."""
    ordered = sorted(subsets.items(), key=lambda item: len(item[1]))
    for (small, a), (large, b) in zip(ordered, ordered[1:]):
        if not set(a) <= set(b):
            log.warning("language subsets %s and %s are not nested: the report's 'seen by every cell' group "
                        "shrinks to the pairs they share", small, large)


def _apply_budget(budget: BudgetConfig, config: dict, cfg: RunConfig, pairs: list[str],
                  launch: ClusterConfig) -> None:
    if budget.rule == "steps":
        config.setdefault("train", {})["steps"] = budget.steps or cfg.train.steps
        return
    languages = len(cell_languages(pairs)) or 1
    steps = math.ceil(budget.tokens_per_language * languages / tokens_per_step(cfg, pairs, launch))
    config.setdefault("train", {})["steps"] = max(1, steps)


def train_tokens(cfg: RunConfig, pairs: list[str]) -> tuple[int, int]:
    """The real tokens (both sides) and the pairs of ``pairs``' train data in the run's datasets' manifests."""
    pair_tokens, samples = 0, 0
    for dataset in cfg.data.datasets:
        for key, entry in read_manifest(dataset)["pairs"].items():
            if key in pairs:
                train = entry["splits"]["train"]
                pair_tokens += train["src_tokens"] + train["tgt_tokens"]
                samples += train["samples"]
    return pair_tokens, samples


def tokens_per_step(cfg: RunConfig, pairs: list[str], launch: ClusterConfig) -> float:
    """Real tokens one optimizer step trains on over every rank: pairs per step × the mean tokens of its pairs'
    train data, or with a budget of encoded positions that budget (bucketed batches are nearly all real tokens)."""
    micro = cfg.data.micro_batch
    if micro.pairs is not None:
        pair_tokens, samples = train_tokens(cfg, pairs)
        tokens_per_batch = micro.pairs * pair_tokens / max(samples, 1)
    else:
        tokens_per_batch = micro.tokens
    return tokens_per_batch * cfg.train.gradient_accumulation * launch.shape().world_size
