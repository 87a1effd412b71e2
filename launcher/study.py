"""``python -m launcher study run|status study.yaml``: the scaling study's grid, cell by cell.

``run`` expands the study file (launcher.study_config) into cells, registers every one in the study's
``registry.sqlite`` (weam_ds.registry) and takes each through its steps, recording each in the registry:

    pending ─► running ─► trained ─► exported ─► evaluated          (or failed, with the error;
                                                                     interrupted: Ctrl-C in its training)
               train:      export:     evaluate:
               launcher    weam_ds     Tatoeba-style retrieval on the datasets' held-out test pairs,
               backend     .export     and/or weam_ds.xtreme_r run (fine-tuning seeds)

Cells run one after another through the study's launcher backend (``launch:``), each training's console in
``cells/<cell>/study.log``; with ``launch.backend: slurm`` they run as jobs instead, and go from running to
evaluated or failed (launcher.study_slurm). Ctrl-C stops the study where it is, with one line:
a cell stopped in its training checkpoints and becomes ``interrupted``; one stopped in its export or evaluation
stays ``trained`` or ``exported``. A second ``run`` skips evaluated cells, continues interrupted ones
(training resumes from its checkpoints) and retries failed ones with ``--retry-failed``. A study file
that now gives a trained cell another run config is refused, naming the cells; a cell whose training had not
finished is started afresh with the new config; an added axis value adds only its cells. One runner at a
time holds a study directory. ``status`` prints every cell's state, step, cost and headline score.

A cell's steps, and the names both runners share, are launcher.cells': its evaluation is a graph of units
(``evaluation_units``), each run alone by ``study step --unit`` and leaving its record in ``units/<unit>.json``:
under SLURM one job per unit; here, on a machine with several GPUs, one process per GPU (``start_units`` decides
which unit starts where). On CPU or one GPU the runner evaluates the cell itself, unit after unit
(``score_records``): the same seeds, the same files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from data_prep.typed_config import ConfigError
from launcher import study_slurm
from launcher.backends import BACKENDS, Request
from launcher.cells import (EXPORT, TRAINED, CellFailed, claim_xtreme_r_folder, evaluation_units, exclusive,
                            export_cell, read_record, register, retrieval_records, score_records, training_cost,
                            unit_file)
from launcher.launch import STOPPED_CODES, execute
from launcher.study_config import CellPlan, StudyConfig, expand, load_study
from launcher.study_plan import cost_plan
from weam_ds.config import load_run_config
from weam_ds.registry import REGISTRY_FILE, Registry, config_sha256
from weam_ds.run_dir import RunDir

log = logging.getLogger(__name__)
class StudyInterrupted(Exception):
    """Ctrl-C or SIGTERM reached the study runner: it stops after recording where the cell stands."""


def run(path: Path, retry_failed: bool = False, dry_run: bool = False) -> int:
    """Runs every cell that is not evaluated yet (under SLURM: submits its jobs, launcher.study_slurm); returns
    0 when none has failed, else 1. ``dry_run`` (SLURM only) writes the job scripts and prints the sbatch
    commands."""
    study = load_study(path)
    slurm = study.launch.backend == "slurm"
    if dry_run and not slurm:
        raise ConfigError(f"{path}: --dry-run writes SLURM jobs (launch.backend: slurm); the {study.launch.backend} "
                          "backend runs each cell here")
    with exclusive(Path(study.study_dir)):
        plans = expand(study, str(path))
        print(cost_plan(study, plans).total_line())
        if slurm:
            if dry_run:
                study_slurm.dry_run(path, study, plans, retry_failed)
                return 0
            failed = study_slurm.submit(path, study, plans, retry_failed)
        else:
            try:
                failed = _run_here(path, study, plans, retry_failed)
            except StudyInterrupted as exc:
                print(f"launcher: {exc}; `study run` again continues it", file=sys.stderr)
                return 130
    print(status_table(Path(study.study_dir)))
    if failed:
        print(f"launcher: {len(failed)} cells failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _run_here(path: Path, study: StudyConfig, plans: list[CellPlan], retry_failed: bool) -> list[str]:
    """Every cell through its steps, one after another; returns the failed cells."""
    with Registry(Path(study.study_dir) / REGISTRY_FILE) as registry:
        register(path, study, plans, registry)
        states = {cell.name: cell.state for cell in registry.cells()}
        todo = [p for p in plans if states[p.name] != "evaluated" and (retry_failed or states[p.name] != "failed")]
        skipped = [p.name for p in plans if states[p.name] == "failed" and not retry_failed]
        log.info("study %s: %d cells, %d evaluated, %d to run%s", study.name, len(plans),
                 sum(s == "evaluated" for s in states.values()), len(todo),
                 f", {len(skipped)} failed before (--retry-failed runs them)" if skipped else "")
        for plan in tqdm(todo, desc=f"study {study.name}", unit="cell", disable=None):
            try:
                _run_cell(path, study, plan, registry, states[plan.name])
            except (StudyInterrupted, KeyboardInterrupt) as exc:
                raise StudyInterrupted(f"study {study.name} interrupted in cell {plan.name}") from exc
            except CellFailed as exc:
                registry.set_state(plan.name, "failed", error=str(exc))
                log.error("cell %s failed: %s", plan.name, exc)
        return [c.name for c in registry.cells() if c.state == "failed"]


def _run_cell(path: Path, study: StudyConfig, plan: CellPlan, registry: Registry, state: str) -> None:
    if state not in TRAINED:
        registry.set_state(plan.name, "running")
        try:
            _train(study, plan, registry)
        except (StudyInterrupted, KeyboardInterrupt):
            registry.set_state(plan.name, "interrupted")  # its training checkpointed as it stopped
            raise
        registry.set_state(plan.name, "trained")
    with _console_to(plan.directory / "study.log"):
        if state != "exported":
            export_cell(plan)
            registry.set_state(plan.name, "exported")
        gpus = _gpus()
        records = (_fan_out(path, study, plan, gpus) if len(gpus) > 1 and study.evaluation.xtreme_r is not None
                   else score_records(study, plan))
        for record in records:
            registry.put_scores(plan.name, **record)
    registry.set_state(plan.name, "evaluated")


def _gpus() -> list[str]:
    """The GPUs this runner may give evaluation units, as CUDA_VISIBLE_DEVICES names them."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[:count] if visible else [str(i) for i in range(count)]


def _fan_out(path: Path, study: StudyConfig, plan: CellPlan, gpus: list[str]) -> Iterator[dict]:
    """``score_records`` with the XTREME-R units in parallel, one per GPU: each a ``study step`` process (as
    under SLURM) that sees only its GPU and leaves its record in the cell's units/; the retrieval on the
    datasets here. CellFailed names every unit that failed, after the others have finished."""
    if study.evaluation.tatoeba is not None:
        yield from retrieval_records(study.evaluation.tatoeba, plan)
    claim_xtreme_r_folder(plan)
    units = {name: tuple(n for n in needs if n != EXPORT)  # exported above
             for name, needs in evaluation_units(study).items() if name != EXPORT}
    for name in units:
        unit_file(plan.directory, name).unlink(missing_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    running: dict[str, str] = {}  # unit: its GPU
    done: set[str] = set()
    with open(plan.directory / "study.log", "a", encoding="utf-8") as console:
        try:
            while True:
                free = [gpu for gpu in gpus if gpu not in running.values()]
                for name, gpu in start_units(units, set(processes), done, free):
                    command = [sys.executable, "-m", "launcher", "study", "step", str(path.resolve()), "--cell",
                               plan.name, "--unit", name]
                    processes[name] = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT,
                                                       env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu})
                    running[name] = gpu
                    log.info("cell %s: unit %s on GPU %s", plan.name, name, gpu)
                if not running:
                    break
                time.sleep(1)
                for name in [n for n in running if processes[n].poll() is not None]:
                    del running[name]
                    if processes[name].returncode == 0:
                        done.add(name)
        finally:  # a runner stopped mid-cell leaves no unit running (its seed is redone from the start)
            for name in running:
                processes[name].terminate()
                processes[name].wait()
    yield from _scores_left(plan, units, processes)


def _scores_left(plan: CellPlan, units: dict, processes: dict[str, subprocess.Popen]) -> list[dict]:
    """The scores the units left in their records; CellFailed naming each unit that left none."""
    sha, scores, failed = config_sha256(plan.run), [], []
    for name in units:
        record = read_record(unit_file(plan.directory, name), sha, ("scores", "error"))
        if record is not None and record["error"] is None:
            scores += record["scores"]
        elif record is not None:
            failed.append(f"{name}: {record['error']}")
        else:
            failed.append(f"{name}: exited with status {processes[name].returncode}" if name in processes
                          else f"{name}: not started (a unit it waits for failed)")
    if failed:
        raise CellFailed(f"evaluation units failed: {'; '.join(failed)} (their console: "
                         f"{plan.directory / 'study.log'})")
    return scores


@contextlib.contextmanager
def _console_to(path: Path):
    """Export's and evaluation's console (progress bars, scores) into the cell's log, beside its training's."""
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def _train(study: StudyConfig, plan: CellPlan, registry: Registry) -> None:
    cluster = study.launch
    launch = BACKENDS[cluster.backend](Request(plan.config_file.resolve(), load_run_config(plan.config_file), cluster))
    code = execute(launch, RunDir(plan.run_dir), dry_run=False, output=plan.directory / "study.log")
    if code in STOPPED_CODES:
        raise StudyInterrupted(f"training stopped by signal {code - 128}")
    if code != 0:
        raise CellFailed(f"training exited with status {code} (its console: {plan.directory / 'study.log'}, "
                         f"its rank logs: {RunDir(plan.run_dir).log(0).parent})")
    registry.put_cost(plan.name, **training_cost(cluster, plan))


def start_units(units: dict[str, tuple[str, ...]], started: set[str], done: set[str],
                free: list[str]) -> list[tuple[str, str]]:
    """The units to start now, each with a free device of its own: those not started whose units waited for
    are all done, in the units' order. A unit whose awaited unit failed never starts."""
    ready = [name for name, needs in units.items() if name not in started and all(n in done for n in needs)]
    return list(zip(ready, free))


def status_table(study_dir: Path) -> str:
    """One line per cell: state, step (of its steps), tokens, training FLOPs, wall time, mean headline score."""
    from weam_ds.report import headline_metric

    with Registry(study_dir / REGISTRY_FILE, readonly=True) as registry:
        cells, scores = registry.cells(), registry.scores()
    rows = [("cell", "state", "step", "tokens", "train FLOPs", "wall s", "score")]
    for cell in cells:
        mine = [s.value for s in scores if s.cell == cell.name and s.metric == headline_metric(s.task)]
        step = _last_step(Path(cell.config["output_dir"]))
        cost = cell.cost
        rows.append((cell.name, cell.state, f"{step}/{cell.config['train']['steps']}",
                     f"{cost.tokens:,}" if cost else "-", f"{cost.train_flops:.3g}" if cost else "-",
                     f"{cost.wall_seconds:.0f}" if cost else "-",
                     f"{sum(mine) / len(mine):.1f}" if mine else "missing"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    failed = [f"  {c.name}: {c.error}" for c in cells if c.state == "failed"]
    return "\n".join(lines + (["failed:"] + failed if failed else []))


def _last_step(run_dir: Path) -> int:
    try:
        lines = RunDir(run_dir).metrics.read_text(encoding="utf-8").splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def status(path: Path) -> int:
    """Prints the status table, after recording what the cells' SLURM jobs have finished (study_slurm)."""
    study = load_study(path)
    if not (Path(study.study_dir) / REGISTRY_FILE).is_file():
        raise ConfigError(f"{path}: the study has not run yet (no {Path(study.study_dir) / REGISTRY_FILE})")
    study_slurm.harvest_submitted(Path(study.study_dir))
    print(status_table(Path(study.study_dir)))
    return 0
