"""The report's document: its blocks in order (``build``: the Answer, the summary, the method, the tables of
questions (1) and (2) with their plots, the best cell, the missing results), the tables and the summary paragraph
made from the statistics, and the two renderings of the blocks, Markdown and self-contained HTML.

A block is a tuple: ``("h1" | "h2" | "p", text)``, ``("table", header, rows)`` or ``("img", file, caption)``."""
from __future__ import annotations

import base64
import html
import statistics
from collections import defaultdict
from pathlib import Path

from weam_ds.registry import Registry
from weam_ds.report.answer import answer
from weam_ds.report.method import SCALING_METHOD, how_the_numbers_are_made
from weam_ds.report.plots import plot_gains, plot_heatmap, plot_series
from weam_ds.report.results import (GROUPS, Results, RowKey, headline_metric, language_count, short_count,
                                    write_csv, write_hparams)
from weam_ds.report.stats import Gain, Scaling, best_cell, gains, scaling


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
        ("h2", "How the numbers are made"), *how_the_numbers_are_made(results),
        *_gains_section(results, all_gains, out),
        *_scaling_section(results, rows, out),
        *_best_cell_section(results, out),
        *_missing_section(results, missing),
    ]
    (out / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, out, title), encoding="utf-8")
    write_csv(results, out / "results.csv")
    write_hparams(results, out / "tensorboard")
    return blocks


def _gains_section(results: Results, all_gains: list[Gain], out: Path) -> list[tuple]:
    """Question (1): the gains' table and plot."""
    blocks = [("h2", "(1) WEAM against MLM and TLM")]
    if all_gains:
        blocks.append(("table", *gain_table(results, all_gains)))
    else:
        blocks.append(("p", "No pair of WEAM and MLM or TLM cells with scores yet."))
    if plot_gains(results, all_gains, out / "gain_vs_languages.png"):
        blocks.append(("img", "gain_vs_languages.png", "WEAM's gain against the number of pre-training languages, "
                                                       "one line per size; error bars: the spread"))
    return blocks


def _scaling_section(results: Results, rows: list[Scaling], out: Path) -> list[tuple]:
    """Question (2): the scaling table and its three plots (or why each is absent)."""
    blocks = [("h2", "(2) Score against parameters and training compute"), ("p", SCALING_METHOD),
              ("table", *scaling_table(results, rows)) if rows else ("p", "No scores yet.")]
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
    return blocks


def _best_cell_section(results: Results, out: Path) -> list[tuple]:
    best = best_cell(results)
    if best is None:
        return [("h2", "Zero-shot scores of the best cell"),
                ("p", "No cell has a complete set of scores for any task yet.")]
    plot_heatmap(results, best, out / "heatmap_best_cell.png")
    return [("h2", "Zero-shot scores of the best cell"),
            ("p", f"{best}: the cell with complete scores on the most tasks, and among those the highest mean score "
                  "over them."),
            ("img", "heatmap_best_cell.png", f"Zero-shot scores of {best} per task and language")]


def _missing_section(results: Results, missing: dict[str, list[str]]) -> list[tuple]:
    if not missing:
        return [("h2", "Missing results"),
                ("p", "None: every cell has a score for every evaluated language of every task.")]
    return [("h2", "Missing results"),
            ("table", ["Cell", "State", "Lacks", "Error"],
             [[name, results.cells[name].state, ", ".join(lacks), results.cells[name].error or ""]
              for name, lacks in sorted(missing.items())])]


def _where(results: Results, key: RowKey) -> str:
    """``tiny with 5 languages`` (and any further axes)."""
    extra = f" ({key.extra_text})" if key.extra else ""
    return f"{key.model} with {language_count(results.row_cell(key).n_languages)}{extra}"


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
