"""The report's opening section, "Answer": the study's two questions answered in plain sentences, per model size,
from the same statistics as the evidence below it (``weam_ds.report.stats``: the trends, their intervals and
verdicts, the cells' scores and the Pareto front). Its method paragraph is ``weam_ds.report.method``'s.

(1) Does WEAM's gain over MLM (and TLM) grow with the number of pre-training languages? Per task and baseline,
the gain on all evaluated languages at each language count, its change from the smallest subset to the largest
with its interval, and the verdict.

(2) How does zero-shot transfer trade off against size and compute? Per objective at the size's largest language
subset, the mean score over tasks and the transfer gap; over all cells with a cost, the Pareto front of score
against training FLOPs.
"""
from __future__ import annotations

import statistics

from weam_ds.report.method import ANSWER_METHOD
from weam_ds.report.results import Results, headline_metric, language_count, short_count
from weam_ds.report.stats import MIN_SEEDS_FOR_STD, Gain, Trend, cell_gap, cell_score, pareto_front, trends


def answer(results: Results, all_gains: list[Gain]) -> list[tuple]:
    """The section's blocks: its heading, the method, a paragraph per size (smallest first), the Pareto front."""
    by_size = trends(results, all_gains)
    sizes = sorted({key.size: results.row_cell(key).parameters for key in results.rows()}.items(),
                   key=lambda item: (item[1], item[0]))
    blocks = [("h2", "Answer"), ("p", ANSWER_METHOD)]
    for size, parameters in sizes:
        model, extra = size
        name = f"{model} ({short_count(parameters)} parameters" + "".join(f", {k}={v}" for k, v in extra) + ")"
        sentences = [_trend_sentence(t) for t in sorted(by_size.get(size, []), key=lambda t: (t.task, t.baseline))]
        if not sentences:
            sentences = ["No pair of WEAM and MLM or TLM cells with scores, so no gain."]
        blocks.append(("p", " ".join([f"{name}.", *sentences, _transfer_sentence(results, size)])))
    blocks.append(("p", _front_sentence(results)))
    return blocks


def _trend_sentence(t: Trend) -> str:
    values = [f"{'missing' if g.value is None else f'{g.value:+.2f}'} with {language_count(n)}" for n, g in t.points]
    said = (f"On {t.task} ({headline_metric(t.task)}), WEAM's gain over {t.baseline.upper()} is "
            + (f"{', '.join(values[:-1])} and {values[-1]}" if len(values) > 1 else values[0]))
    if len(t.points) == 1:
        return f"{said}, the only language count at this size: cannot tell."
    span = f"from {t.points[0][0]} to {language_count(t.points[-1][0])}"
    if t.change is None:
        return f"{said}; the change {span} is missing: cannot tell."
    if t.interval is None:
        return (f"{said}; {span} it changes by {t.change:+.2f}, without an interval (fewer than {MIN_SEEDS_FOR_STD} "
                "train seeds and no per-example outcomes): cannot tell.")
    low, high = t.interval
    return f"{said}; {span} it changes by {t.change:+.2f} (interval {low:+.2f} to {high:+.2f}): {t.verdict}."


def _transfer_sentence(results: Results, size: tuple) -> str:
    """Score and transfer gap per objective at the size's largest language subset."""
    keys = [key for key in results.rows() if key.size == size]
    largest = max(keys, key=lambda key: results.row_cell(key).n_languages)
    measured = any("en" in results.evaluated(task) for task in results.tasks)
    parts = []
    for objective in results.objectives:
        cells = results.cells_of(largest, objective).values()
        if not cells:
            continue
        scores = [s for s in (cell_score(results, c.name) for c in cells) if s is not None]
        gaps = [g for g in (cell_gap(results, c.name) for c in cells) if g is not None]
        score = f"{statistics.fmean(scores):.2f}" if scores else "missing"
        gap = f" (transfer gap {statistics.fmean(gaps):.2f})" if gaps else " (transfer gap missing)" if measured else ""
        parts.append(f"{objective.upper()} {score}{gap}")
    where = f"With {language_count(results.row_cell(largest).n_languages)} ({largest.subset})"
    tail = "" if measured else "; the transfer gap is not measured (no task scores English)"
    return f"{where}, the mean score over tasks is {', '.join(parts)}{tail}."


def _front_sentence(results: Results) -> str:
    front = pareto_front(results)
    if not front:
        return "Pareto front of score against training FLOPs: no cell has both a score on every task and a cost yet."
    cells = "; ".join(f"{name} (score {score:.2f} at {flops:.3g} FLOPs)" for name, score, flops in front)
    return ("On the Pareto front of score against training FLOPs (no other cell scores at least as high with no "
            f"more FLOPs): {cells}.")
