"""``python -m launcher study`` with ``launch.backend: slurm``, its jobs run for real by stand-ins for SLURM's
commands (slurm_stand_ins: sbatch runs each job at once, the launcher's training script with srun and
scontrol as test_run.py runs it): a training job and a dependent step job per cell, their results.json
harvested into the registry by ``status``, nothing submitted twice, a diverged cell failed (its step job
cancelled) and shown as missing until ``--retry-failed`` submits it again, and job scripts whose values
(a study directory that holds commands) stay data."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from slurm_stand_ins import install
from test_study import study_file

from launcher.cli import main
from weam_ds.registry import REGISTRY_FILE, Registry

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
GOOD, BAD = 2e-3, 1e8
"""The learning rates of the two cells: one trains, the other diverges at once (its training job fails)."""


def launcher(*args: str) -> tuple[int, str]:
    """``python -m launcher ARGS`` in this process: its exit status and its console."""
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        code = main(list(args))
    return code, console.getvalue()


def submissions(standin: Path) -> list[dict]:
    """Every sbatch call so far: its job id and arguments."""
    calls = standin / "sbatch"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def registry_rows(study_dir: Path) -> tuple:
    with Registry(study_dir / REGISTRY_FILE, readonly=True) as registry:
        return registry.cells(), registry.scores()


def slurm_study(tmp: Path, dataset: Path, name: str, slurm: dict) -> Path:
    return study_file(tmp, dataset, name, **{
        "axes": {"optimizer.lr": [GOOD, BAD], "objective.name": ["weam"]}, "budget/steps": STEPS,
        "base/train/max_nonfinite_in_row": 1, "base/deepspeed/config": str(REPO / "ds_configs" / "cpu.json"),
        "launch": {"backend": "slurm", "nnodes": 1, "nproc_per_node": 1, "slurm": slurm}})


def test_a_study_under_slurm_runs_each_cell_as_jobs_harvested_into_the_registry(small_dataset, tmp_path,
                                                                                 monkeypatch):
    dataset, _, _ = small_dataset
    for key, value in install(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    standin = tmp_path / "standin"
    path = slurm_study(tmp_path, dataset, "grid", {"partition": "cpu", "time": "01:00:00", "rdzv_port": free_port()})
    study_dir = tmp_path / "grid"

    # study run: per cell, the launcher's training script, then the step script after it.
    code, console = launcher("study", "run", str(path))
    assert code == 0, console  # nothing has failed yet: the runner does not wait for its jobs
    cells, _ = registry_rows(study_dir)
    assert [c.state for c in cells] == ["running", "running"]
    cell = {c.axes["optimizer.lr"]: c for c in cells}
    calls = submissions(standin)
    assert len(calls) == 4
    for c in cells:
        directory = study_dir / "cells" / c.name
        train, step = [call for call in calls if str(directory) in call["argv"][-1]]
        assert train["argv"] == ["--parsable", str(directory / "run" / "slurm.sbatch")]
        assert step["argv"] == ["--parsable", f"--dependency=afterok:{train['job']}", "--kill-on-invalid-dep=yes",
                                str(directory / "step.sbatch")]
        assert json.loads((directory / "jobs.json").read_text())["step"] == step["job"]
        assert (directory / "run" / "logs" / f"slurm-{train['job']}.out").is_file()
        assert {"#SBATCH --partition=cpu", "#SBATCH --time=01:00:00", "#SBATCH --nodes=1"} <= set(
            (directory / "step.sbatch").read_text().splitlines())
    good_dir, bad_dir = (study_dir / "cells" / cell[lr].name for lr in (GOOD, BAD))
    bad_train, bad_step = (json.loads((bad_dir / "jobs.json").read_text())[k] for k in ("train", "step"))
    assert (standin / "jobs" / bad_train).read_text() == "FAILED"
    assert (standin / "jobs" / bad_step).read_text() == "CANCELLED"  # afterok never satisfied: never ran
    assert not (bad_dir / "results.json").exists() and not (bad_dir / "error.json").exists()
    results = json.loads((good_dir / "results.json").read_text())

    # Without squeue, submitted jobs are trusted until their results or errors appear.
    (tmp_path / "bin" / "squeue").rename(tmp_path / "squeue")
    code, console = launcher("study", "status", str(path))
    (tmp_path / "squeue").rename(tmp_path / "bin" / "squeue")
    assert code == 0 and re.search(re.escape(cell[BAD].name) + r"\s+running\s", console), console
    # A job squeue shows as pending or running keeps its cell running.
    (standin / "jobs" / bad_step).write_text("PENDING")
    assert re.search(re.escape(cell[BAD].name) + r"\s+running\s", launcher("study", "status", str(path))[1])
    (standin / "jobs" / bad_step).unlink()  # ended minutes ago: squeue answers "Invalid job id"

    # study status records what the jobs left: the good cell evaluated with results.json's numbers ...
    code, console = launcher("study", "status", str(path))
    assert code == 0
    cells, scores = registry_rows(study_dir)
    good, bad = ({c.axes["optimizer.lr"]: c for c in cells}[lr] for lr in (GOOD, BAD))
    assert good.state == "evaluated" and results["config_sha256"] == good.config_sha256
    cost = {k: getattr(good.cost, k) for k in results["cost"]}
    assert cost == results["cost"] and good.cost.steps == STEPS and good.cost.world_size == 1
    assert sorted((s["task"], s["language"], s["scores"]["accuracy"]) for s in results["scores"]) == sorted(
        (s.task, s.language, s.value) for s in scores if s.cell == good.name)
    assert {s["language"] for s in results["scores"]} == {"fr", "ja"}
    with Registry(study_dir / REGISTRY_FILE, readonly=True) as registry:
        for s in results["scores"]:
            outcomes = registry.per_example(good.name, "tatoeba", s["language"], 0, "accuracy")
            assert np.array_equal(outcomes, s["per_example"]["accuracy"])
    # ... the diverged one failed, why said, shown as missing.
    assert bad.state == "failed" and bad.name not in {s.cell for s in scores}
    assert f"training job {bad_train} FAILED (its log: " in bad.error
    assert f"step job {bad_step} no longer known to SLURM (it never started)" in bad.error
    assert re.search(re.escape(good.name) + r"\s+evaluated\s+3/3\s.*\d+\.\d$", console, re.M)
    assert re.search(re.escape(bad.name) + r"\s+failed\s.*missing$", console, re.M)
    # Harvested twice, the registry stays the same.
    before = registry_rows(study_dir)
    assert launcher("study", "status", str(path))[0] == 0 and registry_rows(study_dir) == before

    # A second run submits nothing (one cell evaluated, the other failed) ...
    code, console = launcher("study", "run", str(path))
    assert code == 1 and len(submissions(standin)) == 4 and registry_rows(study_dir) == before
    # ... unless told to retry the failed cell (a dry run first: only that cell's commands, nothing submitted) ...
    code, console = launcher("study", "run", str(path), "--retry-failed", "--dry-run")
    assert code == 0 and f"# {bad.name}\n" in console and good.name not in console
    assert len(submissions(standin)) == 4 and registry_rows(study_dir) == before
    # ... then both its jobs again, the step after the new training.
    code, console = launcher("study", "run", str(path), "--retry-failed")
    assert code == 0, console
    train, step = submissions(standin)[4:]
    assert train["argv"][-1] == str(bad_dir / "run" / "slurm.sbatch")
    assert step["argv"][1:3] == [f"--dependency=afterok:{train['job']}", "--kill-on-invalid-dep=yes"]
    assert launcher("study", "status", str(path))[0] == 0
    cells, _ = registry_rows(study_dir)
    again = {c.axes["optimizer.lr"]: c for c in cells}
    assert again[GOOD] == good and again[BAD].state == "failed" and f"training job {train['job']}" in again[BAD].error


HOSTILE = "study $(touch pwned-dollar) `touch pwned-tick` 'q' ;touch pwned-semi"


def test_dry_run_writes_job_scripts_whose_values_stay_data_and_submits_nothing(small_dataset, tmp_path, monkeypatch):
    dataset, _, _ = small_dataset
    for key, value in install(tmp_path).items():
        monkeypatch.setenv(key, value)
    hostile = tmp_path / HOSTILE
    hostile.mkdir()
    monkeypatch.chdir(hostile)  # the jobs' working directory too
    path = slurm_study(hostile, dataset, "grid", {"account": HOSTILE, "gpus_per_node": 2})
    code, console = launcher("study", "run", str(path), "--dry-run")
    assert code == 0 and console.endswith("launcher: dry run: nothing submitted\n"), console
    study_dir = hostile / "grid"
    assert not (tmp_path / "standin" / "sbatch").exists() and not (study_dir / REGISTRY_FILE).exists()
    cells = sorted(p for p in (study_dir / "cells").iterdir())
    assert len(cells) == 2
    for directory in cells:
        train, step = directory / "run" / "slurm.sbatch", directory / "step.sbatch"
        assert shlex.quote(str(train)) in console and shlex.quote(str(step)) in console
        assert not (directory / "jobs.json").exists()
        for script in (train, step):
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        directives = [shlex.split(line[len("#SBATCH "):])[0] for line in step.read_text().splitlines()
                      if line.startswith("#SBATCH ")]
        assert f"--account={HOSTILE}" in directives and "--gpus-per-node=1" in directives
        assert f"--output={directory}/step-%j.out" in directives
        # The step script run as SLURM would run it: the values arrive intact (the cell has not trained, so
        # it leaves its reason in error.json, in the cell's directory), and none ran as a command.
        job = subprocess.run(["bash", str(step)], env={**os.environ, "SLURM_JOB_ID": "7"},
                             capture_output=True, text=True, timeout=300)
        assert job.returncode == 1, job.stderr[-3000:]
        error = json.loads((directory / "error.json").read_text())
        assert error["cell"] == directory.name and error["job"] == "7" and "metrics.jsonl" in error["error"]
    assert not list(tmp_path.rglob("pwned*")), "a value was executed as a command"

    # Only SLURM jobs can be written without running.
    local = study_file(hostile, dataset, "local")
    code, console = launcher("study", "run", str(local), "--dry-run")
    assert code == 2 and "--dry-run writes SLURM jobs (launch.backend: slurm)" in console
