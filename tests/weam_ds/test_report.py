"""The study report, built from a registry filled through the registry's own write API: its tables carry the
registry's numbers (recomputed here independently), its plots are PNGs, its CSV has a row per cell × task ×
language × seed, every cell has a TensorBoard hparams entry, and missing results show as missing."""
from __future__ import annotations

import csv
import re
import sqlite3
import statistics

import numpy as np
import pytest
from matplotlib.image import imread
from PIL import Image

from weam_ds.registry import SCHEMA_VERSION, Registry
from weam_ds.report import main
from weam_ds.report.plots import PLOTS

PARAMETERS = {"tiny": 16_130_000, "mini": 67_290_000}
SUBSETS = {"langs_1": ["de-en"], "langs_3": ["de-en", "fr-en", "ru-en"]}
TASKS = {"xnli": ("dev", [1, 2], ["en", "de", "fr", "ru", "es"], 400),  # split, eval seeds, languages, examples
         "tatoeba": ("test", [1], ["de", "fr", "ru", "es", "ja"], 300)}
PENDING = "model=mini,languages=langs_3,objective=tlm,seed=1"
FAILED = "model=mini,languages=langs_3,objective=mlm,seed=1"
PARTIAL = "model=mini,languages=langs_1,objective=weam,seed=1"  # evaluated on XNLI without Russian


def _fill(path):
    """Cells: 2 sizes × 2 language subsets × WEAM/MLM, with 3 train seeds at tiny/langs_3 and 1 elsewhere; one
    TLM cell evaluated, one pending (no results), one MLM cell that failed (no results) and one WEAM cell with
    no XNLI score for Russian. Per-example outcomes
    are drawn from a seeded RNG: each example right (100) or wrong (0), more often right for WEAM on languages
    the cell saw and for the larger model."""
    rng = np.random.default_rng(7)
    grid = [(m, s, o, seed) for m in PARAMETERS for s in SUBSETS for o in ("weam", "mlm")
            for seed in ((1, 2, 3) if (m, s) == ("tiny", "langs_3") else (1,))]
    grid += [("tiny", "langs_1", "tlm", 1), ("mini", "langs_3", "tlm", 1)]
    with Registry(path) as reg:
        reg.set_study("test-study", "0" * 64)
        for model, subset, objective, seed in grid:
            axes = {"model": model, "languages": subset, "objective": objective, "seed": seed}
            cell = reg.put_cell(axes, {"model": model, "objective": {"name": objective}, "seed": seed},
                                parameters=PARAMETERS[model], pairs=SUBSETS[subset])
            if cell == PENDING:
                continue
            reg.set_state(cell, "running")
            if cell == FAILED:
                reg.set_state(cell, "failed", error="RuntimeError: CUDA out of memory")
                continue
            steps = 1000 if model == "tiny" else 2000
            reg.put_cost(cell, steps=steps, tokens=steps * 4096, train_flops=float(rng.uniform(1e15, 2e15)) * steps,
                         wall_seconds=float(rng.uniform(100, 200)), gpu_hours=float(rng.uniform(0.1, 1)),
                         world_size=8, hardware="8x NVIDIA H100")
            seed_shift = rng.normal(0, 0.02)
            saw = {side for pair in SUBSETS[subset] for side in pair.split("-")}
            for task, (split, eval_seeds, languages, n) in TASKS.items():
                for lang in languages:
                    if (cell, task, lang) == (PARTIAL, "xnli", "ru"):
                        continue
                    p = 0.5 + seed_shift + (0.05 if model == "mini" else 0) \
                        + (0.1 if objective == "weam" and lang in saw and task == "xnli" else 0.01)
                    for eval_seed in eval_seeds:
                        outcomes = 100.0 * (rng.random(n) < p)
                        reg.put_scores(cell, task, lang, eval_seed, split,
                                       {"accuracy": float(outcomes.mean()), "f1": float(rng.uniform(0, 100))},
                                       per_example={"accuracy": outcomes})
            reg.set_state(cell, "evaluated")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    study = tmp_path_factory.mktemp("study")
    _fill(study / "registry.sqlite")
    out = study / "report"
    assert main(["--study", str(study), "--out", str(out)]) == 0
    return study, out


def _tables(markdown: str) -> list[list[dict[str, str]]]:
    tables, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and (i == 0 or not lines[i - 1].startswith("|")):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split(" | ")))))
            tables.append(rows)
    return tables


def _expected(reg: Registry):
    """Independently of the report: per cell, task and language the mean accuracy over eval seeds."""
    values = {}
    for s in reg.scores():
        if s.metric == "accuracy":
            values.setdefault((s.cell, s.task, s.language), []).append(s.value)
    means = {key: statistics.fmean(v) for key, v in values.items()}
    cells = {c.name: c for c in reg.cells()}
    seen_by_all = set.intersection(*({side for p in c.pairs for side in p.split("-")} for c in cells.values()))
    return means, cells, seen_by_all


def _group(task, group, cell, seen_by_all):
    evaluated = TASKS[task][2]
    saw = {side for p in cell.pairs for side in p.split("-")}
    return {"seen": [x for x in evaluated if x in seen_by_all and x != "en"], "all": evaluated,
            "unseen": [x for x in evaluated if x not in saw]}[group]


def test_gain_table_equals_the_registry(report):
    study, out = report
    table = _tables((out / "report.md").read_text())[0]
    columns = {"seen": "Languages every cell saw", "all": "All evaluated languages",
               "unseen": "Languages the cell did not see"}
    with Registry(study / "registry.sqlite", readonly=True) as reg:
        means, cells, seen_by_all = _expected(reg)
        checked = {"std": 0, "bootstrap": 0, "missing": 0}
        for row in table:
            baseline = row["Gain"].split(" − ")[1].lower()
            for group, column in columns.items():
                diffs, pairs = [], []
                for seed in (1, 2, 3):
                    w = f"model={row['Size']},languages={row['Subset']},objective=weam,seed={seed}"
                    b = f"model={row['Size']},languages={row['Subset']},objective={baseline},seed={seed}"
                    if w not in cells or b not in cells:
                        continue
                    langs = _group(row["Task"], group, cells[w], seen_by_all)
                    if all((c, row["Task"], x) in means for c in (w, b) for x in langs):
                        diffs.append(statistics.fmean(means[w, row["Task"], x] for x in langs)
                                     - statistics.fmean(means[b, row["Task"], x] for x in langs))
                        pairs.append((w, b))
                text = row[column]
                if not diffs:
                    assert text == "missing"
                    checked["missing"] += 1
                    continue
                value = statistics.fmean(diffs)
                assert text.startswith(f"{value:+.2f} ± ")  # the registry's number, as the report rounds it
                number, spread = (float(x) for x in re.match(r"([+-]\d+\.\d\d) ± (\d+\.\d\d)", text).groups())
                assert row["Seeds"] == str(len(diffs))
                if len(diffs) >= 3:
                    assert text.startswith(f"{value:+.2f} ± {statistics.stdev(diffs):.2f}")
                    assert row["Spread"].startswith("std over train seeds")
                    checked["std"] += 1
                else:  # the bootstrap's spread against the analytic standard error of the same paired statistic
                    assert row["Spread"].startswith("paired bootstrap")
                    variance = 0.0
                    for x in langs:
                        d = np.mean([_examples(reg, w, row["Task"], x) - _examples(reg, b, row["Task"], x)
                                     for w, b in pairs], axis=0)
                        variance += d.var() / d.size
                    assert spread == pytest.approx(np.sqrt(variance) / len(langs), rel=0.15)
                    checked["bootstrap"] += 1
                assert text.endswith("(within noise)") == (abs(number) <= 2 * spread)
    assert all(checked.values()), checked  # both spreads and a missing gain were exercised
    assert {row["Gain"] for row in table} == {"WEAM − MLM", "WEAM − TLM"}
    mini = [r for r in table if (r["Size"], r["Subset"], r["Gain"]) == ("mini", "langs_3", "WEAM − MLM")]
    assert mini and all(r[c] == "missing" for r in mini for c in columns.values())  # its MLM cell failed


def _examples(reg, cell, task, lang):
    seeds = TASKS[task][1]
    return np.mean([reg.per_example(cell, task, lang, s, "accuracy") for s in seeds], axis=0)


def test_scaling_table_equals_the_registry(report):
    study, out = report
    table = _tables((out / "report.md").read_text())[1]
    with Registry(study / "registry.sqlite", readonly=True) as reg:
        means, cells, _ = _expected(reg)
        assert len(table) == len(TASKS) * len({(c.objective, c.model, c.language_subset) for c in cells.values()})
        for row in table:
            group = [c for c in cells.values() if (c.objective.upper(), c.model, c.language_subset)
                     == (row["Objective"], row["Size"], row["Subset"])]
            scored = [c for c in group if all((c.name, row["Task"], x) in means for x in TASKS[row["Task"]][2])]
            assert row["Seeds scored"] == f"{len(scored)} of {len(group)}"
            if not scored:
                assert row["Score"] == "missing" and row["Transfer gap"] in ("missing", "— (English not evaluated)")
                continue
            scores = [statistics.fmean(means[c.name, row["Task"], x] for x in TASKS[row["Task"]][2]) for c in scored]
            expected = f"{scores[0]:.2f}" if len(scores) == 1 else \
                f"{statistics.fmean(scores):.2f} ± {statistics.stdev(scores):.2f}"
            assert row["Score"] == expected
            if row["Task"] == "xnli":
                gaps = [means[c.name, "xnli", "en"] - statistics.fmean(means[c.name, "xnli", x]
                                                                     for x in ("de", "fr", "ru", "es"))
                        for c in scored]
                assert row["Transfer gap"].startswith(f"{statistics.fmean(gaps):.2f}")
            else:
                assert row["Transfer gap"] == "— (English not evaluated)"
            costs = [c.cost.train_flops for c in group if c.cost is not None]
            assert row["Train FLOPs"] == f"{statistics.fmean(costs):.3g}"


def test_missing_cells_are_listed_never_zero(report):
    _, out = report
    markdown = (out / "report.md").read_text()
    missing = _tables(markdown)[2]
    assert {(r["Cell"], r["State"], r["Lacks"]) for r in missing} == {
        (PENDING, "pending", "tatoeba, xnli"), (FAILED, "failed", "tatoeba, xnli"),
        (PARTIAL, "evaluated", "xnli (8 of 10 language × seed scores)")}
    assert next(r for r in missing if r["Cell"] == FAILED)["Error"] == "RuntimeError: CUDA out of memory"
    summary = markdown.split("## Summary")[1].split("##")[0]
    assert "3 of 14 cells lack results" in summary and all(c in summary for c in (PENDING, FAILED, PARTIAL))
    gains = _tables(markdown)[0]
    partial = next(r for r in gains if (r["Task"], r["Size"], r["Subset"], r["Gain"])
                   == ("xnli", "mini", "langs_1", "WEAM − MLM"))
    assert partial["All evaluated languages"] == partial["Languages the cell did not see"] == "missing"
    assert partial["Languages every cell saw"].startswith(("+", "-"))  # German was scored
    for row in _tables(markdown)[1]:
        if (row["Objective"], row["Size"], row["Subset"]) == ("TLM", "mini", "langs_3"):
            assert row["Score"] == "missing" and row["Train FLOPs"] == "missing"
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["cell"] in (PENDING, FAILED)]
    assert rows and all(r["score"] == "" for r in rows)
    with open(out / "results.csv", newline="") as f:
        ru = [r for r in csv.DictReader(f) if (r["cell"], r["task"], r["language"]) == (PARTIAL, "xnli", "ru")]
    assert len(ru) == 2 and all(r["score"] == "" for r in ru)


def test_summary_states_the_tables_numbers(report):
    _, out = report
    markdown = (out / "report.md").read_text()
    summary = markdown.split("## Summary")[1].split("##")[0]
    table = _tables(markdown)[0]
    row = next(r for r in table if (r["Task"], r["Size"], r["Subset"], r["Gain"])
               == ("xnli", "tiny", "langs_3", "WEAM − MLM"))
    values = ", ".join(row[c] for c in ("Languages every cell saw", "All evaluated languages",
                                        "Languages the cell did not see"))
    assert f"{values} at tiny with 3 languages (std over 3 train seeds)" in summary
    noisy = sum("within noise" in r[c] for r in table for c in list(r)[-3:])
    with_spread = sum(bool(re.match(r"[+-]\d+\.\d\d ± ", r[c])) for r in table for c in list(r)[-3:])
    assert f"{with_spread - noisy} of the {with_spread} gains with a spread exceed twice it" in summary


def test_csv_has_a_row_per_cell_task_language_seed(report):
    study, out = report
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with Registry(study / "registry.sqlite", readonly=True) as reg:
        cells = reg.cells()
        stored = {(s.cell, s.task, s.language, s.eval_seed): s for s in reg.scores() if s.metric == "accuracy"}
    combinations = {(t, x, s) for t, (_, seeds, langs, _) in TASKS.items() for x in langs for s in seeds}
    assert len(rows) == len(cells) * len(combinations)
    assert {(r["cell"], r["task"], r["language"], int(r["eval_seed"])) for r in rows} == \
        {(c.name, *k) for c in cells for k in combinations}
    for r in rows:
        s = stored.get((r["cell"], r["task"], r["language"], int(r["eval_seed"])))
        assert r["score"] == ("" if s is None else repr(s.value)) and r["split"] == ("" if s is None else s.split)


def test_plots_are_pngs_and_the_html_embeds_them(report):
    _, out = report
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(out / name) as image:
            image.verify()
        assert imread(out / name).ndim == 3
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert len(re.findall(r'src="', page)) == len(PLOTS) and "<link" not in page  # nothing outside the file


def test_every_cell_has_a_tensorboard_hparams_entry(report):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    study, out = report
    with Registry(study / "registry.sqlite", readonly=True) as reg:
        cells = reg.cells()
        means, _, _ = _expected(reg)
    for cell in cells:
        events = EventAccumulator(str(out / "tensorboard" / cell.name))
        events.Reload()
        assert "_hparams_/session_start_info" in events.summary_metadata
        scalars = events.Tags()["scalars"]
        if cell.name in (PENDING, FAILED, PARTIAL):
            assert not any(tag.startswith("study/xnli") for tag in scalars)  # absent, not 0
            continue
        score = events.Scalars("study/xnli/score")[0].value
        assert score == pytest.approx(statistics.fmean(means[cell.name, "xnli", x] for x in TASKS["xnli"][2]),
                                      abs=1e-4)


def test_a_bad_registry_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--study", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "registry.sqlite: no registry" in capsys.readouterr().err
    Registry(tmp_path / "registry.sqlite").close()
    assert main(["--study", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no cells registered yet" in capsys.readouterr().err
    raw = sqlite3.connect(tmp_path / "registry.sqlite")
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    raw.commit()
    raw.close()
    assert main(["--study", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is newer than this weam-ds reads" in err
    assert not (tmp_path / "r").exists()
