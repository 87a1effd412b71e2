"""The steps a study cell goes through, and the names the study's two runners share: launcher.study takes
cells through them on this machine, launcher.study_slurm as SLURM jobs; both import them from here.

A cell is registered (``register``: refused when the study file changes a cell that has trained), trained
(through a launcher backend, by the runner), exported (``export_cell``) and evaluated (``score_records``). Its
steps produce plain records, which the runner writes into the registry: its training cost (``training_cost``:
Registry.put_cost's arguments) and its scores (``score_records``: Registry.put_scores's arguments, less the
cell), so that a SLURM job can hand them over in a file instead.

A cell's evaluation is also a graph of units (``evaluation_units``: the export, then per fine-tuning seed the
English-SQuAD model where tasks share it, then each (task, seed)), each run alone by ``study step --unit``
(``unit_scores``) and leaving its record in ``units/<unit>.json`` (``unit_file``, read back by ``read_record``).
The scores come from weam_ds.xtreme_r's output folders, through their layout (weam_ds.xtreme_r.eval_dir).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path

from data_prep.typed_config import ConfigError
from launcher.cluster import ClusterConfig
from launcher.study_config import CellPlan, StudyConfig, study_sha256
from weam_ds.registry import Registry, config_sha256, training_totals
from weam_ds.registry_rows import Cell
from weam_ds.run_dir import RunDir
from weam_ds.xtreme_r.eval_dir import EvalDir, RetrievalDir

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
                claim_xtreme_r_folder(plan)
            tatoeba = study.evaluation.tatoeba
            return list(retrieval_records(tatoeba, plan)) if tatoeba is not None else []
        cfg = study.evaluation.xtreme_r
        if cfg is None:
            raise CellFailed(f"unit {unit!r}: the study runs no XTREME-R tasks")
        run = _xtreme_plan(cfg)
        found = run.unit(unit)
        out = xtreme_r_folder(plan)
        run_units(plan.export_dir, run, out.root, cfg.deepspeed, [found])
        return [] if found.task == SQUAD else list(_seed_records(out, found.task, found.seed))
    except (OSError, ValueError) as exc:  # the scorer's and the readers' errors name their files
        raise CellFailed(f"{unit}: {exc}") from None


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
            yield from retrieval_records(evaluation.tatoeba, plan)
        if evaluation.xtreme_r is not None:
            yield from _xtreme_r(evaluation.xtreme_r, plan)
    except (OSError, ValueError) as exc:  # the scorer's and the readers' errors name their files
        raise CellFailed(f"evaluation: {exc}") from None


def retrieval_records(cfg, plan: CellPlan) -> Iterator[dict]:
    """Tatoeba-style retrieval on the datasets' held-out test pairs: every language of every dataset, seen in
    pre-training or not; per-example hits for the report's paired bootstrap."""
    from weam_ds.xtreme_r.tatoeba import OFFICIAL_DIRECTION, TASK, evaluate_dataset

    for dataset in plan.run["data"]["datasets"]:
        out = plan.eval_dir / "tatoeba" / Path(dataset).name
        results = evaluate_dataset(plan.export_dir, Path(dataset), out, layer=cfg.layer, batch_size=cfg.batch_size)
        folder = RetrievalDir(out).direction(OFFICIAL_DIRECTION)  # the benchmark's: English searches the others
        for lang, value in results[OFFICIAL_DIRECTION][TASK]["accuracy"].items():
            found, gold = (path.read_text().split() for path in (folder.prediction(TASK, lang),
                                                                  folder.label(TASK, lang)))
            yield {"task": TASK, "language": lang, "eval_seed": TATOEBA_SEED, "split": "test",
                   "scores": {"accuracy": value},
                   "per_example": {"accuracy": [100.0 * (f == g) for f, g in zip(found, gold)]}}


def _xtreme_r(cfg, plan: CellPlan) -> Iterator[dict]:
    """Zero-shot fine-tuning with weam_ds.xtreme_r run; every scored seed's languages."""
    from weam_ds.xtreme_r.run import run_units

    out = xtreme_r_folder(plan)
    run_units(plan.export_dir, _xtreme_plan(cfg), out.root, cfg.deepspeed)
    for task in cfg.tasks:
        for seed in cfg.seeds:
            yield from _seed_records(out, task, seed)


def xtreme_r_folder(plan: CellPlan) -> EvalDir:
    """The cell's weam_ds.xtreme_r output folder."""
    return EvalDir(plan.eval_dir / "xtreme_r")


def claim_xtreme_r_folder(plan: CellPlan) -> None:
    """The cell's weam_ds.xtreme_r folder, made that command's before its units run apart: units creating it at
    once would each find a folder the other had not marked yet."""
    from data_prep.output_dirs import claim
    from weam_ds.xtreme_r.run import COMMAND

    claim(xtreme_r_folder(plan).root, COMMAND)


def _xtreme_plan(cfg):
    """The study's weam_ds.xtreme_r run (weam_ds.xtreme_r.run.RunPlan), its inputs checked."""
    from weam_ds.xtreme_r.recipe import RECIPES
    from weam_ds.xtreme_r.run import plan_run

    recipes = Path(cfg.recipes) if cfg.recipes else RECIPES
    # Tatoeba embeds with the English-SQuAD model, as run_tatoeba.sh does (the raw model only without SQuAD data)
    return plan_run(Path(cfg.data), cfg.tasks, cfg.seeds, recipes, cfg.languages)


def _seed_records(out: EvalDir, task: str, seed: int) -> Iterator[dict]:
    """A fine-tuning seed's scores per language, from its result.json (none when its labels are withheld)."""
    result = json.loads(out.result(task, seed).read_text(encoding="utf-8"))
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


def _hits(out: EvalDir, task: str, seed: int, split: str, lang: str) -> dict | None:
    """Per-example accuracy (0 or 100) of the tasks scored by accuracy over aligned lines (classification,
    XCOPA), for the report's paired bootstrap; None for the others (span F1, QA, retrieval), whose score
    is not a mean over examples."""
    from weam_ds.xtreme_r.score import read_jsonl_labels, read_lines
    from weam_ds.xtreme_r.tasks import TASKS

    if TASKS[task].family not in ("classification", "multiple_choice"):
        return None
    read = read_jsonl_labels if TASKS[task].family == "multiple_choice" else read_lines
    found = read(out.prediction(task, seed, lang))
    gold = read(out.label(split, task, lang))
    return {"accuracy": [100.0 * (f == g) for f, g in zip(found, gold)]}


