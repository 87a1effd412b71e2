"""The report's plots, as PNG files: WEAM's gain against the number of pre-training languages, a score or the
transfer gap against parameters or training FLOPs, and the best cell's scores per task and language.

Drawn with matplotlib's object API (no pyplot), so nothing depends on a display or on global figure state."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from weam_ds.objectives import OBJECTIVES
from weam_ds.report.results import GROUPS, Results, headline_metric, short_count
from weam_ds.report.stats import Gain, Scaling

PLOTS = ("gain_vs_languages.png", "score_vs_parameters.png", "score_vs_flops.png", "heatmap_best_cell.png",
         "transfer_gap_vs_size.png")
LINESTYLES = ("-", "--", ":", "-.")


def _figure(rows: int, cols: int):
    # Imported here: matplotlib's import costs seconds, and ``launcher study status`` imports this package.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8 * cols, 3.6 * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_gains(results: Results, all_gains: list[Gain], path: Path) -> bool:
    """WEAM's gain against the number of pre-training languages: one line per size, error bars the spread;
    a row of panels per task and baseline, a column per language group."""
    drawn = [g for g in all_gains if g.value is not None]
    if not drawn:
        return False
    panels = sorted({(g.task, g.baseline) for g in drawn})
    fig, axes = _figure(len(panels), len(GROUPS))
    for i, (task, baseline) in enumerate(panels):
        for j, group in enumerate(GROUPS):
            ax = axes[i][j]
            lines = defaultdict(list)
            for g in drawn:
                if (g.task, g.baseline, g.group) == (task, baseline, group):
                    lines[(results.row_cell(g.row).parameters, g.row.model, g.row.extra)].append(g)
            for (_, model, extra), items in sorted(lines.items()):
                items.sort(key=lambda g: results.row_cell(g.row).n_languages)
                ax.errorbar([results.row_cell(g.row).n_languages for g in items], [g.value for g in items],
                            yerr=[np.nan if g.spread is None else g.spread for g in items], marker="o", capsize=3,
                            label=f"{model} {items[0].row.extra_text}".strip())
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xticks(sorted({results.row_cell(k).n_languages for k in results.rows()}))
            ax.set_title(f"{task}: WEAM − {baseline.upper()}, {GROUPS[group]}", fontsize=9)
            ax.set_xlabel("pre-training languages")
            ax.set_ylabel(f"gain ({headline_metric(task)}, points)")
            if lines:
                ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return True


def plot_series(rows: list[Scaling], path: Path, x, y, xlabel: str, ylabel: str, size_ticks: bool = False) -> bool:
    """A panel per task, one line per objective (and language subset), through the rows' mean ``y`` against
    ``x`` on a log axis, error bars the std over train seeds; ``size_ticks``: ``x`` is the parameter count,
    ticked with the sizes' names."""
    from matplotlib.ticker import NullFormatter

    points = defaultdict(list)
    for r in rows:
        xs, ys = x(r), y(r)
        if xs is not None and ys:
            points[r.task, r.objective, r.row.subset, r.row.extra_text].append(
                (xs, statistics.fmean(ys), statistics.stdev(ys) if len(ys) > 1 else np.nan))
    if not points:
        return False
    tasks = sorted({key[0] for key in points})
    subsets = sorted({key[2] for key in points})
    fig, axes = _figure(1, len(tasks))
    for ax, task in zip(axes[0], tasks):
        for (t, objective, subset, extra), pts in sorted(points.items()):
            if t != task:
                continue
            pts.sort()
            colour = OBJECTIVES[objective].colour if objective in OBJECTIVES else None  # else the colour cycle
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        color=colour, linestyle=LINESTYLES[subsets.index(subset) % len(LINESTYLES)],
                        label=", ".join(part for part in (objective.upper(), subset, extra) if part))
        ax.set_xscale("log")
        if size_ticks:
            sizes = sorted({(r.parameters, r.row.model) for r in rows})
            ax.set_xticks([n for n, _ in sizes], [f"{name}\n{short_count(n)}" for n, name in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{ylabel} ({headline_metric(task)})")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return True


def plot_heatmap(results: Results, cell: str, path: Path) -> None:
    """The cell's zero-shot score per task and language; blank where it has none; * marks languages it saw in
    pre-training."""
    tasks = [t for t in results.tasks if cell in results.scores[t]]
    languages = sorted({lang for t in tasks for lang in results.scores[t][cell]})
    grid = np.full((len(tasks), len(languages)), np.nan)
    for i, task in enumerate(tasks):
        for lang, value in results.language_scores(task, cell).items():
            grid[i, languages.index(lang)] = value
    fig, axes = _figure(1, 1)
    fig.set_size_inches(max(4.8, 0.6 * len(languages) + 2), max(2.5, 0.6 * len(tasks) + 1.5))
    ax = axes[0][0]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    seen = results.cells[cell].pretraining_languages
    ax.set_xticks(range(len(languages)), [f"{lang}*" if lang in seen else lang for lang in languages])
    ax.set_yticks(range(len(tasks)), [f"{t} ({headline_metric(t)})" for t in tasks])
    middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
    for i, j in zip(*np.nonzero(~np.isnan(grid))):  # dark text on viridis's light upper half
        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                color="black" if grid[i, j] > middle else "white")
    ax.set_title(f"{cell}\n(* seen in pre-training; blank: no score)", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=100)
