"""``python -m launcher study run|status study.yaml``: the scaling study's grid, cell by cell.

``run`` expands the study file (launcher.study_config) into cells, registers every one in the study's
``registry.sqlite`` (weam_ds.registry) and takes each through its steps, recording each in the registry:

    pending ─► running ─► trained ─► exported ─► evaluated          (or failed, with the error)
               train:      export:     evaluate:
               launcher    weam_ds     Tatoeba-style retrieval on the datasets' held-out test pairs,
               backend     .export     and/or weam_ds.xtreme_r run (fine-tuning seeds)

Cells run one after another through the study's launcher backend (``launch:``), each training's console in
``cells/<cell>/study.log``. A second ``run`` skips evaluated cells, continues interrupted ones (training
resumes from its checkpoints) and retries failed ones with ``--retry-failed``. A study file that now gives a
trained cell another run config is refused, naming the cells; a cell whose training had not finished is
started afresh with the new config; an added axis value adds only its cells. One runner at a time holds a
study directory. ``status`` prints every cell's state, step, cost and headline score.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from data_prep.typed_config import ConfigError
from launcher.backends import BACKENDS, Request, gpus_here
from launcher.launch import execute
from launcher.study_config import CellPlan, StudyConfig, expand, load_study, study_sha256
from weam_ds.config import load_run_config
from weam_ds.registry import REGISTRY_FILE, Registry, config_sha256, training_totals
from weam_ds.run_dir import RunDir

log = logging.getLogger(__name__)

TRAINED = ("trained", "exported", "evaluated")
TATOEBA_SEED = 0
"""The evaluation seed Tatoeba-style retrieval is registered under: it fine-tunes nothing."""


class CellFailed(RuntimeError):
    pass


@contextlib.contextmanager
def _exclusive(study_dir: Path):
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".study.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{study_dir}: another study runner is working there") from None
        yield


def _parameters(plan: CellPlan) -> int:
    from data_prep.manifest import read_manifest
    from weam_ds.presets import build_model, count_parameters

    vocab = read_manifest(plan.run["data"]["datasets"][0])["tokenizer"]["vocab_size"]
    return count_parameters(build_model(plan.run["model"], vocab, meta=True))["total"]


def register(path: Path, study: StudyConfig, plans: list[CellPlan], registry: Registry) -> None:
    """Every cell in the registry, before any runs; refuses a study file that changes a trained cell."""
    known = {cell.name: cell for cell in registry.cells()}
    changed = [p.name for p in plans if p.name in known and known[p.name].config_sha256 != config_sha256(p.run)]
    finished = [name for name in changed if known[name].state in TRAINED]
    if finished:
        raise ConfigError(f"{path}: changes the run config of cells that have trained: {'; '.join(finished)} "
                          f"(use another study_dir, or remove those cells from {study.study_dir})")
    registry.set_study(study.name, study_sha256(path))
    for plan in plans:
        if plan.name in changed:  # never trained to the end: its checkpoints belong to the old config
            log.warning("cell %s: its run config changed before it finished training; starting it afresh", plan.name)
            for stale in (plan.run_dir, plan.export_dir, plan.eval_dir):
                shutil.rmtree(stale, ignore_errors=True)
        registry.put_cell(plan.axes, plan.run, parameters=_parameters(plan), pairs=plan.pairs,
                          replace=plan.name in changed)


def run(path: Path, retry_failed: bool = False) -> int:
    """Runs every cell that is not evaluated yet; returns 0 when all are, else 1 (some failed)."""
    study = load_study(path)
    with _exclusive(Path(study.study_dir)):
        plans = expand(study, str(path))
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
                    _run_cell(study, plan, registry, states[plan.name])
                except CellFailed as exc:
                    registry.set_state(plan.name, "failed", error=str(exc))
                    log.error("cell %s failed: %s", plan.name, exc)
            failed = [c.name for c in registry.cells() if c.state == "failed"]
    print(status_table(Path(study.study_dir)))
    if failed:
        print(f"launcher: {len(failed)} cells failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _run_cell(study: StudyConfig, plan: CellPlan, registry: Registry, state: str) -> None:
    if state not in TRAINED:
        registry.set_state(plan.name, "running")
        _train(study, plan, registry)
        registry.set_state(plan.name, "trained")
    with _console_to(plan.directory / "study.log"):
        if state != "exported":
            _export(plan)
            registry.set_state(plan.name, "exported")
        _evaluate(study, plan, registry)
    registry.set_state(plan.name, "evaluated")


@contextlib.contextmanager
def _console_to(path: Path):
    """Export's and evaluation's console (progress bars, scores) into the cell's log, beside its training's."""
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def _train(study: StudyConfig, plan: CellPlan, registry: Registry) -> None:
    cluster = study.launch
    launch = BACKENDS[cluster.backend](Request(plan.config_file.resolve(), load_run_config(plan.config_file), cluster))
    if not launch.waits:
        raise ConfigError(f"launch.backend: {cluster.backend} submits jobs without waiting; the study runner "
                          "runs cells itself (local, torchrun or deepspeed)")
    code = execute(launch, RunDir(plan.run_dir), dry_run=False, output=plan.directory / "study.log")
    if code != 0:
        raise CellFailed(f"training exited with status {code} (its console: {plan.directory / 'study.log'}, "
                         f"its rank logs: {RunDir(plan.run_dir).log(0).parent})")
    totals = training_totals(plan.run_dir)
    if totals["steps"] != plan.run["train"]["steps"]:
        raise CellFailed(f"training stopped at step {totals['steps']} of {plan.run['train']['steps']} "
                         "(stopped from outside: run the study again to continue)")
    world = (cluster.nnodes or 1) * (cluster.nproc_per_node or gpus_here())
    gpu = _gpu_name()
    registry.put_cost(plan.name, **totals, world_size=world, gpu_hours=world * totals["wall_seconds"] / 3600 if gpu
                      else 0.0, hardware=f"{world}x {gpu or platform.processor() or platform.machine() + ' CPU'}")


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _export(plan: CellPlan) -> None:
    from weam_ds.export import ExportError, export

    try:
        export(RunDir(plan.run_dir).checkpoints, plan.export_dir)
    except (ExportError, OSError, ValueError) as exc:
        raise CellFailed(f"export: {exc}") from None


def _evaluate(study: StudyConfig, plan: CellPlan, registry: Registry) -> None:
    evaluation = study.evaluation
    try:
        if evaluation.tatoeba is not None:
            _tatoeba(evaluation.tatoeba, plan, registry)
        if evaluation.xtreme_r is not None:
            _xtreme_r(evaluation.xtreme_r, plan, registry)
    except (OSError, ValueError) as exc:  # the scorer's and the readers' errors name their files
        raise CellFailed(f"evaluation: {exc}") from None


def _tatoeba(cfg, plan: CellPlan, registry: Registry) -> None:
    """Every language of every dataset, seen in pre-training or not; per-example hits for the report's
    paired bootstrap."""
    from weam_ds.xtreme_r.tatoeba import evaluate_dataset

    for dataset in plan.run["data"]["datasets"]:
        out = plan.eval_dir / "tatoeba" / Path(dataset).name
        results = evaluate_dataset(plan.export_dir, Path(dataset), out, layer=cfg.layer, batch_size=cfg.batch_size)
        folder = out / "tatoeba-xx2en"  # the benchmark's direction
        for lang, value in results["xx2en"]["tatoeba"]["accuracy"].items():
            found, gold = ((folder / kind / "tatoeba" / f"test-{lang}.tsv").read_text().split()
                           for kind in ("predictions", "labels"))
            registry.put_scores(plan.name, "tatoeba", lang, TATOEBA_SEED, "test", {"accuracy": value},
                                per_example={"accuracy": [100.0 * (f == g) for f, g in zip(found, gold)]})


def _xtreme_r(cfg, plan: CellPlan, registry: Registry) -> None:
    """Zero-shot fine-tuning with weam_ds.xtreme_r run; every scored seed's languages."""
    from weam_ds.xtreme_r.run import RECIPES
    from weam_ds.xtreme_r.run import run as run_xtreme

    out = plan.eval_dir / "xtreme_r"
    run_xtreme(plan.export_dir, Path(cfg.data), cfg.tasks, out, cfg.seeds, RECIPES, cfg.languages, cfg.deepspeed)
    for task in cfg.tasks:
        for seed in cfg.seeds:
            result = json.loads((out / task / f"seed{seed}" / "result.json").read_text(encoding="utf-8"))
            if result["scores"] is None:
                continue  # labels withheld: written in the official layout, not scored (result.json says why)
            per_language = {}
            for metric, values in result["scores"].items():
                if isinstance(values, dict):
                    for lang, value in values.items():
                        per_language.setdefault(lang, {})[metric] = value
            for lang, scores in per_language.items():
                registry.put_scores(plan.name, task, lang, seed, result["split"], scores)


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
    study = load_study(path)
    if not (Path(study.study_dir) / REGISTRY_FILE).is_file():
        raise ConfigError(f"{path}: the study has not run yet (no {Path(study.study_dir) / REGISTRY_FILE})")
    print(status_table(Path(study.study_dir)))
    return 0
