"""The scaling study's results as the report reads them from the registry (``Results``: each task's headline
scores per cell, language and evaluation seed, and the language groups they are averaged over), and their two
flat copies: ``results.csv`` and one TensorBoard hparams entry per cell."""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from weam_ds.registry import Registry
from weam_ds.registry_rows import Cell
from weam_ds.xtreme_r.tasks import TASKS, besides_english

GROUPS = {"seen": "languages every cell saw", "all": "all evaluated languages",
          "unseen": "languages the cell did not see"}
"""The language groups of question (1), as the report words them (``Results.languages`` says which is which)."""


def headline_metric(task: str) -> str:
    """The metric weam_ds.xtreme_r averages for ``task``: span F1 (tagging, QA), mAP@20 (dual-encoder
    retrieval), accuracy otherwise (Tatoeba, classification, XCOPA)."""
    return TASKS[task].main_metric


def short_count(n: float) -> str:
    """``16130000`` as ``16.1M``."""
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def language_count(n: int) -> str:
    """``1 language``, ``5 languages``."""
    return f"{n} language{'' if n == 1 else 's'}"


class RowKey(NamedTuple):
    """What a row of the tables holds fixed: every axis but the objective and the train seed."""

    model: str
    subset: str
    extra: tuple
    """Further axes, as sorted (name, value) pairs."""

    @property
    def extra_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.extra)

    @property
    def size(self) -> tuple:
        """The model size the row belongs to: its model and any further axes (the Answer's paragraphs)."""
        return self.model, self.extra


def row_key(cell: Cell) -> RowKey:
    return RowKey(cell.model, cell.language_subset, tuple(sorted(cell.extra_axes.items())))


@dataclass
class Results:
    """The registry's cells and headline scores: ``scores[task][cell][language][eval_seed]``."""

    registry: Registry
    cells: dict[str, Cell]
    scores: dict[str, dict[str, dict[str, dict[int, float]]]]
    splits: dict[tuple[str, str, str, int], str]
    """The split of each score, keyed (task, cell, language, eval_seed)."""
    _examples: dict = field(default_factory=dict)
    resampled: dict = field(default_factory=dict)
    """``weam_ds.report.stats.resampled_gain``'s cache."""

    @classmethod
    def read(cls, registry: Registry) -> Results:
        scores: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
        splits = {}
        for s in registry.scores():
            if s.metric == headline_metric(s.task):
                scores[s.task][s.cell][s.language][s.eval_seed] = s.value
                splits[(s.task, s.cell, s.language, s.eval_seed)] = s.split
        return cls(registry, {c.name: c for c in registry.cells()}, scores, splits)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.scores)

    @property
    def objectives(self) -> list[str]:
        """The study's objectives, WEAM first."""
        return sorted({c.objective for c in self.cells.values()}, key=lambda o: (o != "weam", o))

    def evaluated(self, task: str) -> list[str]:
        return sorted({lang for by_lang in self.scores[task].values() for lang in by_lang})

    def languages(self, task: str, group: str, cell: Cell) -> list[str]:
        evaluated = self.evaluated(task)
        if group == "all":
            return evaluated
        if group == "unseen":
            return [lang for lang in evaluated if lang not in cell.pretraining_languages]
        seen = frozenset.intersection(*(c.pretraining_languages for c in self.cells.values()))
        return [lang for lang in besides_english(evaluated) if lang in seen]

    def language_scores(self, task: str, cell: str) -> dict[str, float]:
        """Per language, the mean over evaluation seeds."""
        return {lang: statistics.fmean(by_seed.values()) for lang, by_seed in self.scores[task].get(cell, {}).items()}

    def group_score(self, task: str, cell: str, languages: list[str]) -> float | None:
        scores = self.language_scores(task, cell)
        if not languages or any(lang not in scores for lang in languages):
            return None
        return statistics.fmean(scores[lang] for lang in languages)

    def transfer_gap(self, task: str, cell: str) -> float | None:
        """English minus the mean of the other evaluated languages (None without them all)."""
        others = besides_english(self.evaluated(task))
        scores = self.language_scores(task, cell)
        if "en" not in scores or not others or any(lang not in scores for lang in others):
            return None
        return scores["en"] - statistics.fmean(scores[lang] for lang in others)

    def examples(self, task: str, cell: str, language: str) -> np.ndarray | None:
        """Per-example scores averaged over the cell's evaluation seeds, or None where any seed lacks them."""
        key = (task, cell, language)
        if key not in self._examples:
            arrays = [self.registry.per_example(cell, task, language, seed, headline_metric(task))
                      for seed in self.scores[task][cell][language]]
            same = all(a is not None and a.shape == arrays[0].shape for a in arrays)
            self._examples[key] = np.mean(arrays, axis=0) if same else None
        return self._examples[key]

    def evaluations(self, task: str) -> set[tuple[str, int]]:
        """The (language, evaluation seed) pairs that some cell has a score for."""
        return {(lang, seed) for by_lang in self.scores[task].values() for lang, by_seed in by_lang.items()
                for seed in by_seed}

    def missing(self) -> dict[str, list[str]]:
        """Per cell lacking results: each task it has no score for, or scores for only some of the (language,
        evaluation seed) pairs that other cells have."""
        missing = {}
        expected = {task: len(self.evaluations(task)) for task in self.tasks}
        for name in self.cells:
            lacks = []
            for task in self.tasks:
                have = sum(len(by_seed) for by_seed in self.scores[task].get(name, {}).values())
                if have < expected[task]:
                    lacks.append(f"{task} ({have} of {expected[task]} language × seed scores)" if have else task)
            if lacks or not self.tasks:
                missing[name] = lacks or ["every task"]
        return missing

    def rows(self) -> list[RowKey]:
        """Row keys, by size, then number of languages."""
        first = {}
        for cell in self.cells.values():
            first.setdefault(row_key(cell), cell)
        return sorted(first, key=lambda k: (first[k].parameters, first[k].n_languages, k))

    def row_cell(self, key: RowKey) -> Cell:
        """A cell of the row, for what its cells share: size, parameters, languages."""
        return next(c for c in self.cells.values() if row_key(c) == key)

    def cells_of(self, key: RowKey, objective: str) -> dict[int, Cell]:
        """The row's cells of one objective, by train seed."""
        return {c.train_seed: c for c in self.cells.values() if row_key(c) == key and c.objective == objective}


def write_csv(results: Results, path: Path) -> None:
    """One row per cell × task × language × evaluation seed that any cell has; the score empty where this
    cell has none."""
    extra = sorted({k for c in results.cells.values() for k in c.extra_axes})
    grid = sorted((task, lang, seed) for task in results.tasks for lang, seed in results.evaluations(task))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cell", "state", "model", "parameters", "objective", "language_subset", "n_languages",
                         "train_seed", *extra, "task", "language", "seen_in_pretraining", "eval_seed", "split",
                         "metric", "score"])
        for cell in results.cells.values():
            for task, lang, seed in grid:
                value = results.scores[task].get(cell.name, {}).get(lang, {}).get(seed)
                writer.writerow([cell.name, cell.state, cell.model, cell.parameters, cell.objective,
                                 cell.language_subset, cell.n_languages, cell.train_seed,
                                 *(cell.extra_axes.get(k, "") for k in extra), task, lang,
                                 lang in cell.pretraining_languages, seed,
                                 results.splits.get((task, cell.name, lang, seed), ""), headline_metric(task),
                                 "" if value is None else repr(value)])


def write_hparams(results: Results, directory: Path) -> None:
    """One TensorBoard hparams entry per cell in ``directory/<cell>``: its axes, parameters, languages and state
    as hyper-parameters; its scores and transfer gaps on all evaluated languages and its cost as metrics (only
    those it has: a missing one is absent, not 0)."""
    # Imported here: torch's import costs seconds, and ``launcher study status`` reads headline_metric from here.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory)) as writer:
        for cell in results.cells.values():
            hparams = {**cell.axes, "parameters": cell.parameters, "n_languages": cell.n_languages,
                       "state": cell.state}
            metrics = {}
            for task in results.tasks:
                for name, value in (("score", results.group_score(task, cell.name, results.evaluated(task))),
                                    ("transfer_gap", results.transfer_gap(task, cell.name))):
                    if value is not None:
                        metrics[f"study/{task}/{name}"] = value
            if cell.cost is not None:
                metrics.update({"study/cost/train_flops": cell.cost.train_flops,
                                "study/cost/gpu_hours": cell.cost.gpu_hours})
            writer.add_hparams(hparams, metrics, run_name=cell.name)
