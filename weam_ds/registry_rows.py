"""What the study registry (weam_ds.registry) reads back: the study (``Study``), each cell with its cost (``Cell``,
``Cost``) and each score (``Score``); and what a cell is named by: the axes every cell has (``NAMED_AXES``) and the
languages of its pre-training pairs."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from weam_ds.xtreme_r.tasks import besides_english

NAMED_AXES = {"model": "model", "languages": "data.pairs", "objective": "objective.name", "seed": "train.seed"}
"""Axes every cell has (one-valued when the study does not vary them), each with the run-config key it is read
from: the model, the language subset's name (of the subset ``data.pairs`` lists), the objective and the train
seed. A study may add more (e.g. ``exchange``)."""


def pair_languages(pairs: Iterable[str]) -> frozenset[str]:
    """Every language ``pairs`` cover (``de-en``: de and en; a monolingual source ``sw``: sw)."""
    return frozenset(side for pair in pairs for side in pair.split("-"))


def cell_languages(pairs: Iterable[str]) -> list[str]:
    """A cell's ``languages``, sorted: those its pre-training pairs cover besides English. Their number is the
    study's "number of languages"."""
    return besides_english(sorted(pair_languages(pairs)))


@dataclass(frozen=True)
class Study:
    schema_version: int
    created_at: str
    name: str | None
    sha256: str | None


@dataclass(frozen=True)
class Cost:
    steps: int
    tokens: int
    train_flops: float
    wall_seconds: float
    gpu_hours: float
    world_size: int
    hardware: str
    recorded_at: str


@dataclass(frozen=True)
class Cell:
    name: str
    axes: dict
    config: dict
    config_sha256: str
    model: str
    parameters: int
    objective: str
    language_subset: str
    pairs: tuple[str, ...]
    languages: tuple[str, ...]
    """The languages of ``pairs`` besides English."""
    n_languages: int
    train_seed: int
    state: str
    error: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    cost: Cost | None

    @property
    def pretraining_languages(self) -> frozenset[str]:
        """Every language the cell saw in pre-training, English included when its pairs have it."""
        return pair_languages(self.pairs)

    @property
    def extra_axes(self) -> dict:
        """The axes beyond ``NAMED_AXES``."""
        return {k: v for k, v in self.axes.items() if k not in NAMED_AXES}


@dataclass(frozen=True)
class Score:
    cell: str
    task: str
    language: str
    eval_seed: int
    split: str
    metric: str
    value: float
