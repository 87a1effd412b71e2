"""``python -m weam_ds.report --study STUDY_DIR --out REPORT_DIR``: the scaling study's report, built from the
study's registry alone (``weam_ds.registry``).

It answers two questions, one table each: (1) what WEAM gains over MLM and over TLM, per model size and number
of pre-training languages, on three language groups; (2) how scores grow with parameters and with training
compute per objective, with the transfer gap. Its statistics live in ``weam_ds.study_results``. It writes into
REPORT_DIR:

- ``report.md`` and ``report.html`` (the same content, the plots embedded as data URIs: one self-contained
  file): first the Answer to both questions per size in plain sentences, with a verdict on whether the gain
  grows with the number of languages (``weam_ds.answer``), then the evidence: a summary paragraph generated
  from the tables' numbers, the tables and plots;
- PNG plots: ``gain_vs_languages.png``, ``score_vs_parameters.png``, ``score_vs_flops.png``,
  ``heatmap_best_cell.png``, ``transfer_gap_vs_size.png``;
- ``results.csv``: one row per cell × task × language × evaluation seed, over every combination some cell has,
  the score left empty where that cell has none;
- ``tensorboard/<cell>/``: one hparams entry per cell (its axes; its scores, transfer gaps and cost as metrics),
  for ``tensorboard --logdir REPORT_DIR/tensorboard``.

REPORT_DIR must be new or empty, or an earlier report, replaced only with ``--force``: the report is built beside
it and moved in whole (data_prep.output_dirs), so a rerun never removes what it did not write.

How the numbers are made:

- Each task is scored by its headline metric (``headline_metric``), per cell and language the mean over its
  evaluation (fine-tuning) seeds; a group of languages scores the mean over them, and only when the cell has a
  score for every one of them.
- Language groups, per task: *seen by every cell*: the evaluated languages that every cell's pre-training
  pairs cover, English left out (it is the fine-tuning language); *all evaluated*: every language some cell has
  a score for; *unseen by the cell*: the evaluated languages none of the cell's pairs cover.
- A gain pairs the WEAM cell with the MLM (or TLM) cell that agrees with it on every other axis (size, language
  subset, train seed, any further axis), one pair per train seed. Shown: the mean over train seeds ± the sample
  standard deviation over them when there are at least ``MIN_SEEDS_FOR_STD``; with fewer, ± the standard
  deviation of a paired bootstrap over the evaluation examples (``RESAMPLES`` resamples of each language's
  examples, the same resample for both cells, a fixed RNG seed), from the registry's per-example outcomes.
  "within noise": the gain's magnitude does not exceed twice its spread.
- A cell without results is "missing", never 0; the report lists the cells that lack results.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_prep.output_dirs import OutputDirError, replacing
from weam_ds.answer import answer
from weam_ds.registry import REGISTRY_FILE, Registry, RegistryError
from weam_ds.study_results import (GROUPS, MIN_SEEDS_FOR_STD, RESAMPLES, Gain, Results, RowKey, Scaling, gains,
                                   headline_metric, scaling, short_count)

PLOTS = ("gain_vs_languages.png", "score_vs_parameters.png", "score_vs_flops.png", "heatmap_best_cell.png",
         "transfer_gap_vs_size.png")


def _where(results: Results, key: RowKey) -> str:
    """``tiny with 5 languages`` (and any further axes)."""
    n = results.row_cell(key).n_languages
    extra = f" ({key.extra_text})" if key.extra else ""
    return f"{key.model} with {n} language{'' if n == 1 else 's'}{extra}"


def _row_columns(results: Results, key: RowKey, extra: bool) -> list[str]:
    cell = results.row_cell(key)
    return [key.model, short_count(cell.parameters), key.subset, str(cell.n_languages),
            *([key.extra_text] if extra else [])]


def gain_table(results: Results, all_gains: list[Gain]) -> tuple[list[str], list[list[str]]]:
    extra = any(key.extra for key in results.rows())
    header = ["Task", "Size", "Parameters", "Subset", "Languages", *(["Other axes"] if extra else []), "Gain",
              "Seeds", "Spread", *(group.capitalize() for group in GROUPS.values())]
    by_row = defaultdict(dict)
    for g in all_gains:
        by_row[(g.task, g.baseline, g.row)][g.group] = g
    rows = []
    for (task, baseline, key), groups in by_row.items():
        shown = [g for g in groups.values() if g.value is not None]
        rows.append([task, *_row_columns(results, key, extra), f"WEAM − {baseline.upper()}",
                     " / ".join(str(n) for n in sorted({g.seeds for g in shown})) or "0",
                     " / ".join(sorted({g.spread_name() for g in shown})) or "—",
                     *(groups[group].text() for group in GROUPS)])
    return header, rows


def scaling_table(results: Results, rows: list[Scaling]) -> tuple[list[str], list[list[str]]]:
    extra = any(key.extra for key in results.rows())
    header = ["Task", "Objective", "Size", "Parameters", "Subset", "Languages", *(["Other axes"] if extra else []),
              "Seeds scored", "Train FLOPs", "GPU-hours", "Score", "Transfer gap"]
    body = []
    for r in rows:
        flops, hours = r.mean_cost("train_flops"), r.mean_cost("gpu_hours")
        no_gap = "missing" if "en" in results.evaluated(r.task) else "— (English not evaluated)"
        body.append([r.task, r.objective.upper(), *_row_columns(results, r.row, extra),
                     f"{len(r.scores)} of {len(r.cells)}", "missing" if flops is None else f"{flops:.3g}",
                     "missing" if hours is None else f"{hours:.3g}", Scaling.text(r.scores),
                     Scaling.text(r.gaps, no_gap)])
    return header, body


def summary(results: Results, all_gains: list[Gain], rows: list[Scaling]) -> str:
    """A paragraph that states what the tables show, in their terms, and nothing else."""
    sentences = []
    missing = results.missing()
    if missing:
        sentences.append(f"{len(missing)} of {len(results.cells)} cells lack results "
                         f"({'; '.join(sorted(missing))}); every number that needs them is shown as missing.")
    by = defaultdict(dict)
    for g in all_gains:
        by[(g.task, g.baseline)].setdefault(g.row, {})[g.group] = g
    for (task, baseline), by_row in by.items():
        parts = []
        for key, groups in by_row.items():
            shown = [g for g in groups.values() if g.value is not None]
            if shown:  # the missing ones are named above
                hows = " / ".join(dict.fromkeys(g.how() for g in shown))
                parts.append(f"{', '.join(groups[group].text() for group in GROUPS)} at {_where(results, key)} "
                             f"({hows})")
        if parts:
            sentences.append(f"On {task} ({headline_metric(task)}), WEAM's gain over {baseline.upper()} on "
                             f"{', '.join(list(GROUPS.values())[:-1])} and {list(GROUPS.values())[-1]} is "
                             f"{'; '.join(parts)}.")
    spread = [g for g in all_gains if g.value is not None and g.spread is not None]
    if spread:
        beyond = [g for g in spread if not g.within_noise]
        sentences.append(f"{len(beyond)} of the {len(spread)} gains with a spread exceed twice it "
                         f"({sum(g.value > 0 for g in beyond)} positive, {sum(g.value < 0 for g in beyond)} negative).")
    series = defaultdict(list)
    for r in rows:
        if r.scores:
            series[(r.task, r.objective, r.row.subset, r.row.extra)].append(r)
    for (task, objective, subset, _), items in series.items():
        if len(items) < 2:
            continue
        items.sort(key=lambda r: r.parameters)
        scores = ", ".join(f"{statistics.fmean(r.scores):.2f} at {r.row.model}" for r in items)
        gaps = ", ".join(f"{statistics.fmean(r.gaps):.2f} at {r.row.model}" for r in items if r.gaps)
        extra = f" ({items[0].row.extra_text})" if items[0].row.extra else ""
        sentences.append(f"{objective.upper()}'s {task} score on all evaluated languages with {subset}{extra} is "
                         f"{scores}" + (f", its transfer gap {gaps}" if gaps else "") + ".")
    return " ".join(sentences) or "No results yet."


# Plots: matplotlib's object API (no pyplot), so nothing depends on a display or on global figure state.

COLORS = {"weam": "tab:blue", "mlm": "tab:orange", "tlm": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def _figure(rows: int, cols: int):
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
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        color=COLORS.get(objective), linestyle=LINESTYLES[subsets.index(subset) % len(LINESTYLES)],
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


def best_cell(results: Results) -> str | None:
    """The cell with complete scores on the most tasks, and among those the highest mean score over them."""
    ranked = []
    for name in results.cells:
        scores = [results.group_score(task, name, results.evaluated(task)) for task in results.tasks]
        scores = [s for s in scores if s is not None]
        if scores:
            ranked.append((len(scores), statistics.fmean(scores), name))
    return max(ranked)[2] if ranked else None


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


# The document: a list of blocks rendered twice, as Markdown and as self-contained HTML.

def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind == "h1":
            out.append(f"# {content[0]}")
        elif kind == "h2":
            out.append(f"## {content[0]}")
        elif kind == "p":
            out.append(content[0])
        elif kind == "table":
            header, rows = content
            out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                                 for row in [header, ["---"] * len(header), *rows]))
        else:  # image
            out.append(f"![{content[1]}]({content[0]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], images: Path, title: str) -> str:
    body = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        else:
            data = base64.b64encode((images / content[0]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(content[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(content[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left}th{background:#eee}img{max-width:100%}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build(registry: Registry, out: Path) -> list[tuple]:
    """Writes the report of ``registry`` into ``out``, a new directory; returns its blocks."""
    results = Results.read(registry)
    all_gains, rows = gains(results), scaling(results)
    study = registry.study()
    title = f"Scaling study report: {study.name or registry.path.parent.name}"
    missing = results.missing()
    blocks: list[tuple] = [
        ("h1", title), *answer(results, all_gains),
        ("h2", "Summary"),
        ("p", f"Read from {registry.path} (registry schema {study.schema_version}"
              + (f", study file sha256 {study.sha256[:12]}" if study.sha256 else "") + f"): {len(results.cells)} "
              f"cells, {len(results.cells) - len(missing)} with every result, {len(missing)} lacking some."),
        ("p", summary(results, all_gains, rows)),
        ("h2", "How the numbers are made"), *_method(results),
        ("h2", "(1) WEAM against MLM and TLM"),
    ]
    if all_gains:
        blocks.append(("table", *gain_table(results, all_gains)))
    else:
        blocks.append(("p", "No pair of WEAM and MLM or TLM cells with scores yet."))
    if plot_gains(results, all_gains, out / "gain_vs_languages.png"):
        blocks.append(("img", "gain_vs_languages.png", "WEAM's gain against the number of pre-training languages, "
                                                       "one line per size; error bars: the spread"))
    blocks += [("h2", "(2) Score against parameters and training compute"),
               ("p", "Score: the mean over all evaluated languages (mean ± std over train seeds where there are "
                     "several); transfer gap: English minus the mean of the other evaluated languages; train FLOPs "
                     "and GPU-hours: the mean over the row's cells that recorded a cost.")]
    blocks.append(("table", *scaling_table(results, rows)) if rows else ("p", "No scores yet."))
    for name, x, y, xlabel, ylabel, caption in (
            ("score_vs_parameters.png", lambda r: r.parameters, lambda r: r.scores, "parameters (backbone)",
             "score", "Score against parameters, one line per objective"),
            ("score_vs_flops.png", lambda r: r.mean_cost("train_flops"), lambda r: r.scores, "training FLOPs",
             "score", "Score against training compute, one line per objective"),
            ("transfer_gap_vs_size.png", lambda r: r.parameters, lambda r: r.gaps, "parameters (backbone)",
             "transfer gap", "Transfer gap (English minus the others) against size, one line per objective")):
        if plot_series(rows, out / name, x, y, xlabel, ylabel, size_ticks=xlabel.startswith("parameters")):
            blocks.append(("img", name, caption))
        else:
            blocks.append(("p", f"{caption}: nothing to plot yet."))
    best = best_cell(results)
    blocks.append(("h2", "Zero-shot scores of the best cell"))
    if best is None:
        blocks.append(("p", "No cell has a complete set of scores for any task yet."))
    else:
        plot_heatmap(results, best, out / "heatmap_best_cell.png")
        blocks += [("p", f"{best}: the cell with complete scores on the most tasks, and among those the highest "
                         "mean score over them."),
                   ("img", "heatmap_best_cell.png", f"Zero-shot scores of {best} per task and language")]
    blocks.append(("h2", "Missing results"))
    if missing:
        blocks.append(("table", ["Cell", "State", "Lacks", "Error"],
                       [[name, results.cells[name].state, ", ".join(lacks), results.cells[name].error or ""]
                        for name, lacks in sorted(missing.items())]))
    else:
        blocks.append(("p", "None: every cell has a score for every evaluated language of every task."))
    (out / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, out, title), encoding="utf-8")
    write_csv(results, out / "results.csv")
    write_hparams(results, out / "tensorboard")
    return blocks


def _method(results: Results) -> list[tuple]:
    lines = []
    for task in results.tasks:
        splits = sorted({split for (t, *_), split in results.splits.items() if t == task})
        some = next(iter(results.cells.values()))
        seen = results.languages(task, "seen", some)
        lines.append(f"{task}: {headline_metric(task)} on the {' and '.join(splits)} split"
                     f"{'s' if len(splits) > 1 else ''}; languages every cell saw: {', '.join(seen) or 'none'}; "
                     f"all evaluated: {', '.join(results.evaluated(task))}.")
    return [
        ("p", " ".join(["Each task is scored by its headline metric, per cell and language the mean over evaluation "
                        "(fine-tuning) seeds; a group of languages scores the mean over them, only where the cell has "
                        "every one.", *lines])),
        ("p", "Languages every cell saw: evaluated languages that the pre-training pairs of every cell cover, "
              "English left out (it is the fine-tuning language). Languages the cell did not see: evaluated "
              "languages none of its pairs cover."),
        ("p", "A gain pairs the WEAM cell with the MLM (or TLM) cell that agrees with it on every other axis, per "
              f"train seed, and shows the mean over train seeds ± the sample standard deviation over them with "
              f"{MIN_SEEDS_FOR_STD} or more seeds; with fewer, ± the standard deviation of a paired bootstrap over "
              f"the evaluation examples ({RESAMPLES:,} resamples of each language's examples, the same for both "
              "cells, fixed RNG seed). The Spread column says which. \"within noise\": the gain's magnitude does not "
              "exceed twice its spread. \"missing\": no pair has results for every language of the group (never "
              "0); \"—\": the group has no language."),
    ]


def _section(blocks: list[tuple], heading: str) -> str:
    """The paragraphs under the ``h2`` ``heading``, one a line."""
    start = blocks.index(("h2", heading)) + 1
    end = next(i for i, block in enumerate(blocks) if i >= start and block[0] == "h2")
    return "\n".join(text for _, text in blocks[start:end])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weam_ds.report",
                                     description="The scaling study's report, from its registry.sqlite alone.")
    parser.add_argument("--study", type=Path, required=True, help="the study directory (holds registry.sqlite)")
    parser.add_argument("--out", type=Path, required=True, help="where the report goes: a new or empty directory")
    parser.add_argument("--force", action="store_true", help="replace --out when it holds an earlier report")
    args = parser.parse_args(argv)
    try:
        with Registry(args.study / REGISTRY_FILE, readonly=True) as registry:
            if not registry.cells():
                raise RegistryError(f"{registry.path}: no cells registered yet")
            # Built beside --out and moved in whole: a rerun leaves no plot or hparams entry of the last one.
            with replacing(args.out, "weam_ds.report", args.force) as tmp:
                blocks = build(registry, tmp)
    except (RegistryError, OutputDirError) as exc:
        print(f"weam_ds.report: error: {exc}", file=sys.stderr)
        return 2
    for heading in ("Answer", "Summary"):
        print(f"{heading}:\n{_section(blocks, heading)}")
    print(f"report: {args.out / 'report.html'} (and report.md, results.csv, the plots); TensorBoard hparams: "
          f"tensorboard --logdir {args.out / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
