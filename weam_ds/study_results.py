"""The scaling study's results as the report reads them from the registry (``Results``: each task's headline
scores per cell, language and evaluation seed), and the statistics over them that the report's sections share:
WEAM's gains over MLM and TLM with their spread (the seed standard deviation or a paired bootstrap over the
evaluation examples, ``gains``), and the score and transfer gap per objective and size (``scaling``).
``weam_ds.report`` explains how they are made."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from weam_ds.registry import Cell, Registry
from weam_ds.xtreme_r.tasks import TASKS

MIN_SEEDS_FOR_STD = 3
RESAMPLES = 1000
BOOTSTRAP_SEED = 1234
"""Fixed, so that the same registry always gives the same report."""
BASELINES = ("mlm", "tlm")
GROUPS = {"seen": "languages every cell saw", "all": "all evaluated languages",
          "unseen": "languages the cell did not see"}
"""The language groups of question (1), as the report words them."""
SPREADS = {"std": "std over train seeds", "bootstrap": f"paired bootstrap over examples ({RESAMPLES:,} resamples)",
           "none": "none (no per-example outcomes)"}


def headline_metric(task: str) -> str:
    """The metric weam_ds.xtreme_r averages for ``task``: span F1 (tagging, QA), mAP@20 (dual-encoder
    retrieval), accuracy otherwise (Tatoeba, classification, XCOPA)."""
    return TASKS[task].main_metric


class RowKey(NamedTuple):
    """What a row of the tables holds fixed: every axis but the objective and the train seed."""

    model: str
    subset: str
    extra: tuple
    """Further axes, as sorted (name, value) pairs."""

    @property
    def extra_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.extra)


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
    """``resampled_gain``'s cache."""

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

    def evaluated(self, task: str) -> list[str]:
        return sorted({lang for by_lang in self.scores[task].values() for lang in by_lang})

    def languages(self, task: str, group: str, cell: Cell) -> list[str]:
        evaluated = self.evaluated(task)
        if group == "all":
            return evaluated
        if group == "unseen":
            return [lang for lang in evaluated if lang not in cell.pretraining_languages]
        seen = frozenset.intersection(*(c.pretraining_languages for c in self.cells.values()))
        return [lang for lang in evaluated if lang in seen and lang != "en"]

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
        others = [lang for lang in self.evaluated(task) if lang != "en"]
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


@dataclass
class Gain:
    task: str
    baseline: str
    row: RowKey
    group: str
    value: float | None = None
    spread: float | None = None
    kind: str = ""
    """How the spread was made: ``std`` (over train seeds), ``bootstrap``, or ``none`` (no per-example outcomes)."""
    seeds: int = 0
    empty: bool = False
    """The group has no language for this row."""
    pairs: list[tuple[Cell, Cell]] = field(default_factory=list)
    """The (WEAM, baseline) cells, one pair per train seed, whose gains ``value`` averages."""

    @property
    def within_noise(self) -> bool:
        return self.spread is not None and abs(self.value) <= 2 * self.spread

    def text(self) -> str:
        if self.empty:
            return "—"
        if self.value is None:
            return "missing"
        if self.spread is None:
            return f"{self.value:+.2f} (no spread)"
        return f"{self.value:+.2f} ± {self.spread:.2f}" + (" (within noise)" if self.within_noise else "")

    def spread_name(self) -> str:
        return SPREADS[self.kind]

    def how(self) -> str:
        """How many train seeds, and which spread: for the summary."""
        seeds = f"{self.seeds} train seed{'' if self.seeds == 1 else 's'}"
        return {"std": f"std over {seeds}", "bootstrap": f"bootstrap, {seeds}",
                "none": f"no spread, {seeds}"}[self.kind]


def gains(results: Results) -> list[Gain]:
    out = []
    objectives = {c.objective for c in results.cells.values()}
    for task in results.tasks:
        for baseline in (b for b in BASELINES if b in objectives and "weam" in objectives):
            for key in results.rows():
                weam, base = results.cells_of(key, "weam"), results.cells_of(key, baseline)
                pairs = [(weam[s], base[s]) for s in sorted(weam.keys() & base.keys())]
                if not pairs:
                    continue
                for group in GROUPS:
                    out.append(_gain(results, task, baseline, key, group, pairs))
    return out


def _gain(results: Results, task: str, baseline: str, key: RowKey, group: str, pairs: list) -> Gain:
    gain = Gain(task, baseline, key, group)
    languages = results.languages(task, group, pairs[0][0])
    if not languages:
        gain.empty = True
        return gain
    complete, diffs = [], []
    for w, b in pairs:
        sw, sb = results.group_score(task, w.name, languages), results.group_score(task, b.name, languages)
        if sw is not None and sb is not None:
            complete.append((w, b))
            diffs.append(sw - sb)
    if not diffs:
        return gain
    gain.value, gain.seeds, gain.pairs = statistics.fmean(diffs), len(diffs), complete
    if len(diffs) >= MIN_SEEDS_FOR_STD:
        gain.spread, gain.kind = statistics.stdev(diffs), "std"
    else:
        gain.spread = paired_bootstrap(results, task, languages, complete)
        gain.kind = "bootstrap" if gain.spread is not None else "none"
    return gain


def paired_bootstrap(results: Results, task: str, languages: list[str], pairs: list) -> float | None:
    """Standard deviation of the group gain over resamples of the evaluation examples (``resampled_gain`` per
    language, averaged over the group). None when a cell lacks per-example outcomes somewhere."""
    vectors = [resampled_gain(results, task, lang, pairs) for lang in languages]
    if any(v is None for v in vectors):
        return None
    return float(np.std(np.mean(vectors, axis=0), ddof=1))


def resampled_gain(results: Results, task: str, language: str, pairs: list) -> np.ndarray | None:
    """The language's gain (mean over the pairs) in each of ``RESAMPLES`` resamples of its evaluation
    examples drawn with replacement, the same draw for both cells of every pair. The draws depend only on
    the language and the example count, so every group reuses them. None when a cell lacks per-example
    outcomes or the two cells' example counts differ."""
    key = (task, language, tuple((w.name, b.name) for w, b in pairs))
    if key not in results.resampled:
        diffs = []
        for w, b in pairs:
            ew, eb = results.examples(task, w.name, language), results.examples(task, b.name, language)
            if ew is None or eb is None or ew.shape != eb.shape:
                results.resampled[key] = None
                return None
            diffs.append(ew - eb)
        d = np.mean(diffs, axis=0)  # the gain is linear in the examples: average the pairs first
        rng = np.random.default_rng([BOOTSTRAP_SEED, *language.encode()])
        means = np.empty(RESAMPLES)
        for start in range(0, RESAMPLES, 100):  # 100 resamples at a time bounds the index array's memory
            idx = rng.integers(0, d.size, size=(min(100, RESAMPLES - start), d.size), dtype=np.int32)
            means[start:start + len(idx)] = d[idx].mean(axis=1)
        results.resampled[key] = means
    return results.resampled[key]


@dataclass
class Scaling:
    """One row of question (2): a task, an objective and a row key, over the row's train seeds."""

    task: str
    objective: str
    row: RowKey
    cells: list[Cell]
    scores: list[float]
    gaps: list[float]

    @property
    def parameters(self) -> int:
        return self.cells[0].parameters

    def mean_cost(self, attribute: str) -> float | None:
        costs = [getattr(c.cost, attribute) for c in self.cells if c.cost is not None]
        return statistics.fmean(costs) if costs else None

    @staticmethod
    def text(values: list[float], missing: str = "missing") -> str:
        if not values:
            return missing
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def scaling(results: Results) -> list[Scaling]:
    out = []
    objectives = sorted({c.objective for c in results.cells.values()}, key=lambda o: (o != "weam", o))
    for task in results.tasks:
        everything = results.evaluated(task)
        for objective in objectives:
            for key in results.rows():
                cells = list(results.cells_of(key, objective).values())
                if not cells:
                    continue
                scores = [results.group_score(task, c.name, everything) for c in cells]
                gaps = [results.transfer_gap(task, c.name) for c in cells]
                out.append(Scaling(task, objective, key, cells, [s for s in scores if s is not None],
                                   [g for g in gaps if g is not None]))
    return out


def short_count(n: float) -> str:
    """``16130000`` as ``16.1M``."""
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"

