"""The statistics the report's sections share, over ``Results``.

Question (1), a gain: per task, baseline (MLM, TLM), row and language group G, with the WEAM and baseline cells
paired by train seed s = 1..n,

    d_s = score_G(WEAM_s) − score_G(baseline_s),      g = mean_s d_s,

and its spread: the sample standard deviation of d_s when n ≥ ``MIN_SEEDS_FOR_STD``, else the standard deviation
of g over ``RESAMPLES`` paired bootstrap resamples of each language's evaluation examples (``resampled_gain``:
one draw per language, the same for both cells, from ``BOOTSTRAP_SEED``). Within noise: |g| ≤ 2·spread.

The trend of a gain with the number of pre-training languages N (the Answer): on all evaluated languages,
Δ = g(N_max) − g(N_min), with the interval

    Δ ± 2·sqrt(s_min²/n_min + s_max²/n_max)     with ``MIN_SEEDS_FOR_STD`` or more train seeds at both ends,

else the central ``CONFIDENCE`` percentile interval of Δ over ``RESAMPLES`` resamples that redraw each end's
train seeds and each language's evaluation examples together. Verdict: grows when the interval lies above 0,
shrinks when below, cannot tell when it includes 0.

Question (2): per task, objective and row, the score on all evaluated languages and the transfer gap per train
seed (``scaling``); per cell, their means over tasks (``cell_score``, ``cell_gap``) and the Pareto front of score
against training FLOPs.

The report says all this to its reader in one place, ``weam_ds.report.method``."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from weam_ds.objectives import OBJECTIVES
from weam_ds.registry_rows import Cell
from weam_ds.report.results import GROUPS, Results, RowKey

MIN_SEEDS_FOR_STD = 3
RESAMPLES = 1000
BOOTSTRAP_SEED = 1234
"""Fixed, so that the same registry always gives the same report."""
CONFIDENCE = 0.95
BASELINES = tuple(name for name in OBJECTIVES if name != "weam")
"""What WEAM's gains are measured against: every other objective."""
SPREADS = {"std": "std over train seeds", "bootstrap": f"paired bootstrap over examples ({RESAMPLES:,} resamples)",
           "none": "none (no per-example outcomes)"}


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
    objectives = results.objectives
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
class Trend:
    """WEAM's gain over one baseline on one task at one size, from its smallest language subset to its largest."""

    task: str
    baseline: str
    points: list[tuple[int, Gain]]
    """(number of pre-training languages, gain on all evaluated languages), by number."""
    change: float | None = None
    interval: tuple[float, float] | None = None

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return "cannot tell"
        low, high = self.interval
        return "grows" if low > 0 else "shrinks" if high < 0 else "cannot tell"


def trends(results: Results, all_gains: list[Gain]) -> dict[tuple, list[Trend]]:
    """Per size (``RowKey.size``), a trend per task and baseline."""
    series = defaultdict(list)
    for g in all_gains:
        if g.group == "all":
            series[g.row.size, g.task, g.baseline].append(g)
    out = defaultdict(list)
    for (size, task, baseline), items in series.items():
        points = sorted(((results.row_cell(g.row).n_languages, g) for g in items), key=lambda p: p[0])
        trend = Trend(task, baseline, points)
        (_, first), (_, last) = points[0], points[-1]
        if len(points) > 1 and first.value is not None and last.value is not None:
            trend.change = last.value - first.value
            trend.interval = _interval(results, task, first, last, trend.change)
        out[size].append(trend)
    return out


def _interval(results: Results, task: str, first: Gain, last: Gain, change: float) -> tuple[float, float] | None:
    """From the seed spread where both ends have enough seeds for one, else from the bootstrap."""
    if first.kind == last.kind == "std":
        half = 2 * math.sqrt(first.spread ** 2 / first.seeds + last.spread ** 2 / last.seeds)
        return change - half, change + half
    return _bootstrap_interval(results, task, first, last)


def _bootstrap_interval(results: Results, task: str, first: Gain, last: Gain) -> tuple[float, float] | None:
    """The change's percentile interval over resamples of both ends' train seeds and evaluation examples; None
    where a cell lacks per-example outcomes."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ends = [_resampled_over_seeds(results, task, g, rng) for g in (first, last)]
    if ends[0] is None or ends[1] is None:
        return None
    low, high = np.quantile(ends[1] - ends[0], [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def _resampled_over_seeds(results: Results, task: str, gain: Gain, rng: np.random.Generator) -> np.ndarray | None:
    """The gain in each resample: each pair's gain on the resampled examples (``resampled_gain``, whose draw
    depends only on the language, so both ends see the same examples), averaged over a draw of the pairs (train
    seeds) with replacement."""
    per_pair = []
    for pair in gain.pairs:
        vectors = [resampled_gain(results, task, lang, [pair]) for lang in results.evaluated(task)]
        if any(v is None for v in vectors):
            return None
        per_pair.append(np.mean(vectors, axis=0))
    seeds = rng.integers(0, len(per_pair), size=(RESAMPLES, len(per_pair)))
    return np.asarray(per_pair)[seeds, np.arange(RESAMPLES)[:, None]].mean(axis=1)


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
    for task in results.tasks:
        everything = results.evaluated(task)
        for objective in results.objectives:
            for key in results.rows():
                cells = list(results.cells_of(key, objective).values())
                if not cells:
                    continue
                scores = [results.group_score(task, c.name, everything) for c in cells]
                gaps = [results.transfer_gap(task, c.name) for c in cells]
                out.append(Scaling(task, objective, key, cells, [s for s in scores if s is not None],
                                   [g for g in gaps if g is not None]))
    return out


def cell_score(results: Results, cell: str) -> float | None:
    """The mean over tasks of the cell's score on all evaluated languages; None unless it has every task."""
    scores = [results.group_score(task, cell, results.evaluated(task)) for task in results.tasks]
    return None if not scores or None in scores else statistics.fmean(scores)


def cell_gap(results: Results, cell: str) -> float | None:
    """The mean over the tasks that score English of the cell's transfer gap; None where one is missing."""
    gaps = [results.transfer_gap(task, cell) for task in results.tasks if "en" in results.evaluated(task)]
    return None if not gaps or None in gaps else statistics.fmean(gaps)


def pareto_front(results: Results) -> list[tuple[str, float, float]]:
    """(cell, score, training FLOPs) of the cells with a score and a cost that no other such cell matches in
    score at no more FLOPs (without being the same point), by FLOPs."""
    points = [(name, cell_score(results, name), c.cost.train_flops) for name, c in results.cells.items()
              if c.cost is not None]
    points = [p for p in points if p[1] is not None]
    return sorted((p for p in points if not any(q[1] >= p[1] and q[2] <= p[2] and (q[1], q[2]) != (p[1], p[2])
                                                for q in points)), key=lambda p: p[2])


def best_cell(results: Results) -> str | None:
    """The cell with complete scores on the most tasks, and among those the highest mean score over them."""
    ranked = []
    for name in results.cells:
        scores = [results.group_score(task, name, results.evaluated(task)) for task in results.tasks]
        scores = [s for s in scores if s is not None]
        if scores:
            ranked.append((len(scores), statistics.fmean(scores), name))
    return max(ranked)[2] if ranked else None
