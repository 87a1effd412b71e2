"""A study cell's evaluation fanned out per (task, fine-tuning seed) (launcher.cells.evaluation_units): the job graph
(the export first, each seed's English-SQuAD model before the QA units that load it), the local scheduler's
units-to-GPUs assignment, and on the real two-node SLURM cluster (tests/slurm_cluster.py) with the mock XTREME
folder: 2 tasks at seed 2 give 2 unit jobs after the export job, a killed unit is retried alone by ``--retry-failed``,
and the cell ends evaluated with the scores of a one-job evaluation of the same export. The cell has trained before
(a copy of the shared ``trained_run``, as tests/study_standin.py's copy backend leaves a cell), so no training job is
submitted; a study's training job under SLURM, and the export job waiting for it, are test_study_slurm.py's."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from test_study import STEPS, study_file
from test_study_slurm import ENDED, job_field, launcher, queued_jobs, registry_rows
from xtreme_fixtures import write_qa, write_xtreme

from launcher.cells import evaluation_units, score_records, unit_file
from launcher.study import start_units
from launcher.study_config import CellPlan, expand, load_study

REPO = Path(__file__).resolve().parents[2]
RECIPE = "learning_rate: 1.0e-3\nepochs: 1\nbatch_size: 8\nmax_length: 32\n"
"""The smallest fine-tuning the mock tasks take: one epoch of their few English examples."""
TASKS, SEEDS = ["xnli", "panx"], [2]
"""A unit per task, each at a seed other than the first, so that the seed a unit is named by is the one it uses
(the seeds' fan-out, 1 and 2, is the job graph's test): each unit is a process fine-tuning its task."""


def fanout_study(tmp: Path, dataset: Path, data: Path, tasks: list[str], seeds: list[int], slurm: dict) -> Path:
    recipes = tmp / "recipes"
    recipes.mkdir(exist_ok=True)
    for task in tasks:
        (recipes / f"{task}.yaml").write_text(RECIPE + ("doc_stride: 8\n" if task in ("xquad", "mlqa") else ""))
    return study_file(tmp, dataset, "fan", **{
        "axes": {"objective.name": ["weam"]}, "budget/steps": STEPS,
        "base/deepspeed/config": str(REPO / "ds_configs" / "cpu.json"),
        "evaluation": {"tatoeba": None, "xtreme_r": {"data": str(data), "tasks": tasks, "seeds": seeds,
                                                     "languages": ["en", "de"], "recipes": str(recipes)}},
        "launch": {"backend": "slurm", "nnodes": 1, "nproc_per_node": 1, "slurm": slurm}})


def test_the_job_graph_puts_each_unit_after_the_export_and_its_seeds_squad_model(small_dataset, tmp_path,
                                                                                 monkeypatch):
    dataset, _, _ = small_dataset
    monkeypatch.chdir(tmp_path)
    data = write_qa(write_xtreme(tmp_path / "xtreme"))
    path = fanout_study(tmp_path, dataset, data, ["xquad", "xnli"], [1, 2], {"partition": "debug"})
    assert evaluation_units(load_study(path)) == {
        "export": (), "squad-seed1": ("export",), "squad-seed2": ("export",),
        "xquad-seed1": ("export", "squad-seed1"), "xquad-seed2": ("export", "squad-seed2"),
        "xnli-seed1": ("export",), "xnli-seed2": ("export",)}
    # The sbatch commands a submission gives: each job after the jobs of its units, one script per unit.
    code, console = launcher("study", "run", str(path), "--dry-run")
    assert code == 0, console
    (cell,) = (tmp_path / "fan" / "cells").iterdir()
    after = {name: re.findall(r'"\$\{(\w+)%%;\*\}"', line) for name, line in
             re.findall(r"^(\w+)=\$\(sbatch --parsable (.*)\)", console, re.M)}
    assert after == {"train": [], "export": ["train"], "squad_seed1": ["export"], "squad_seed2": ["export"],
                     "xquad_seed1": ["export", "squad_seed1"], "xquad_seed2": ["export", "squad_seed2"],
                     "xnli_seed1": ["export"], "xnli_seed2": ["export"]}
    for unit in evaluation_units(load_study(path)):
        script = cell / "units" / f"{unit}.sbatch"
        assert f"--unit {unit}" in script.read_text() and str(script) in console
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_local_units_start_one_per_free_gpu_each_after_the_units_it_waits_for():
    units = {"squad-seed1": (), "xquad-seed1": ("squad-seed1",), "xnli-seed1": (), "xnli-seed2": ()}
    first = start_units(units, set(), set(), ["0", "1"])
    assert first == [("squad-seed1", "0"), ("xnli-seed1", "1")]
    started = {unit for unit, _ in first}
    assert start_units(units, started, set(), []) == []  # every GPU busy
    # The SQuAD model done, its GPU free: the unit that waited for it comes first, in the units' order.
    assert start_units(units, started, {"squad-seed1"}, ["0"]) == [("xquad-seed1", "0")]
    # A unit whose SQuAD model failed never starts, though GPUs are free.
    assert start_units(units, started | {"xnli-seed2"}, {"xnli-seed1", "xnli-seed2"}, ["0", "1"]) == []


def test_a_cell_evaluated_per_task_and_seed_retries_a_killed_unit_alone(small_dataset, trained_run, tmp_path,
                                                                         monkeypatch, slurm):
    dataset, _, _ = small_dataset
    monkeypatch.chdir(tmp_path)
    data = write_xtreme(tmp_path / "xtreme")
    path = fanout_study(tmp_path, dataset, data, TASKS, SEEDS, {"partition": "debug"})
    study_dir = tmp_path / "fan"
    (plan,) = expand(load_study(path), str(path))
    trained_run.copy(plan.run_dir)  # the cell has trained: its last step's checkpoint is there
    earlier = frozenset(queued_jobs(slurm))

    code, console = launcher("study", "run", str(path))
    assert code == 0, console
    (cell,), _ = registry_rows(study_dir)
    directory = study_dir / "cells" / cell.name
    jobs = json.loads((directory / "jobs.json").read_text())
    units = {f"{task}-seed{seed}" for task in TASKS for seed in SEEDS}
    assert set(jobs["units"]) == {"export", *units} and jobs["train"] is None  # trained already: no training job
    submitted = queued_jobs(slurm, earlier)
    assert sorted(submitted) == sorted(jobs["units"].values())  # 2 units + export
    export = jobs["units"]["export"]
    assert job_field(slurm, export, "Dependency") == "(null)"  # nothing to wait for
    for unit in units:
        assert job_field(slurm, jobs["units"][unit], "Dependency").startswith(f"afterok:{export}")
    # One unit's job killed (before it could start: it waits for the export); the others run on.
    killed = jobs["units"]["xnli-seed2"]
    slurm.command("scancel", killed)
    for job in submitted:
        slurm.wait_for_state(job, ENDED, 300)

    code, console = launcher("study", "status", str(path))
    (cell,), scores = registry_rows(study_dir)
    assert cell.state == "failed" and cell.error == f"xnli-seed2 job {killed} CANCELLED (it never started)", console
    assert not scores and cell.cost.steps == STEPS  # no scores until every unit is in; the export's cost is
    kept = {unit: unit_file(directory, unit).stat().st_mtime_ns for unit in {"export", *units} - {"xnli-seed2"}}

    # --retry-failed: that unit's job alone, waiting for nothing (its export is done), the other records kept.
    code, console = launcher("study", "run", str(path), "--retry-failed")
    assert code == 0, console
    (again,) = set(queued_jobs(slurm, earlier)) - set(submitted)
    assert json.loads((directory / "jobs.json").read_text())["units"]["xnli-seed2"] == again
    assert job_field(slurm, again, "Command") == str(directory / "units" / "xnli-seed2.sbatch")
    assert job_field(slurm, again, "Dependency") == "(null)"
    slurm.wait_for_state(again, ENDED, 300)
    assert launcher("study", "status", str(path))[0] == 0
    (cell,), scores = registry_rows(study_dir)
    assert cell.state == "evaluated", cell.error
    assert {unit: unit_file(directory, unit).stat().st_mtime_ns for unit in kept} == kept

    # The same scores as one job evaluating the same export (launcher.study.score_records), per language.
    plan = CellPlan(cell.name, axes={}, run=cell.config, pairs=[], directory=tmp_path / "one-job")
    plan.directory.mkdir()
    (plan.directory / "export").symlink_to(directory / "export")
    expected = {(r["task"], r["language"], r["eval_seed"], metric): value
                for r in score_records(load_study(path), plan) for metric, value in r["scores"].items()}
    assert {(s.task, s.language, s.eval_seed, s.metric): s.value for s in scores} == pytest.approx(expected)
    assert {(task, seed) for task, _, seed, _ in expected} == {(task, seed) for task in TASKS for seed in SEEDS}
    for task in TASKS:
        for seed in SEEDS:
            fanned, one = (d / "eval" / "xtreme_r" / task / f"seed{seed}" / "predictions"
                           for d in (directory, plan.directory))
            assert {p.name: p.read_text() for p in fanned.rglob("*.tsv")} == {
                p.name: p.read_text() for p in one.rglob("*.tsv")}

