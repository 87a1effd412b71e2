"""The scaling study under SLURM (``launch.backend: slurm``): each cell's steps as two jobs, their results
harvested into the registry on the submitting host.

    study run (submitting host)                 compute nodes
    sbatch run/slurm.sbatch               ─►    training job: the launcher's own script (a torchrun agent per node)
    sbatch --dependency=afterok:<train>   ─►    step job: ``study step`` (export, evaluation) ─► results.json
           --kill-on-invalid-dep=yes step.sbatch                                            or error.json
    study run / study status (submitting host): harvest those files into registry.sqlite

Why files: SQLite's WAL coordinates writers through shared memory on one host, so the jobs never open
registry.sqlite. A step job leaves one JSON file in its cell's directory, written atomically (a temporary
file renamed over it), and the runner records it. A cell's directory holds, beside ``run.yaml`` and ``run/``:

- ``step.sbatch``: the step job's script; its console in ``step-<job>.out``.
- ``jobs.json``: the last submission: ``train`` and ``step`` job ids (``train`` null when the cell had
  trained to its last step already), ``config_sha256`` of its run config, ``submitted_at``.
- ``results.json`` (the step job's): ``cost`` (Registry.put_cost's arguments), ``scores`` (a list of
  Registry.put_scores's arguments, less the cell), ``cell``, ``config_sha256``, ``job``, ``finished_at``.
- ``error.json`` (the step job's, instead, when it fails): ``error`` (why), ``cost`` (null unless the
  training had finished), ``cell``, ``config_sha256``, ``job``, ``finished_at``.

Harvesting, under the study's lock: a cell with results.json becomes evaluated (cost, then scores with their
per-example outcomes, then the state: each write a transaction, the state last, so a harvest cut short is
done again whole, and a cell harvested twice stays the same); with error.json it becomes failed with that
reason; with only jobs.json it is running while its submission is live, and failed once it is not (its
training failed, so SLURM cancelled its step job; or a job was killed). Files whose ``config_sha256`` is not
the cell's registered one belong to an earlier config and are ignored. Evaluated cells are not looked at.

A submission is live while its last job (the step job) is: ``squeue -h -j <job> --states=all -o %T`` shows a
state other than a finished one (FINISHED below). squeue's "Invalid job id" means SLURM has forgotten the job (it
ended minutes ago: MinJobAge). Where squeue is not on PATH, or fails otherwise (the controller not answering), the
submission counts as live: the cell stays running until its results or its error appear, rather than being
failed, and resubmitted with --retry-failed, while its jobs may still run. squeue is asked before the files
are read again, so a step job that ends in between has left its file by then.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from data_prep.typed_config import ConfigError, read_yaml
from launcher.backends import BACKENDS, LaunchFile, Request, run_environment
from launcher.cluster import ClusterConfig
from launcher.launch import write_launch_file
from launcher.slurm import log_pattern, sbatch as _sbatch
from launcher.study import (CellFailed, StudyBusy, changed_cells, exclusive, export_cell, register, score_records,
                            training_cost)
from launcher.study_config import CellPlan, StudyConfig, load_study
from weam_ds.config import load_run_config
from weam_ds.registry import REGISTRY_FILE, Cell, Registry, RegistryError, config_sha256
from data_prep.files import write_atomically
from weam_ds.run_dir import RunDir

log = logging.getLogger(__name__)

JOBS, RESULTS, ERROR, STEP_SCRIPT = "jobs.json", "results.json", "error.json", "step.sbatch"
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
        for plan in todo:
            train, step = _write_scripts(path, study, plan, _trained(plan))
            jobs = _submit(plan, train, step)
            registry.set_state(plan.name, "running")
            log.info("cell %s: %s", plan.name, f"training job {jobs['train']}, then step job {jobs['step']}"
                     if jobs["train"] else f"step job {jobs['step']} (it has trained)")
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
        train, step = _write_scripts(path, study, plan, plan.name not in afresh and _trained(plan))
        print(f"# {plan.name}\n{_commands(train, step)}")
    print("launcher: dry run: nothing submitted")


def _to_submit(plans: list[CellPlan], states: dict[str, str], in_flight: set[str],
               retry_failed: bool) -> list[CellPlan]:
    return [p for p in plans if p.name not in in_flight and states.get(p.name, "pending") != "evaluated"
            and (retry_failed or states.get(p.name) != "failed")]


def _refuse_changes_in_flight(path: Path, study: StudyConfig, plans: list[CellPlan], registry: Registry) -> None:
    """A cell whose run config changed starts afresh (study.register deletes its run): never under its jobs."""
    known = {cell.name: cell for cell in registry.cells()}
    changed = [known[name] for name in changed_cells(path, study, plans, known)]
    busy = [name for name, seen in _outcomes(Path(study.study_dir), changed).items() if seen.state == "running"]
    if busy:
        raise ConfigError(f"{path}: changes the run config of cells whose jobs are in SLURM: {'; '.join(busy)} "
                          f"(wait for them, or scancel the jobs in their {JOBS})")


def _trained(plan: CellPlan) -> bool:
    """Whether the cell's training has its last step's checkpoint: a retried evaluation needs no training job."""
    return RunDir(plan.run_dir).resume_tag()[0] == f"step{plan.run['train']['steps']}"


def _write_scripts(path: Path, study: StudyConfig, plan: CellPlan, trained: bool) -> tuple[Path | None, Path]:
    """Writes the cell's training job script (the launcher's own, as ``launcher run`` writes it; None when
    ``trained``) and its step job script; returns their paths."""
    cluster = study.launch
    files, train = [], None
    if not trained:
        launch = BACKENDS["slurm"](Request(plan.config_file.resolve(), load_run_config(plan.config_file),
                                           _named(cluster, f"train:{plan.name}")))
        files += launch.files
        train = Path(launch.argv[-1])  # sbatch SCRIPT
        RunDir(plan.run_dir).log(0).parent.mkdir(parents=True, exist_ok=True)  # sbatch opens the job's output there
    step = plan.directory / STEP_SCRIPT
    files.append(LaunchFile(step, _step_script(path, _named(cluster, f"step:{plan.name}"), plan), 0o700))
    for file in files:
        write_launch_file(file)
    return train, step


def _named(cluster: ClusterConfig, job: str) -> ClusterConfig:
    """The cluster settings with the job's own name (``weam-train:<cell>``, or the cluster's job_name first)."""
    name = f"{cluster.slurm.job_name or 'weam'}-{job}"
    return dataclasses.replace(cluster, slurm=dataclasses.replace(cluster.slurm, job_name=name))


def _step_script(study_file: Path, cluster: ClusterConfig, plan: CellPlan) -> str:
    """The step job: ``study step`` for the cell on one node (one GPU when the cluster's nodes have GPUs),
    in this working directory and with the training's environment. Every value is quoted for the shell
    (``#SBATCH`` lines too: sbatch reads them with shell-like quoting)."""
    q = shlex.quote
    s = cluster.slurm
    options = [f"--job-name={q(s.job_name)}", "--nodes=1", "--ntasks=1"]
    if s.gpus_per_node is not None:
        options.append("--gpus-per-node=1")
    if s.cpus_per_task is not None:
        options.append(f"--cpus-per-task={s.cpus_per_task}")
    for name in ("partition", "account", "time"):
        if getattr(s, name) is not None:
            options.append(f"--{name}={q(getattr(s, name))}")
    options += ["--export=ALL", "--open-mode=append", f"--output={q(log_pattern(plan.directory, 'step-%j.out'))}",
                *(q(d) for d in s.directives)]
    command = [sys.executable, "-m", "launcher", "study", "step", str(study_file.resolve()), "--cell", plan.name]
    lines = [
        "#!/bin/bash",
        "# A weam-ds study step written by `python -m launcher study run`: the cell's export and evaluation,",
        f"# submitted to run after its training job; it leaves {RESULTS} (or {ERROR}) in the cell's directory.",
        *(f"#SBATCH {option}" for option in options),
        "",
        "set -u",
        ': "${SLURM_JOB_ID:?not in a SLURM job: submit this script with sbatch}"',
        f"cd {q(os.getcwd())} || exit 1",
        *(f"export {key}={q(value)}" for key, value in run_environment(cluster).items()),
        f"exec {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


def _submit(plan: CellPlan, train: Path | None, step: Path) -> dict:
    """Submits the cell's jobs and records them in its jobs.json; returns that record."""
    for stale in (RESULTS, ERROR):
        (plan.directory / stale).unlink(missing_ok=True)
    jobs = {"train": None, "step": None, "config_sha256": config_sha256(plan.run), "submitted_at": _now()}
    if train is not None:
        jobs["train"] = _sbatch(train)
        # Recorded at once: a runner killed before the next sbatch leaves no training job unknown.
        _write_json(plan.directory / JOBS, jobs)
    after = [f"--dependency=afterok:{jobs['train']}", "--kill-on-invalid-dep=yes"] if train is not None else []
    try:
        jobs["step"] = _sbatch(step, *after)
    except ConfigError:
        if train is not None:  # no training job without the step that records it
            if shutil.which("scancel"):
                subprocess.run(["scancel", jobs["train"]], check=False)
            (plan.directory / JOBS).unlink(missing_ok=True)
        raise
    _write_json(plan.directory / JOBS, jobs)
    return jobs


def _commands(train: Path | None, step: Path) -> str:
    """The sbatch commands ``submit`` gives for a cell, as a shell reads them."""
    if train is None:
        return shlex.join(["sbatch", "--parsable", str(step)])
    return (f"train=$({shlex.join(['sbatch', '--parsable', str(train)])}) && sbatch --parsable "
            f'--dependency=afterok:"${{train%%;*}}" --kill-on-invalid-dep=yes {shlex.quote(str(step))}')


# --- study step (on a compute node) ---------------------------------------------------------------------------


def step(path: Path, cell: str) -> int:
    """``study step``: the cell's export and evaluation, their records left in results.json, or the reason it
    failed in error.json; never opens the registry. Returns 0 when evaluated, 1 when failed."""
    study = load_study(path)
    plan = _read_plan(study, cell)
    stamp = {"cell": cell, "config_sha256": config_sha256(plan.run), "job": os.environ.get("SLURM_JOB_ID")}
    cost = None
    try:
        cost = training_cost(study.launch, plan)
        export_cell(plan)
        scores = list(score_records(study, plan))
    except Exception as exc:  # whatever ends the step, the runner learns why from error.json
        expected = isinstance(exc, (CellFailed, RegistryError))
        reason = str(exc) if expected else f"{type(exc).__name__}: {exc} (the traceback is in the step's log)"
        _write_json(plan.directory / ERROR, {**stamp, "error": reason, "cost": cost, "finished_at": _now()})
        if not expected:
            raise
        log.error("cell %s failed: %s", cell, exc)
        return 1
    _write_json(plan.directory / RESULTS, {**stamp, "cost": cost, "scores": scores, "finished_at": _now()})
    log.info("cell %s: %d scores in %s", cell, len(scores), plan.directory / RESULTS)
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
    """evaluated (results.json), failed (error.json, or jobs that ended without either) or running."""
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
        log.warning("squeue is not on PATH: %d cells with jobs count as running until their results or errors "
                    "appear", len(in_flight))
    return in_flight


def harvest_submitted(study_dir: Path) -> None:
    """``study status``'s harvest, when some cell has jobs; skipped while a runner holds the study (it harvests
    itself)."""
    if not any(any((study_dir / "cells").glob(f"*/{name}")) for name in (JOBS, RESULTS, ERROR)):
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
        seen = _finished(directory, sha)
        jobs = _read_json(directory / JOBS, sha, ("train", "step"))
        if seen is not None or jobs is None:
            return seen
        live, why = _live(jobs, directory, run_dir)
        seen = _finished(directory, sha)  # after squeue: a job that ended meanwhile has left its file
    except CellFailed as exc:
        return Outcome("failed", error=str(exc))
    if seen is not None:
        return seen
    return Outcome("running") if live else Outcome("failed", error=why)


def _finished(directory: Path, sha: str) -> Outcome | None:
    results = _read_json(directory / RESULTS, sha, ("cost", "scores"))
    if results is not None:
        return Outcome("evaluated", cost=results["cost"], scores=tuple(results["scores"]))
    error = _read_json(directory / ERROR, sha, ("error", "cost"))
    if error is not None:
        return Outcome("failed", error=error["error"], cost=error["cost"])
    return None


def _read_json(path: Path, sha: str, keys: tuple[str, ...]) -> dict | None:
    """The record in ``path`` if it is there and belongs to the config ``sha``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CellFailed(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or "config_sha256" not in record or any(k not in record for k in keys):
        raise CellFailed(f"{path}: not a record with {', '.join(('config_sha256', *keys))}")
    return record if record["config_sha256"] == sha else None


def _live(jobs: dict, directory: Path, run_dir: Path) -> tuple[bool, str]:
    """Whether the submission is live (its last job); when it is not, why it ended without a result."""
    last = jobs["step"] or jobs["train"]
    state = _job_state(last)
    if state is None or (state != FORGOTTEN and state not in FINISHED):
        return True, ""
    logs = RunDir(run_dir).log(0).parent
    ended = []
    for kind, job, console in (("training", jobs["train"], logs / f"slurm-{jobs['train']}.out"),
                               ("step", jobs["step"], directory / f"step-{jobs['step']}.out")):
        if job:
            ran = f"its log: {console}" if console.is_file() else "it never started"
            ended.append(f"{kind} job {job} {state if job == last else _job_state(job) or 'state unknown'} ({ran})")
    return False, "its jobs ended without a result: " + "; ".join(ended)


def _job_state(job: str) -> str | None:
    """squeue's state of the job (PENDING, RUNNING, COMPLETED ...), FORGOTTEN, or None when squeue cannot
    tell (not on PATH, or failing otherwise)."""
    if shutil.which("squeue") is None:
        return None
    try:
        # --states=all: without it squeue lists a job that has ended as nothing at all, as if forgotten.
        done = subprocess.run(["squeue", "-h", "-j", job, "--states=all", "-o", "%T"], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("squeue -j %s: %s; its cell counts as running", job, exc)
        return None
    if done.returncode == 0:
        return done.stdout.split()[0] if done.stdout.split() else FORGOTTEN
    if "Invalid job id" in done.stderr:
        return FORGOTTEN
    log.warning("squeue -j %s: %s; its cell counts as running", job, done.stderr.strip())
    return None


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
