"""``python -m launcher study`` with ``launch.backend: slurm`` on a real two-node SLURM cluster
(tests/slurm_cluster.py): a training job and a dependent export job per cell (the study evaluates Tatoeba-style
retrieval only, which the export unit runs), run by the scheduler, their records harvested into the registry by
``status``, which reads the real squeue; nothing submitted twice, a diverged cell failed (SLURM cancels its
export job) and shown as missing until ``--retry-failed`` submits it again, and job scripts whose values (a study
directory that holds commands) stay data. tests/launcher/test_study_fanout.py: XTREME-R units, one job each."""
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
from test_study import study_file

from launcher.cli import main
from weam_ds.registry import REGISTRY_FILE, Registry

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
GOOD, BAD = 2e-3, 1e8
"""The learning rates of the two cells: one trains, the other diverges at once (its training job fails)."""
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def launcher(*args: str) -> tuple[int, str]:
    """``python -m launcher ARGS`` in this process: its exit status and its console."""
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        code = main(list(args))
    return code, console.getvalue()


def queued_jobs(slurm, before: frozenset[str] = frozenset()) -> list[str]:
    """The jobs SLURM knows of (pending, running or ended within MinJobAge) but ``before``, by id."""
    jobs = slurm.command("squeue", "-h", "--states=all", "-o", "%i").stdout.split()
    return sorted((job for job in jobs if job not in before), key=int)


def job_field(slurm, job: str, name: str) -> str:
    return re.search(rf"\b{name}=(\S*)", slurm.command("scontrol", "show", "job", job).stdout)[1]


def registry_rows(study_dir: Path) -> tuple:
    with Registry(study_dir / REGISTRY_FILE, readonly=True) as registry:
        return registry.cells(), registry.scores()


def slurm_study(tmp: Path, dataset: Path, name: str, slurm: dict) -> Path:
    return study_file(tmp, dataset, name, **{
        "axes": {"optimizer.lr": [GOOD, BAD], "objective.name": ["weam"]}, "budget/steps": STEPS,
        "base/train/max_nonfinite_in_row": 1, "base/deepspeed/config": str(REPO / "ds_configs" / "cpu.json"),
        "launch": {"backend": "slurm", "nnodes": 1, "nproc_per_node": 1, "slurm": slurm}})


def test_a_study_under_slurm_runs_each_cell_as_jobs_harvested_into_the_registry(small_dataset, tmp_path,
                                                                                 monkeypatch, slurm):
    dataset, _, _ = small_dataset
    monkeypatch.chdir(tmp_path)
    # No fixed rendezvous port: both cells' jobs may run at once, and this cluster's nodes share one machine.
    path = slurm_study(tmp_path, dataset, "grid", {"partition": "debug", "time": "01:00:00"})
    study_dir = tmp_path / "grid"
    earlier = frozenset(queued_jobs(slurm))  # other tests' jobs

    # study run: per cell, the launcher's training script, then the export unit's script after it. No wait.
    code, console = launcher("study", "run", str(path))
    assert code == 0, console
    cells, _ = registry_rows(study_dir)
    assert [c.state for c in cells] == ["running", "running"]
    cell = {c.axes["optimizer.lr"]: c for c in cells}
    submitted = queued_jobs(slurm, earlier)
    assert len(submitted) == 4
    jobs = {c.axes["optimizer.lr"]: json.loads((study_dir / "cells" / c.name / "jobs.json").read_text())
            for c in cells}
    for lr, c in cell.items():
        directory = study_dir / "cells" / c.name
        train, step = jobs[lr]["train"], jobs[lr]["units"]["export"]
        assert {train, step} <= set(submitted) and list(jobs[lr]["units"]) == ["export"]
        assert job_field(slurm, train, "Command") == str(directory / "run" / "slurm.sbatch")
        assert job_field(slurm, step, "Command") == str(directory / "units" / "export.sbatch")
        assert job_field(slurm, step, "Dependency").startswith(f"afterok:{train}")  # the export after the training
        assert job_field(slurm, step, "Partition") == "debug" and job_field(slurm, step, "TimeLimit") == "01:00:00"
    # While the jobs are queued or running (the real squeue says so), status keeps both cells running.
    code, console = launcher("study", "status", str(path))
    assert code == 0 and len(re.findall(r"\s+running\s", console)) == 2, console
    for lr in (GOOD, BAD):
        for job in (jobs[lr]["train"], jobs[lr]["units"]["export"]):
            slurm.wait_for_state(job, ENDED, 300)
    good_dir, bad_dir = (study_dir / "cells" / cell[lr].name for lr in (GOOD, BAD))
    bad_train, bad_step = jobs[BAD]["train"], jobs[BAD]["units"]["export"]
    assert slurm.job_state(bad_train) == "FAILED"
    assert slurm.job_state(bad_step) == "CANCELLED"  # afterok never satisfied: SLURM never ran it
    assert not (bad_dir / "units" / "export.json").exists()
    assert (good_dir / "run" / "logs" / f"slurm-{jobs[GOOD]['train']}.out").is_file()
    results = json.loads((good_dir / "units" / "export.json").read_text())
    assert results["error"] is None and results["unit"] == "export"

    # study status records what the jobs left: the good cell evaluated with its export unit's numbers ...
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
    # ... the diverged one failed, why said (squeue's states of both its jobs), shown as missing.
    assert bad.state == "failed" and bad.name not in {s.cell for s in scores}
    assert f"training job {bad_train} FAILED (its log: " in bad.error
    assert f"export job {bad_step} CANCELLED (it never started)" in bad.error
    assert re.search(re.escape(good.name) + r"\s+evaluated\s+3/3\s.*\d+\.\d$", console, re.M)
    assert re.search(re.escape(bad.name) + r"\s+failed\s.*missing$", console, re.M)
    # Harvested twice, the registry stays the same.
    before = registry_rows(study_dir)
    assert launcher("study", "status", str(path))[0] == 0 and registry_rows(study_dir) == before

    # A second run submits nothing (one cell evaluated, the other failed) ...
    code, console = launcher("study", "run", str(path))
    assert code == 1 and queued_jobs(slurm, earlier) == submitted and registry_rows(study_dir) == before
    # ... unless told to retry the failed cell (a dry run first: only that cell's commands, nothing submitted) ...
    code, console = launcher("study", "run", str(path), "--retry-failed", "--dry-run")
    assert code == 0 and f"# {bad.name}\n" in console and good.name not in console
    assert queued_jobs(slurm, earlier) == submitted and registry_rows(study_dir) == before
    # ... then both its jobs again, the export after the new training.
    code, console = launcher("study", "run", str(path), "--retry-failed")
    assert code == 0, console
    again = json.loads((bad_dir / "jobs.json").read_text())
    assert set(queued_jobs(slurm, earlier)) - set(submitted) == {again["train"], again["units"]["export"]}
    assert job_field(slurm, again["units"]["export"], "Dependency") in (
        f"afterok:{again['train']}(unfulfilled)", f"afterok:{again['train']}(failed)", "(null)")
    for job in (again["train"], again["units"]["export"]):
        slurm.wait_for_state(job, ENDED, 300)
    assert launcher("study", "status", str(path))[0] == 0
    cells, _ = registry_rows(study_dir)
    after = {c.axes["optimizer.lr"]: c for c in cells}
    assert after[GOOD] == good and after[BAD].state == "failed" and f"training job {again['train']}" in after[BAD].error


HOSTILE = "study $(touch pwned-dollar) `touch pwned-tick` 'q' ;touch pwned-semi"


def test_dry_run_writes_job_scripts_whose_values_stay_data_and_submits_nothing(small_dataset, tmp_path, monkeypatch,
                                                                              slurm):
    dataset, _, _ = small_dataset
    earlier = frozenset(queued_jobs(slurm))
    hostile = tmp_path / HOSTILE
    hostile.mkdir()
    monkeypatch.chdir(hostile)  # the jobs' working directory too
    path = slurm_study(hostile, dataset, "grid", {"account": HOSTILE, "gpus_per_node": 2})
    code, console = launcher("study", "run", str(path), "--dry-run")
    assert code == 0 and console.endswith("launcher: dry run: nothing submitted\n"), console
    study_dir = hostile / "grid"
    assert queued_jobs(slurm, earlier) == [] and not (study_dir / REGISTRY_FILE).exists()
    cells = sorted(p for p in (study_dir / "cells").iterdir())
    assert len(cells) == 2
    for directory in cells:
        train, step = directory / "run" / "slurm.sbatch", directory / "units" / "export.sbatch"
        assert shlex.quote(str(train)) in console and shlex.quote(str(step)) in console
        assert not (directory / "jobs.json").exists()
        for script in (train, step):
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        directives = [shlex.split(line[len("#SBATCH "):])[0] for line in step.read_text().splitlines()
                      if line.startswith("#SBATCH ")]
        assert f"--account={HOSTILE}" in directives and "--gpus-per-node=1" in directives
        assert f"--output={directory}/units/export-%j.out" in directives
        # The unit's script run as SLURM would run it: the values arrive intact (the cell has not trained, so
        # it leaves its reason in its record, in the cell's directory), and none ran as a command.
        job = subprocess.run(["bash", str(step)], env={**os.environ, "SLURM_JOB_ID": "7"},
                             capture_output=True, text=True, timeout=300)
        assert job.returncode == 1, job.stderr[-3000:]
        error = json.loads((directory / "units" / "export.json").read_text())
        assert error["cell"] == directory.name and error["job"] == "7" and "metrics.jsonl" in error["error"]
    assert not list(tmp_path.rglob("pwned*")), "a value was executed as a command"

    # Only SLURM jobs can be written without running.
    local = study_file(hostile, dataset, "local")
    code, console = launcher("study", "run", str(local), "--dry-run")
    assert code == 2 and "--dry-run writes SLURM jobs (launch.backend: slurm)" in console
