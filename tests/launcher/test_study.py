"""``python -m launcher study`` on tiny studies (one CPU rank each, gloo, the small dataset's fr-en and ja-en). One
cell trains for real through the local backend (``real_cell``) and is exported and evaluated into the registry; the
other studies' cells "train" through the copy backend (tests/study_standin.py), which copies a real run into theirs:
the shared ``trained_run`` for WEAM cells, the real cell's run for MLM and TLM cells. Their export, evaluation,
registry rows and report are real: every cell trained, exported and evaluated into the registry, the report's numbers
equal to the registry's, idempotent re-runs (a changed trained cell refused, an added axis value adding only its
cells), a runner killed mid-cell finishing every cell exactly once, and failed cells shown as missing."""
from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import kill_tree
from fixtures.run_config import launched_run
from study_standin import copy_backend, launcher_command, starts

from launcher.cli import main
from weam_ds.registry import REGISTRY_FILE, Registry
from weam_ds.report import main as report_main

STEPS = 16
"""trained_run's steps: a cell of the copy backend holds the steps of the run it copies."""
COPY = {"backend": "copy", "nproc_per_node": 1}
"""``launch:`` of a study whose cells copy a real run (tests/study_standin.py)."""


def study_file(tmp: Path, dataset: Path, name: str, **changes) -> Path:
    study = {
        "name": name,
        "study_dir": str(tmp / name),
        "base": launched_run(dataset, "replaced-per-cell", 100,
                             train={"log_interval": 2, "checkpoint_interval": 8, "keep_checkpoints": 2}),
        "languages": {"langs_1": ["fr-en"], "langs_2": ["fr-en", "ja-en"]},
        "axes": {"data.pairs": ["langs_1", "langs_2"], "objective.name": ["weam", "mlm"]},
        "budget": {"rule": "steps", "steps": STEPS},
        "evaluation": {"tatoeba": {"batch_size": 32}},
        "launch": {"backend": "local", "nproc_per_node": 1},
    }
    for key, value in changes.items():
        node = study
        *parents, last = key.split("/")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def steps_of(cell_dir: Path) -> list[int]:
    metrics = cell_dir / "run" / "metrics.jsonl"
    return [int(re.search(r'"step": (\d+)', line)[1]) for line in metrics.read_text().splitlines()]


def assert_evaluated(study_dir: Path, cell, scores) -> None:
    """A cell through every step: evaluated, its cost its run's, each step once, its export, both languages scored
    (also the one a langs_1 cell never saw), its pre-training languages in the registry."""
    assert cell.state == "evaluated" and cell.cost.steps == STEPS and cell.cost.tokens > 0
    assert cell.cost.world_size == 1
    assert steps_of(study_dir / "cells" / cell.name) == list(range(1, STEPS + 1))
    assert (study_dir / "cells" / cell.name / "export" / "model.safetensors").is_file()
    assert {s.language for s in scores if s.cell == cell.name} == {"fr", "ja"}
    assert cell.languages == (("fr",) if "langs_1" in cell.name else ("fr", "ja"))


@pytest.fixture(scope="module")
def real_cell(small_dataset, tmp_path_factory):
    """A study of one cell (MLM on both pairs) trained by the local backend: a real launch, export and evaluation."""
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("real")
    path = study_file(tmp, dataset, "real", axes={"data.pairs": ["langs_2"], "objective.name": ["mlm"]})
    assert main(["study", "run", str(path)]) == 0
    return tmp / "real"


@pytest.fixture(scope="module")
def copied_runs(real_cell, trained_run) -> dict[str, Path]:
    """The run each objective's cells copy: two real runs, so that WEAM's and MLM's cells differ."""
    with Registry(real_cell / REGISTRY_FILE, readonly=True) as registry:
        (cell,) = registry.cells()
    mlm = Path(cell.config["output_dir"])
    return {"weam": trained_run.out, "mlm": mlm, "tlm": mlm}


@pytest.fixture(scope="module")
def study(small_dataset, tmp_path_factory, copied_runs):
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("study")
    path = study_file(tmp, dataset, "grid", launch=COPY)
    with copy_backend(copied_runs):
        assert main(["study", "run", str(path)]) == 0
    return tmp, dataset, path


def test_a_cell_of_the_local_backend_is_trained_exported_and_evaluated_into_the_registry(real_cell):
    with Registry(real_cell / REGISTRY_FILE, readonly=True) as registry:
        (cell,), scores = registry.cells(), registry.scores()
    assert cell.name == "model=tiny,languages=langs_2,objective=mlm,seed=1234"
    assert_evaluated(real_cell, cell, scores)


def test_every_cell_is_trained_exported_and_evaluated_into_the_registry(study):
    tmp, _, _ = study
    with Registry(tmp / "grid" / REGISTRY_FILE, readonly=True) as registry:
        cells, scores = registry.cells(), registry.scores()
    assert sorted(c.name for c in cells) == sorted(
        f"model=tiny,languages={s},objective={o},seed=1234" for s in ("langs_1", "langs_2") for o in ("weam", "mlm"))
    for cell in cells:
        assert_evaluated(tmp / "grid", cell, scores)


def test_the_report_shows_the_registry_numbers(study, tmp_path):
    tmp, _, _ = study
    assert report_main(["--study", str(tmp / "grid"), "--out", str(tmp_path / "report")]) == 0
    with Registry(tmp / "grid" / REGISTRY_FILE, readonly=True) as registry:
        score = {(s.cell, s.language): s.value for s in registry.scores() if s.metric == "accuracy"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    for subset in ("langs_1", "langs_2"):
        weam, mlm = (f"model=tiny,languages={subset},objective={o},seed=1234" for o in ("weam", "mlm"))
        gain = statistics.fmean(score[weam, lang] - score[mlm, lang] for lang in ("fr", "ja"))
        row = next(line for line in markdown.splitlines() if f"| {subset} |" in line and "WEAM − MLM" in line)
        # The gain on all evaluated languages, as rounded for the table: a mean of differences and a difference of
        # means agree to rounding, so an exact 0 may print as -0.00 or +0.00.
        shown = float(row.split("|")[10].split()[0])
        assert abs(shown - gain) <= 0.005 + 1e-9, (gain, row)
    rows = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert len(rows) == 4 * 2  # cells × tasks × languages × seeds
    for png in (tmp_path / "report").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"<img [^>]*src=\"data:image/png;base64,", (tmp_path / "report" / "report.html").read_text())


def test_a_changed_trained_cell_is_refused_and_an_added_value_adds_only_its_cells(study, copied_runs, capsys):
    tmp, dataset, path = study
    changed = study_file(tmp, dataset, "grid", launch=COPY, **{"budget/steps": STEPS + 1})
    with copy_backend(copied_runs):
        assert main(["study", "run", str(changed)]) == 2
        err = capsys.readouterr().err
        assert "changes the run config of cells that have trained" in err and "objective=weam" in err
        before = {p: p.stat().st_mtime_ns for p in (tmp / "grid" / "cells").glob("*/run/metrics.jsonl")}
        added = study_file(tmp, dataset, "grid", launch=COPY, **{"axes/objective.name": ["weam", "mlm", "tlm"]})
        assert main(["study", "run", str(added)]) == 0
        assert {p: p.stat().st_mtime_ns for p in before} == before  # the trained cells were not run again
        with Registry(tmp / "grid" / REGISTRY_FILE, readonly=True) as registry:
            tlm = [c for c in registry.cells() if c.objective == "tlm"]
        assert len(tlm) == 2 and all(c.state == "evaluated" for c in tlm)
        assert main(["study", "status", str(added)]) == 0
    assert "objective=tlm" in capsys.readouterr().out


def test_a_runner_killed_mid_cell_finishes_every_cell_once_and_failures_show_as_missing(small_dataset, trained_run,
                                                                                        tmp_path, capsys):
    dataset, _, _ = small_dataset
    # The WEAM cell trains for a while; the MLM cell's training fails at once (a failed cell: missing, never 0).
    runs = {"weam": trained_run.out, "mlm": None}
    path = study_file(tmp_path, dataset, "killed", launch=COPY, axes={"objective.name": ["weam", "mlm"]})
    cells = tmp_path / "killed" / "cells"
    with copy_backend(runs, step_seconds=0.2):
        runner = subprocess.Popen(launcher_command("study", "run", str(path)), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and runner.poll() is None:
            metrics = list(cells.glob("*/run/metrics.jsonl"))
            if metrics and len(metrics[0].read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert runner.poll() is None, "the runner ended before it was killed"
        kill_tree(runner.pid)  # the runner, its agent and its rank, mid-cell
        runner.wait()
        assert main(["study", "run", str(path)]) == 1  # one cell failed
    with Registry(tmp_path / "killed" / REGISTRY_FILE, readonly=True) as registry:
        states = {c.objective: c for c in registry.cells()}
        scored = {s.cell for s in registry.scores()}
    good, bad = states["weam"], states["mlm"]
    assert good.state == "evaluated" and steps_of(cells / good.name) == list(range(1, STEPS + 1))
    killed_at, *_, continued_at = starts(cells / good.name / "run")
    assert killed_at == 0 and 5 <= continued_at < STEPS  # the second run continued the killed cell's run
    assert bad.state == "failed" and "training exited with status" in bad.error and bad.name not in scored
    out = capsys.readouterr().out
    assert re.search(re.escape(bad.name) + r"\s+failed\s.*missing", out)
    assert report_main(["--study", str(tmp_path / "killed"), "--out", str(tmp_path / "report")]) == 0
    missing = (tmp_path / "report" / "report.md").read_text().split("## Missing results")[1]
    assert bad.name in missing
    # Retrying a failed cell runs it again (it fails again, the same way).
    with copy_backend(runs):
        assert main(["study", "run", str(path), "--retry-failed"]) == 1
    assert starts(cells / bad.name / "run") == [0, 0]  # its second start, and each found nothing to continue


def test_xtreme_r_evaluation_records_every_seed_with_its_examples(study, copied_runs, tmp_path):
    """A cell evaluated by zero-shot fine-tuning (weam_ds.xtreme_r run) on task data in the official layout:
    every fine-tuning seed's score per language, and each example's hit for the paired bootstrap."""
    from xtreme_fixtures import write_xtreme

    tmp, dataset, _ = study
    data = write_xtreme(tmp_path / "xtreme")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "xnli.yaml").write_text("learning_rate: 1.0e-3\nepochs: 1\nbatch_size: 8\nmax_length: 32\n")
    path = study_file(tmp_path, dataset, "xtreme", launch=COPY, **{
        "axes": {"data.pairs": ["langs_2"], "objective.name": ["weam"]},
        "evaluation": {"xtreme_r": {"data": str(data), "tasks": ["xnli"], "languages": ["en", "de"], "seeds": [1, 2],
                                    "recipes": str(recipes)}}})
    with copy_backend(copied_runs):
        assert main(["study", "run", str(path)]) == 0
    with Registry(tmp_path / "xtreme" / REGISTRY_FILE, readonly=True) as registry:
        (cell,) = registry.cells()
        scores = registry.scores(cell.name, "xnli")
        out = tmp_path / "xtreme" / "cells" / cell.name / "eval" / "xtreme_r"
        for score in scores:
            result = json.loads((out / "xnli" / f"seed{score.eval_seed}" / "result.json").read_text())
            assert score.value == result["scores"][score.metric][score.language]
            hits = registry.per_example(cell.name, "xnli", score.language, score.eval_seed, "accuracy")
            assert hits is not None and hits.mean() == pytest.approx(
                result["scores"]["accuracy"][score.language])
    assert {(s.language, s.eval_seed) for s in scores} == {(lang, seed) for lang in ("en", "de") for seed in (1, 2)}


def test_a_tokens_per_language_budget_gives_more_languages_more_steps(small_dataset, tmp_path):
    from data_prep.manifest import read_manifest
    from launcher.study_config import expand, load_study

    dataset, _, _ = small_dataset
    path = study_file(tmp_path, dataset, "budget", budget={"rule": "tokens_per_language", "tokens_per_language": 20000})
    steps = {plan.axes["languages"]: plan.run["train"]["steps"] for plan in expand(load_study(path), str(path))}
    train = {pair: entry["splits"]["train"] for pair, entry in read_manifest(dataset)["pairs"].items()}
    for subset, pairs in (("langs_1", ["fr-en"]), ("langs_2", ["fr-en", "ja-en"])):
        per_pair = sum(train[p]["src_tokens"] + train[p]["tgt_tokens"] for p in pairs) / sum(
            train[p]["samples"] for p in pairs)
        assert steps[subset] == -(-20000 * len(pairs) // (8 * per_pair))  # 8 pairs per step, one rank

    # A budget in encoded positions per batch counts that budget as the step's tokens.
    path = study_file(tmp_path, dataset, "budget_tokens", budget={"rule": "tokens_per_language",
                                                                  "tokens_per_language": 20000},
                      **{"base/data/batch_size": None, "base/data/batch_tokens": 480})
    steps = {plan.axes["languages"]: plan.run["train"]["steps"] for plan in expand(load_study(path), str(path))}
    assert steps == {"langs_1": -(-20000 // 480), "langs_2": -(-40000 // 480)}


@pytest.mark.parametrize("changes,message", [
    ({"axes/data.pairs": ["langs_1", "langs_9"]}, "axes.data.pairs: 'langs_9' is not a subset named under languages"),
    ({"axes/objective.nme": ["weam"]}, "objective.nme: unknown key"),
    ({"budget/rule": "flops"}, "budget.rule: 'flops' is not one of steps, tokens_per_language"),
    ({"evaluation": {}}, "evaluation.tatoeba, xtreme_r: choose at least one evaluation"),
    ({"launch/backend": "kubernetes"}, "launch.backend: 'kubernetes' is not one of"),
])
def test_a_bad_study_file_is_a_one_line_error_naming_the_key(small_dataset, tmp_path, capsys, changes, message):
    dataset, _, _ = small_dataset
    path = study_file(tmp_path, dataset, "bad", **changes)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad" / REGISTRY_FILE).exists()
