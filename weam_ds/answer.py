"""The report's opening section, "Answer": the study's two questions answered in plain sentences, per model size,
from the same statistics as the evidence below it (``weam_ds.study_results``).

(1) Does WEAM's gain over MLM (and TLM) grow with the number of pre-training languages? Per task and baseline, the
gain g(N) on all evaluated languages (one set for every cell, so gains at different language counts compare) at
each language count N, and its change Δ = g(N_max) − g(N_min) from the smallest subset to the largest, with an
interval that counts both noise sources:

- with ``MIN_SEEDS_FOR_STD`` or more train seeds at both ends, Δ ± 2·sqrt(s_min²/n_min + s_max²/n_max), s the
  standard deviation of the per-seed gains and n their number (each seed's gain carries its examples' noise);
- otherwise the central ``CONFIDENCE`` percentile interval of a bootstrap over train seeds and evaluation
  examples together: each of ``RESAMPLES`` resamples redraws, with replacement, each end's train seeds and each
  language's evaluation examples (the same draw of examples for every cell: all are scored on one set).

The verdict: *grows* when the interval lies above 0, *shrinks* when below, *cannot tell* when it includes 0.

(2) How does zero-shot transfer trade off against size and compute? A cell's score is the mean over tasks of its
headline score on all evaluated languages (as XTREME-R's average; only cells scored on every task), its transfer
gap the mean over the tasks that score English of English minus the other languages. Per size and objective at
the size's largest language subset: their means over train seeds. Over all cells with a cost: the Pareto front
of score against training FLOPs, the cells that no other cell matches in score at no more FLOPs.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from weam_ds.study_results import (BOOTSTRAP_SEED, MIN_SEEDS_FOR_STD, RESAMPLES, Gain, Results, RowKey,
                                   headline_metric, resampled_gain, short_count)

CONFIDENCE = 0.95
VERDICTS = ("grows", "shrinks", "cannot tell")


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
    """Per size (model and any further axes), a trend per task and baseline."""
    series = defaultdict(list)
    for g in all_gains:
        if g.group == "all":
            series[_size(g.row), g.task, g.baseline].append(g)
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


def _size(key: RowKey) -> tuple:
    return key.model, key.extra


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


def answer(results: Results, all_gains: list[Gain]) -> list[tuple]:
    """The section's blocks: its heading, the method, a paragraph per size (smallest first), the Pareto front."""
    by_size = trends(results, all_gains)
    sizes = sorted({_size(key): results.row_cell(key).parameters for key in results.rows()}.items(),
                   key=lambda item: (item[1], item[0]))
    blocks = [("h2", "Answer"), ("p", _METHOD)]
    for size, parameters in sizes:
        model, extra = size
        name = f"{model} ({short_count(parameters)} parameters" + "".join(f", {k}={v}" for k, v in extra) + ")"
        sentences = [_trend_sentence(t) for t in sorted(by_size.get(size, []), key=lambda t: (t.task, t.baseline))]
        if not sentences:
            sentences = ["No pair of WEAM and MLM or TLM cells with scores, so no gain."]
        blocks.append(("p", " ".join([f"{name}.", *sentences, _transfer_sentence(results, size)])))
    blocks.append(("p", _front_sentence(results)))
    return blocks


_METHOD = (
    "Method: a gain is WEAM's score minus the baseline's on all evaluated languages, averaged over train seeds; "
    f"the interval of its change from the fewest pre-training languages to the most is the change ± twice its "
    f"standard error from the spread over train seeds where both ends have {MIN_SEEDS_FOR_STD} or more seeds, "
    f"else the central {CONFIDENCE:.0%} of a bootstrap ({RESAMPLES:,} resamples) that redraws train seeds and "
    "evaluation examples together; the verdict is grows or shrinks when that interval excludes 0, cannot tell "
    "when it includes 0. A score is the mean over tasks of each task's headline metric on all evaluated "
    "languages, the transfer gap English minus the other languages averaged over the tasks that score English, "
    "both averaged over train seeds at each size's largest language subset.")


def _languages(n: int) -> str:
    return f"{n} language{'' if n == 1 else 's'}"


def _trend_sentence(t: Trend) -> str:
    values = [f"{'missing' if g.value is None else f'{g.value:+.2f}'} with {_languages(n)}" for n, g in t.points]
    said = (f"On {t.task} ({headline_metric(t.task)}), WEAM's gain over {t.baseline.upper()} is "
            + (f"{', '.join(values[:-1])} and {values[-1]}" if len(values) > 1 else values[0]))
    if len(t.points) == 1:
        return f"{said}, the only language count at this size: cannot tell."
    span = f"from {t.points[0][0]} to {_languages(t.points[-1][0])}"
    if t.change is None:
        return f"{said}; the change {span} is missing: cannot tell."
    if t.interval is None:
        return (f"{said}; {span} it changes by {t.change:+.2f}, without an interval (fewer than {MIN_SEEDS_FOR_STD} "
                "train seeds and no per-example outcomes): cannot tell.")
    low, high = t.interval
    return f"{said}; {span} it changes by {t.change:+.2f} (interval {low:+.2f} to {high:+.2f}): {t.verdict}."


def _transfer_sentence(results: Results, size: tuple) -> str:
    """Score and transfer gap per objective at the size's largest language subset."""
    keys = [key for key in results.rows() if _size(key) == size]
    largest = max(keys, key=lambda key: results.row_cell(key).n_languages)
    measured = any("en" in results.evaluated(task) for task in results.tasks)
    parts = []
    for objective in sorted({c.objective for c in results.cells.values()}, key=lambda o: (o != "weam", o)):
        cells = results.cells_of(largest, objective).values()
        if not cells:
            continue
        scores = [s for s in (cell_score(results, c.name) for c in cells) if s is not None]
        gaps = [g for g in (cell_gap(results, c.name) for c in cells) if g is not None]
        score = f"{statistics.fmean(scores):.2f}" if scores else "missing"
        gap = f" (transfer gap {statistics.fmean(gaps):.2f})" if gaps else " (transfer gap missing)" if measured else ""
        parts.append(f"{objective.upper()} {score}{gap}")
    where = f"With {_languages(results.row_cell(largest).n_languages)} ({largest.subset})"
    tail = "" if measured else "; the transfer gap is not measured (no task scores English)"
    return f"{where}, the mean score over tasks is {', '.join(parts)}{tail}."


def _front_sentence(results: Results) -> str:
    front = pareto_front(results)
    if not front:
        return "Pareto front of score against training FLOPs: no cell has both a score on every task and a cost yet."
    cells = "; ".join(f"{name} (score {score:.2f} at {flops:.3g} FLOPs)" for name, score, flops in front)
    return ("On the Pareto front of score against training FLOPs (no other cell scores at least as high with no "
            f"more FLOPs): {cells}.")
