"""The scaling study under SLURM (``launch.backend: slurm``): each cell's steps as jobs, its evaluation fanned
out one job per unit (launcher.cells.evaluation_units), their results harvested into the registry on the
submitting host.

    study run (submitting host)                            compute nodes
    sbatch run/slurm.sbatch                           ─►   training job: the launcher's own script
    sbatch --dependency=afterok:<train> units/export.sbatch ─► ``study step --unit export``: the export, the
                                                           training's cost, retrieval on the datasets
    sbatch --dependency=afterok:<export> units/squad-seed1.sbatch ─► the seed's English-SQuAD model, where the
                                                           study's XTREME-R tasks share it (XQuAD, MLQA ...)
    sbatch --dependency=afterok:<export>[:<squad-seed1>] units/xnli-seed1.sbatch ─► one (task, fine-tuning seed)
    ... one job per (task, seed); every dependent job with --kill-on-invalid-dep=yes
    study run / study status (submitting host): harvest units/<unit>.json into registry.sqlite

Why files: SQLite's WAL coordinates writers through shared memory on one host, so the jobs never open
registry.sqlite. Each unit's job leaves one JSON file, written atomically (a temporary file renamed over it),
and the runner records them. A cell's directory holds, beside ``run.yaml`` and ``run/``:

- ``jobs.json``: the last submission: ``train`` (its job id; null when the cell had trained to its last step
  already), ``units`` (every evaluation unit of the cell: its job id, or null when its record was in before
  this submission), ``config_sha256`` of its run config, ``submitted_at``.
- ``units/<unit>.sbatch``: a unit's job script; its console in ``units/<unit>-<job>.out``.
- ``units/<unit>.json`` (the unit's job's): ``error`` (null, or why it failed), ``scores`` (a list of
  Registry.put_scores's arguments, less the cell), ``cost`` (the export unit's: Registry.put_cost's arguments,
  null unless the training had finished), ``cell``, ``unit``, ``config_sha256``, ``job``, ``finished_at``.

Harvesting, under the study's lock: a cell whose units have all left records without an error becomes
evaluated (cost, then every unit's scores with their per-example outcomes, then the state: each write a
transaction, the state last, so a harvest cut short is done again whole, and a cell harvested twice stays the
same). While a unit without a record has a live job the cell is running; once none has, it is failed, naming
each unit that failed and why (its error, or its job's state: training failed, so SLURM cancelled the jobs
after it; or a job was killed), its cost recorded if the export unit left one. ``--retry-failed`` submits
only the units without a good record (and the training if it had not finished), each waiting only for those
of them it needs: the other records stay, their jobs are not run again. Files whose ``config_sha256`` is not
the cell's registered one belong to an earlier config and are ignored. Evaluated cells are not looked at.

A job is live while ``squeue -h -j <jobs> --states=all -o "%i %T"`` shows it in a state other than a finished
one (FINISHED below); a job it does not list (or squeue's "Invalid job id") SLURM has forgotten (it ended
minutes ago: MinJobAge). Where squeue is not on PATH, or fails otherwise (the controller not answering), the
jobs count as live: the cell stays running until its records appear, rather than being failed, and
resubmitted with --retry-failed, while its jobs may still run. squeue is asked before the files are read
again, so a job that ends in between has left its file by then.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from data_prep.files import write_atomically
from data_prep.typed_config import ConfigError, read_yaml
from launcher.backends import BACKENDS, LaunchFile, Request, run_environment
from launcher.cells import (EXPORT, UNITS, CellFailed, StudyBusy, changed_cells, evaluation_units, exclusive,
                            read_record, register, training_cost, unit_file, unit_scores)
from launcher.cluster import ClusterConfig
from launcher.launch import write_launch_file
from launcher.slurm import log_pattern, sbatch as _sbatch, site_options
from launcher.study_config import CellPlan, StudyConfig, load_study
from weam_ds.config import load_run_config
from weam_ds.registry import REGISTRY_FILE, Registry, RegistryError, config_sha256
from weam_ds.registry_rows import Cell
from weam_ds.run_dir import RunDir

log = logging.getLogger(__name__)

JOBS, TRAIN = "jobs.json", "train"
FINISHED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                      "PREEMPTED", "REVOKED", "TIMEOUT"})
"""squeue's states of a job that will not run again (a requeued job is PENDING); any other state is live."""
FORGOTTEN = "no longer known to SLURM"


# --- study run ----------------------------------------------------------------------------------------------


def submit(path: Path, study: StudyConfig, plans: list[CellPlan], retry_failed: bool) -> list[str]:
    """Harvests, then submits every cell that is not evaluated, has no live submission and has not failed
    (unless ``retry_failed``); returns the failed cells."""
    study_dir = Path(study.study_dir)
    with Registry(study_dir / REGISTRY_FILE) as registry:
        _refuse_changes_in_flight(path, study, plans, registry)
        register(path, study, plans, registry)
        in_flight = _harvest(study_dir, registry)
        states = {cell.name: cell.state for cell in registry.cells()}
        todo = _to_submit(plans, states, in_flight, retry_failed)
        skipped = sum(states[p.name] == "failed" for p in plans) if not retry_failed else 0
        log.info("study %s: %d cells, %d evaluated, %d in SLURM, %d to submit%s", study.name, len(plans),
                 sum(s == "evaluated" for s in states.values()), len(in_flight), len(todo),
                 f", {skipped} failed before (--retry-failed submits them)" if skipped else "")
        units = list(evaluation_units(study))
        for plan in todo:
            jobs = _submit(plan, _write_scripts(path, study, plan, _trained(plan)), units)
            registry.set_state(plan.name, "running")
            log.info("cell %s: %s", plan.name, ", ".join(f"{name} job {job}" for name, job in
                                                         [(TRAIN, jobs[TRAIN]), *jobs["units"].items()] if job))
        return [cell.name for cell in registry.cells() if cell.state == "failed"]


def dry_run(path: Path, study: StudyConfig, plans: list[CellPlan], retry_failed: bool) -> None:
    """Writes the job scripts of the cells that ``submit`` would submit and prints their sbatch commands;
    writes nothing into the registry and submits nothing."""
    study_dir = Path(study.study_dir)
    known = {}
    if (study_dir / REGISTRY_FILE).is_file():
        with Registry(study_dir / REGISTRY_FILE, readonly=True) as registry:
            known = {cell.name: cell for cell in registry.cells()}
    afresh = set(changed_cells(path, study, plans, known))  # pending again, once registered anew
    kept = [cell for name, cell in known.items() if name not in afresh]
    outcomes = _outcomes(study_dir, kept)
    states = {cell.name: outcomes[cell.name].state if cell.name in outcomes else cell.state for cell in kept}
    in_flight = {name for name, seen in outcomes.items() if seen.state == "running"}
    for plan in _to_submit(plans, states, in_flight, retry_failed):
        jobs = _write_scripts(path, study, plan, plan.name not in afresh and _trained(plan))
        print(f"# {plan.name}\n{_commands(jobs)}")
    print("launcher: dry run: nothing submitted")


def _to_submit(plans: list[CellPlan], states: dict[str, str], in_flight: set[str],
               retry_failed: bool) -> list[CellPlan]:
    return [p for p in plans if p.name not in in_flight and states.get(p.name, "pending") != "evaluated"
            and (retry_failed or states.get(p.name) != "failed")]


def _refuse_changes_in_flight(path: Path, study: StudyConfig, plans: list[CellPlan], registry: Registry) -> None:
    """A cell whose run config changed starts afresh (launcher.cells.register deletes its run): never under its jobs."""
    known = {cell.name: cell for cell in registry.cells()}
    changed = [known[name] for name in changed_cells(path, study, plans, known)]
    busy = [name for name, seen in _outcomes(Path(study.study_dir), changed).items() if seen.state == "running"]
    if busy:
        raise ConfigError(f"{path}: changes the run config of cells whose jobs are in SLURM: {'; '.join(busy)} "
                          f"(wait for them, or scancel the jobs in their {JOBS})")


def _trained(plan: CellPlan) -> bool:
    """Whether the cell's training has its last step's checkpoint: a retried evaluation needs no training job."""
    return RunDir(plan.run_dir).resume_tag()[0] == f"step{plan.run['train']['steps']}"


def _write_scripts(path: Path, study: StudyConfig, plan: CellPlan, trained: bool) -> dict[str, tuple]:
    """Writes the job scripts of the cell's next submission: its training (the launcher's own script, as
    ``launcher run`` writes it; none when ``trained``) and each evaluation unit without a good record; returns
    them in submission order, each with the jobs before it in the same submission that it waits for."""
    cluster = study.launch
    graph, sha = evaluation_units(study), config_sha256(plan.run)
    todo = [unit for unit in graph if not _recorded(plan.directory, unit, sha)]
    files, jobs = [], {}
    if not trained:
        launch = BACKENDS["slurm"](Request(plan.config_file.resolve(), load_run_config(plan.config_file),
                                           _named(cluster, f"train:{plan.name}")))
        files += launch.files
        jobs[TRAIN] = (Path(launch.argv[-1]), ())  # sbatch SCRIPT
        RunDir(plan.run_dir).log(0).parent.mkdir(parents=True, exist_ok=True)  # sbatch opens the job's output there
    for unit in todo:
        script = plan.directory / UNITS / f"{unit}.sbatch"
        files.append(LaunchFile(script, _unit_script(path, _named(cluster, f"{unit}:{plan.name}"), plan, unit),
                                0o700))
        jobs[unit] = (script, (*(n for n in graph[unit] if n in todo), *((TRAIN,) if unit == EXPORT and not trained
                                                                          else ())))
    (plan.directory / UNITS).mkdir(exist_ok=True)
    for file in files:
        write_launch_file(file)
    return jobs


def _recorded(cell_dir: Path, unit: str, sha: str) -> bool:
    """Whether the unit has left a record of its results under the config ``sha`` (not of its failure)."""
    try:
        record = read_record(unit_file(cell_dir, unit), sha, ("error", "scores"))
    except CellFailed:
        return False
    return record is not None and record["error"] is None


def _named(cluster: ClusterConfig, job: str) -> ClusterConfig:
    """The cluster settings with the job's own name (``weam-train:<cell>``, or the cluster's job_name first)."""
    name = f"{cluster.slurm.job_name or 'weam'}-{job}"
    return dataclasses.replace(cluster, slurm=dataclasses.replace(cluster.slurm, job_name=name))


def _unit_script(study_file: Path, cluster: ClusterConfig, plan: CellPlan, unit: str) -> str:
    """An evaluation unit's job: ``study step --unit`` for the cell on one node (one GPU when the cluster's
    nodes have GPUs), in this working directory and with the training's environment. Every value is quoted for
    the shell (``#SBATCH`` lines too: sbatch reads them with shell-like quoting)."""
    q = shlex.quote
    s = cluster.slurm
    options = [f"--job-name={q(s.job_name)}", "--nodes=1", "--ntasks=1"]
    if s.gpus_per_node is not None:
        options.append("--gpus-per-node=1")
    if s.cpus_per_task is not None:
        options.append(f"--cpus-per-task={s.cpus_per_task}")
    console = log_pattern(plan.directory / UNITS, f"{unit}-%j.out")
    options += ["--export=ALL", "--open-mode=append", f"--output={q(console)}", *site_options(cluster)]
    command = [sys.executable, "-m", "launcher", "study", "step", str(study_file.resolve()), "--cell", plan.name,
               "--unit", unit]
    lines = [
        "#!/bin/bash",
        f"# A weam-ds study job written by `python -m launcher study run`: the cell's evaluation unit {unit},",
        f"# submitted after the jobs it needs; it leaves {UNITS}/{unit}.json in the cell's directory.",
        *(f"#SBATCH {option}" for option in options),
        "",
        "set -u",
        ': "${SLURM_JOB_ID:?not in a SLURM job: submit this script with sbatch}"',
        f"cd {q(os.getcwd())} || exit 1",
        *(f"export {key}={q(value)}" for key, value in run_environment(cluster).items()),
        f"exec {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


def _submit(plan: CellPlan, jobs: dict[str, tuple], units: list[str]) -> dict:
    """Submits the cell's ``jobs`` (``_write_scripts``), each after those it waits for, and records them and
    its evaluation ``units`` in its jobs.json; returns that record. When an sbatch fails, the jobs submitted
    before it are cancelled."""
    sha = config_sha256(plan.run)
    units = {unit: None for unit in units}
    for unit in units:
        if unit in jobs:
            unit_file(plan.directory, unit).unlink(missing_ok=True)  # its failure, from a submission before
    record = {TRAIN: None, "units": units, "config_sha256": sha, "submitted_at": _now()}
    ids = {}
    try:
        for name, (script, needs) in jobs.items():
            after = ([f"--dependency=afterok:{':'.join(ids[n] for n in needs)}", "--kill-on-invalid-dep=yes"]
                     if needs else [])
            ids[name] = _sbatch(script, *after)
            record = {**record, TRAIN: ids.get(TRAIN), "units": {**units, **{n: j for n, j in ids.items()
                                                                              if n != TRAIN}}}
            # Recorded at once: a runner killed before the next sbatch leaves no job unknown.
            _write_json(plan.directory / JOBS, record)
    except ConfigError:
        if ids and shutil.which("scancel"):  # no jobs without the record that harvests them
            subprocess.run(["scancel", *ids.values()], check=False)
        (plan.directory / JOBS).unlink(missing_ok=True)
        raise
    return record


def _commands(jobs: dict[str, tuple]) -> str:
    """The sbatch commands ``submit`` gives for a cell's ``jobs``, as a shell reads them."""
    lines = []
    for name, (script, needs) in jobs.items():
        after = ("--dependency=afterok:" + ":".join(f'"${{{_variable(n)}%%;*}}"' for n in needs)
                 + " --kill-on-invalid-dep=yes " if needs else "")
        lines.append(f"{_variable(name)}=$(sbatch --parsable {after}{shlex.quote(str(script))})")
    return " &&\n".join(lines)


def _variable(job: str) -> str:
    """A shell variable named after the job (unit names hold dashes)."""
    return re.sub(r"\W", "_", job)


# --- study step (on a compute node) ---------------------------------------------------------------------------


def step(path: Path, cell: str, unit: str) -> int:
    """``study step``: one evaluation unit of the cell (``EXPORT`` records the training's cost too), its
    record left in units/<unit>.json, with its scores or the reason it failed; never opens the registry.
    Returns 0 when done, 1 when failed."""
    study = load_study(path)
    plan = _read_plan(study, cell)
    if unit not in evaluation_units(study):  # also keeps the unit's file name inside units/
        raise ConfigError(f"--unit: {unit!r} is not one of the study's ({' '.join(evaluation_units(study))})")
    stamp = {"cell": cell, "unit": unit, "config_sha256": config_sha256(plan.run),
             "job": os.environ.get("SLURM_JOB_ID")}
    cost = None
    try:
        if unit == EXPORT:
            cost = training_cost(study.launch, plan)
        scores = unit_scores(study, plan, unit)
    except Exception as exc:  # whatever ends the unit, the runner learns why from its record
        expected = isinstance(exc, (CellFailed, RegistryError))
        reason = str(exc) if expected else f"{type(exc).__name__}: {exc} (the traceback is in the job's log)"
        _write_json(unit_file(plan.directory, unit), {**stamp, "error": reason, "cost": cost, "scores": [],
                                                      "finished_at": _now()})
        if not expected:
            raise
        log.error("cell %s, unit %s failed: %s", cell, unit, exc)
        return 1
    _write_json(unit_file(plan.directory, unit), {**stamp, "error": None, "cost": cost, "scores": scores,
                                                  "finished_at": _now()})
    log.info("cell %s, unit %s: %d scores in %s", cell, unit, len(scores), unit_file(plan.directory, unit))
    return 0


def _read_plan(study: StudyConfig, cell: str) -> CellPlan:
    """The cell as ``study run`` wrote it, read back from its run.yaml. Nothing is written here (other jobs of
    the study read those files); the cell's axes and pairs are the registry's, and the step needs neither."""
    directory = Path(study.study_dir) / "cells" / cell
    if Path(cell).name != cell or cell in ("", ".", "..") or not (directory / "run.yaml").is_file():
        raise ConfigError(f"--cell: {cell!r} is not a cell of the study (no {directory / 'run.yaml'})")
    run = read_yaml(directory / "run.yaml", "run config")
    return CellPlan(cell, axes={}, run=run, pairs=[], directory=directory)


# --- harvesting (study run and study status) ----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a cell's directory says of its last submission."""

    state: str
    """evaluated (every unit's scores in), failed (a unit's error, or jobs that ended without a record) or
    running."""
    error: str | None = None
    cost: dict | None = None
    scores: tuple[dict, ...] = ()


def _harvest(study_dir: Path, registry: Registry) -> set[str]:
    """Records in the registry what the cells' jobs have left (the module's docstring says how); returns the
    cells whose submissions are live."""
    cells = registry.cells()
    outcomes = _outcomes(study_dir, cells)
    for cell in cells:
        if cell.name in outcomes and outcomes[cell.name].state != cell.state:
            _record(registry, cell.name, outcomes[cell.name])
    in_flight = {name for name, seen in outcomes.items() if seen.state == "running"}
    if in_flight and shutil.which("squeue") is None:
        log.warning("squeue is not on PATH: %d cells with jobs count as running until their units' records "
                    "appear", len(in_flight))
    return in_flight


def harvest_submitted(study_dir: Path) -> None:
    """``study status``'s harvest, when some cell has jobs; skipped while a runner holds the study (it harvests
    itself)."""
    if not any((study_dir / "cells").glob(f"*/{JOBS}")):
        return
    try:
        with exclusive(study_dir), Registry(study_dir / REGISTRY_FILE) as registry:
            _harvest(study_dir, registry)
    except StudyBusy:
        log.warning("%s: a study runner is working there; the table shows what it has recorded so far", study_dir)


def _outcomes(study_dir: Path, cells: list[Cell]) -> dict[str, Outcome]:
    """What the directories of those ``cells`` that are not evaluated say of their last submissions."""
    found = {}
    for cell in cells:
        if cell.state != "evaluated":
            seen = _observe(study_dir / "cells" / cell.name, Path(cell.config["output_dir"]), cell.config_sha256)
            if seen is not None:
                found[cell.name] = seen
    return found


def _observe(directory: Path, run_dir: Path, sha: str) -> Outcome | None:
    """The outcome of the cell's last submission under the config ``sha``; None when it has none."""
    try:
        jobs = read_record(directory / JOBS, sha, (TRAIN, "units"))
        if jobs is None:
            return None
        records = _records(directory, jobs, sha)
        if all(records.values()):
            return _ended(records, [])
        states = _job_states([job for unit, job in jobs["units"].items() if job and not records[unit]]
                             + ([jobs[TRAIN]] if jobs[TRAIN] else []))
        records = _records(directory, jobs, sha)  # after squeue: a job that ended meanwhile has left its file
    except CellFailed as exc:
        return Outcome("failed", error=str(exc))
    live = [unit for unit, job in jobs["units"].items() if not records[unit] and job and _is_live(states[job])]
    if live:
        return Outcome("running")
    return _ended(records, _why_no_record(jobs, records, states, directory, run_dir))


def _records(directory: Path, jobs: dict, sha: str) -> dict[str, dict | None]:
    """Per evaluation unit of the submission its record, or None while it has left none."""
    return {unit: read_record(unit_file(directory, unit), sha, ("error", "cost", "scores")) for unit in jobs["units"]}


def _ended(records: dict[str, dict | None], missing: list[str]) -> Outcome:
    """The cell once no unit's job runs: evaluated when every unit has left its scores, else failed, naming
    each unit that has not (its error; ``missing``: why the jobs of the others left no record)."""
    cost = (records.get(EXPORT) or {}).get("cost")
    failed = [f"{unit}: {record['error']}" for unit, record in records.items() if record and record["error"]]
    if failed or missing:
        return Outcome("failed", error="; ".join(failed + missing), cost=cost)
    return Outcome("evaluated", cost=cost, scores=tuple(s for record in records.values() for s in record["scores"]))


def _why_no_record(jobs: dict, records: dict, states: dict[str, str | None], directory: Path,
                   run_dir: Path) -> list[str]:
    """The ends of the jobs of the units without a record, as squeue tells them; the training's first, when it
    ran in this submission and did not complete."""
    why = []
    for unit, job in jobs["units"].items():
        if not records[unit]:
            console = directory / UNITS / f"{unit}-{job}.out"
            why.append(f"{unit} job {job} {states[job] or 'state unknown'} ({_ran(console)})" if job
                       else f"{unit}: its record is gone")
    train = jobs[TRAIN]
    if why and train and states[train] not in ("COMPLETED", FORGOTTEN):
        console = RunDir(run_dir).log(0).parent / f"slurm-{train}.out"
        why.insert(0, f"training job {train} {states[train] or 'state unknown'} ({_ran(console)})")
    return why


def _ran(console: Path) -> str:
    return f"its log: {console}" if console.is_file() else "it never started"


def _is_live(state: str | None) -> bool:
    return state is None or (state != FORGOTTEN and state not in FINISHED)


def _job_states(jobs: list[str]) -> dict[str, str | None]:
    """squeue's state of each job (PENDING, RUNNING, COMPLETED ...), FORGOTTEN, or None when squeue cannot
    tell (not on PATH, or failing otherwise). One squeue for them all: a study has hundreds of jobs."""
    if not jobs or shutil.which("squeue") is None:
        return dict.fromkeys(jobs)
    try:
        # --states=all: without it squeue lists a job that has ended as nothing at all, as if forgotten.
        done = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "--states=all", "-o", "%i %T"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("squeue -j %s: %s; their cells count as running", ",".join(jobs), exc)
        return dict.fromkeys(jobs)
    if done.returncode == 0:
        listed = dict(line.split()[:2] for line in done.stdout.splitlines() if len(line.split()) >= 2)
        return {job: listed.get(job, FORGOTTEN) for job in jobs}
    if "Invalid job id" in done.stderr:
        return dict.fromkeys(jobs, FORGOTTEN)
    log.warning("squeue -j %s: %s; their cells count as running", ",".join(jobs), done.stderr.strip())
    return dict.fromkeys(jobs)


def _record(registry: Registry, cell: str, seen: Outcome) -> None:
    try:
        if seen.cost is not None:
            registry.put_cost(cell, **seen.cost)
        for record in seen.scores:
            registry.put_scores(cell, **record)
    except (RegistryError, TypeError) as exc:  # a record the registry refuses (a NaN score ...)
        seen = Outcome("failed", error=f"its results cannot be recorded: {exc}")
    registry.set_state(cell, seen.state, error=seen.error)
    log.info("cell %s: %s%s", cell, seen.state, f" ({seen.error})" if seen.error else "")


def _write_json(path: Path, record: dict) -> None:
    write_atomically(path, json.dumps(record) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
