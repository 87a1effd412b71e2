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

A cell's steps produce plain records, which the runner writes into the registry: its training cost
(``training_cost``: Registry.put_cost's arguments) and its scores (``score_records``: Registry.put_scores's
arguments, less the cell), so that a SLURM job can hand them over in a file instead.

A cell's evaluation is also a graph of units (``evaluation_units``: the export, then per fine-tuning seed the
English-SQuAD model where tasks share it, then each (task, seed)), each run alone by ``study step --unit``
(``unit_scores``) and leaving its record in ``units/<unit>.json``: under SLURM one job per unit; here, on a
machine with several GPUs, one process per GPU (``start_units`` decides which unit starts where). On CPU or one
GPU the runner evaluates the cell itself, unit after unit (``score_records``): the same seeds, the same files.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from data_prep.typed_config import ConfigError
from launcher.backends import BACKENDS, Request
from launcher.cluster import ClusterConfig
from launcher.launch import STOPPED_CODES, execute
from launcher.study_config import CellPlan, StudyConfig, expand, load_study, study_sha256
from launcher.study_plan import cost_plan
from weam_ds.config import load_run_config
from weam_ds.registry import REGISTRY_FILE, Cell, Registry, config_sha256, training_totals
from weam_ds.run_dir import RunDir

log = logging.getLogger(__name__)

TRAINED = ("trained", "exported", "evaluated")
TATOEBA_SEED = 0
"""The evaluation seed Tatoeba-style retrieval is registered under: it fine-tunes nothing."""
EXPORT = "export"
"""The evaluation unit that every other waits for (``evaluation_units``)."""
UNITS = "units"
"""The folder of a cell's directory where each evaluation unit leaves its record and its job's console."""


class CellFailed(RuntimeError):
    pass


class StudyInterrupted(Exception):
    """Ctrl-C or SIGTERM reached the study runner: it stops after recording where the cell stands."""


class StudyBusy(ConfigError):
    """Another study runner holds the study directory."""


@contextlib.contextmanager
def exclusive(study_dir: Path):
    """The study directory's lock: one runner (or harvest) at a time writes its registry."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".study.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyBusy(f"{study_dir}: another study runner is working there") from None
        yield


def _parameters(plan: CellPlan) -> int:
    """The cell's backbone size, from its model's config (weam_ds.presets.parameter_counts: nothing is built)."""
    from data_prep.manifest import read_manifest
    from weam_ds.presets import encoder_config, parameter_counts

    vocab = read_manifest(plan.run["data"]["datasets"][0])["tokenizer"]["vocab_size"]
    return parameter_counts(encoder_config(plan.run["model"], vocab, resize_vocab=True))["total"]


def changed_cells(path: Path, study: StudyConfig, plans: list[CellPlan], known: dict[str, Cell]) -> list[str]:
    """The registered cells (``known``) whose run config the study file now changes; refused when one of
    them has trained."""
    changed = [p.name for p in plans if p.name in known and known[p.name].config_sha256 != config_sha256(p.run)]
    finished = [name for name in changed if known[name].state in TRAINED]
    if finished:
        raise ConfigError(f"{path}: changes the run config of cells that have trained: {'; '.join(finished)} "
                          f"(use another study_dir, or remove those cells from {study.study_dir})")
    return changed


def register(path: Path, study: StudyConfig, plans: list[CellPlan], registry: Registry) -> None:
    """Every cell in the registry, before any runs; refuses a study file that changes a trained cell."""
    changed = changed_cells(path, study, plans, {cell.name: cell for cell in registry.cells()})
    registry.set_study(study.name, study_sha256(path))
    for plan in plans:
        if plan.name in changed:  # never trained to the end: its checkpoints belong to the old config
            log.warning("cell %s: its run config changed before it finished training; starting it afresh", plan.name)
            for stale in (plan.run_dir, plan.export_dir, plan.eval_dir):
                shutil.rmtree(stale, ignore_errors=True)
        registry.put_cell(plan.axes, plan.run, parameters=_parameters(plan), pairs=plan.pairs,
                          replace=plan.name in changed)


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
            from launcher import study_slurm

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
        yield from _tatoeba(study.evaluation.tatoeba, plan)
    _claim_xtreme_out(plan)
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


def training_cost(cluster: ClusterConfig, plan: CellPlan) -> dict:
    """The cell's finished training as Registry.put_cost takes it: the run's own totals (training_totals),
    its ranks, GPU-hours (0 on CPUs) and hardware, as this machine sees its GPU (under SLURM: the step job's,
    on the training's partition). CellFailed when the training stopped short of its steps."""
    totals = training_totals(plan.run_dir)
    if totals["steps"] != plan.run["train"]["steps"]:
        raise CellFailed(f"training stopped at step {totals['steps']} of {plan.run['train']['steps']} "
                         "(stopped from outside: run the study again to continue)")
    world = cluster.shape().world_size
    gpu = _gpu_name()
    return {**totals, "world_size": world, "gpu_hours": world * totals["wall_seconds"] / 3600 if gpu else 0.0,
            "hardware": f"{world}x {gpu or platform.processor() or platform.machine() + ' CPU'}"}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def export_cell(plan: CellPlan) -> None:
    from weam_ds.export import ExportError, export

    try:
        export(RunDir(plan.run_dir).checkpoints, plan.export_dir, force=True)  # the cell's own: a retry replaces it
    except (ExportError, OSError, ValueError) as exc:
        raise CellFailed(f"export: {exc}") from None


def evaluation_units(study: StudyConfig) -> dict[str, tuple[str, ...]]:
    """The cell's evaluation as units, each with the units it waits for, in an order that puts each after
    them: ``export`` (the export, and the Tatoeba-style retrieval on the datasets, which fine-tunes nothing),
    then weam_ds.xtreme_r's units (per seed the English-SQuAD model its QA tasks share, then each task and
    seed). Together they compute what ``score_records`` does, with the same seeds into the same files."""
    units = {EXPORT: ()}
    if study.evaluation.xtreme_r is not None:
        run = _xtreme_plan(study.evaluation.xtreme_r)
        for unit in run.units:
            units[unit.name] = (EXPORT, *(needed.name for needed in run.needs(unit)))
    return units


def unit_scores(study: StudyConfig, plan: CellPlan, unit: str) -> list[dict]:
    """Runs one of the cell's ``evaluation_units``; its scores as ``score_records`` gives them."""
    from weam_ds.xtreme_r.run import SQUAD, run_units

    try:
        if unit == EXPORT:
            export_cell(plan)
            if study.evaluation.xtreme_r is not None:
                _claim_xtreme_out(plan)
            return list(_tatoeba(study.evaluation.tatoeba, plan)) if study.evaluation.tatoeba is not None else []
        cfg = study.evaluation.xtreme_r
        if cfg is None:
            raise CellFailed(f"unit {unit!r}: the study runs no XTREME-R tasks")
        run = _xtreme_plan(cfg)
        found = run.unit(unit)
        out = plan.eval_dir / "xtreme_r"
        run_units(plan.export_dir, run, out, cfg.deepspeed, [found])
        return [] if found.task == SQUAD else list(_seed_records(out, found.task, found.seed))
    except (OSError, ValueError) as exc:  # the scorer's and the readers' errors name their files
        raise CellFailed(f"{unit}: {exc}") from None


def start_units(units: dict[str, tuple[str, ...]], started: set[str], done: set[str],
                free: list[str]) -> list[tuple[str, str]]:
    """The units to start now, each with a free device of its own: those not started whose units waited for
    are all done, in the units' order. A unit whose awaited unit failed never starts."""
    ready = [name for name, needs in units.items() if name not in started and all(n in done for n in needs)]
    return list(zip(ready, free))


def unit_file(cell_dir: Path, unit: str) -> Path:
    """Where a unit of the cell's evaluation leaves its record (launcher.study_slurm says what it holds)."""
    return cell_dir / UNITS / f"{unit}.json"


def read_record(path: Path, sha: str, keys: tuple[str, ...]) -> dict | None:
    """The JSON record in ``path`` if it is there and belongs to the run config ``sha``; CellFailed when it
    is not a record with ``config_sha256`` and ``keys``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CellFailed(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or "config_sha256" not in record or any(k not in record for k in keys):
        raise CellFailed(f"{path}: not a record with {', '.join(('config_sha256', *keys))}")
    return record if record["config_sha256"] == sha else None


def score_records(study: StudyConfig, plan: CellPlan) -> Iterator[dict]:
    """Evaluates the cell's export, yielding each score as it is computed, as Registry.put_scores takes it
    (less the cell): ``task``, ``language``, ``eval_seed``, ``split``, ``scores`` ({metric: value}) and
    ``per_example`` ({metric: [value per example]} or None)."""
    evaluation = study.evaluation
    try:
        if evaluation.tatoeba is not None:
            yield from _tatoeba(evaluation.tatoeba, plan)
        if evaluation.xtreme_r is not None:
            yield from _xtreme_r(evaluation.xtreme_r, plan)
    except (OSError, ValueError) as exc:  # the scorer's and the readers' errors name their files
        raise CellFailed(f"evaluation: {exc}") from None


def _tatoeba(cfg, plan: CellPlan) -> Iterator[dict]:
    """Every language of every dataset, seen in pre-training or not; per-example hits for the report's
    paired bootstrap."""
    from weam_ds.xtreme_r.tatoeba import OFFICIAL_DIRECTION, evaluate_dataset

    for dataset in plan.run["data"]["datasets"]:
        out = plan.eval_dir / "tatoeba" / Path(dataset).name
        results = evaluate_dataset(plan.export_dir, Path(dataset), out, layer=cfg.layer, batch_size=cfg.batch_size)
        folder = out / f"tatoeba-{OFFICIAL_DIRECTION}"  # the benchmark's: English sentences search the others
        for lang, value in results[OFFICIAL_DIRECTION]["tatoeba"]["accuracy"].items():
            found, gold = ((folder / kind / "tatoeba" / f"test-{lang}.tsv").read_text().split()
                           for kind in ("predictions", "labels"))
            yield {"task": "tatoeba", "language": lang, "eval_seed": TATOEBA_SEED, "split": "test",
                   "scores": {"accuracy": value},
                   "per_example": {"accuracy": [100.0 * (f == g) for f, g in zip(found, gold)]}}


def _xtreme_r(cfg, plan: CellPlan) -> Iterator[dict]:
    """Zero-shot fine-tuning with weam_ds.xtreme_r run; every scored seed's languages."""
    from weam_ds.xtreme_r.run import run_units

    out = plan.eval_dir / "xtreme_r"
    run_units(plan.export_dir, _xtreme_plan(cfg), out, cfg.deepspeed)
    for task in cfg.tasks:
        for seed in cfg.seeds:
            yield from _seed_records(out, task, seed)


def _claim_xtreme_out(plan: CellPlan) -> None:
    """The cell's weam_ds.xtreme_r folder, made that command's before its units run apart: units creating it at
    once would each find a folder the other had not marked yet."""
    from data_prep.output_dirs import claim
    from weam_ds.xtreme_r.run import COMMAND

    claim(plan.eval_dir / "xtreme_r", COMMAND)


def _xtreme_plan(cfg):
    """The study's weam_ds.xtreme_r run (weam_ds.xtreme_r.run.RunPlan), its inputs checked."""
    from weam_ds.xtreme_r.recipe import RECIPES
    from weam_ds.xtreme_r.run import plan_run

    recipes = Path(cfg.recipes) if cfg.recipes else RECIPES
    # Tatoeba embeds with the English-SQuAD model, as run_tatoeba.sh does (the raw model only without SQuAD data)
    return plan_run(Path(cfg.data), cfg.tasks, cfg.seeds, recipes, cfg.languages)


def _seed_records(out: Path, task: str, seed: int) -> Iterator[dict]:
    """A fine-tuning seed's scores per language, from its result.json (none when its labels are withheld)."""
    result = json.loads((out / task / f"seed{seed}" / "result.json").read_text(encoding="utf-8"))
    if result["scores"] is None:
        return  # labels withheld: written in the official layout, not scored (result.json says why)
    per_language = {}
    for metric, values in result["scores"].items():
        if isinstance(values, dict):
            for lang, value in values.items():
                per_language.setdefault(lang, {})[metric] = value
    for lang, scores in per_language.items():
        yield {"task": task, "language": lang, "eval_seed": seed, "split": result["split"], "scores": scores,
               "per_example": _hits(out, task, seed, result["split"], lang)}


def _hits(out: Path, task: str, seed: int, split: str, lang: str) -> dict | None:
    """Per-example accuracy (0 or 100) of the tasks scored by accuracy over aligned lines (classification,
    XCOPA), for the report's paired bootstrap; None for the others (span F1, QA, retrieval), whose score
    is not a mean over examples."""
    from weam_ds.xtreme_r.score import read_jsonl_labels, read_lines
    from weam_ds.xtreme_r.tasks import TASKS, suffix

    if TASKS[task].family not in ("classification", "multiple_choice"):
        return None
    read = read_jsonl_labels if TASKS[task].family == "multiple_choice" else read_lines
    name = f"test-{lang}.{suffix(task)}"
    found = read(out / task / f"seed{seed}" / "predictions" / task / name)
    gold = read(out / "labels" / split / task / name)
    return {"accuracy": [100.0 * (f == g) for f, g in zip(found, gold)]}


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
    from launcher.study_slurm import harvest_submitted

    study = load_study(path)
    if not (Path(study.study_dir) / REGISTRY_FILE).is_file():
        raise ConfigError(f"{path}: the study has not run yet (no {Path(study.study_dir) / REGISTRY_FILE})")
    harvest_submitted(Path(study.study_dir))
    print(status_table(Path(study.study_dir)))
    return 0
