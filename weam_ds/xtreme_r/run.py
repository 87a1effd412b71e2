"""Zero-shot fine-tuning and prediction under the official protocol, for every XTREME-R task and PAWS-X.

For each task and seed: fine-tune MODEL_DIR on the English training data with the task's recipe (one file per
task, the official scripts' values, the same for every model), keep the checkpoint its selection rule says
(the best on the English dev set at the official cadence, or the last weights; target-language dev data is
never used), predict every language, write predictions and labels in the official layout, and score them
with the official scorer. The per-family pipelines are ``classification``, ``choice`` (XCOPA's SIQA → COPA
stages), ``tagging``, ``qa``, ``tatoeba`` and ``dual_encoder_task``; this module puts them in order.

XQuAD and MLQA share one English-SQuAD model per seed (``<out>/squad/seed<k>/model``), and Tatoeba embeds
with it, as XTREME-R does; a run with Tatoeba trains it when the download has SQuAD's training data, and
otherwise (or with ``tatoeba_encoder="raw"``) Tatoeba embeds with the raw model and says so.

``<out>`` is a new folder or one this command wrote (data_prep.output_dirs: never the user's files nor a run
directory's own; inside a run directory it holds the run's lock, weam_ds.run_lock); weam_ds.xtreme_r.eval_dir
draws it.
``<out>/<task>/seed<k>/result.json`` is written last, so an interrupted run resumes at the task/seed level
(a seed cut off mid-way is redone from the start). It records the recipe, a ``protocol`` block (the official
script, the selection rule, the batch as split over this run's devices, and every difference from the
official protocol), what was selected, and the scores. ``<out>/results.json`` aggregates (``aggregate.py``).
Pass a DeepSpeed config (``ds_configs/``) to fine-tune large encoders under ZeRO.

A run is a list of units (``RunPlan.units``): per seed the shared SQuAD model when a task uses it, then each
(task, seed). ``run_units`` runs some of them, so a scheduler can give each its own job or GPU (launcher.cells'
``evaluation_units``): a unit that loads the SQuAD model must start after that seed's SQuAD unit is done
(``RunPlan.needs``); the last unit to finish writes ``results.json``.

Where XTREME's download withholds the evaluation labels, the dev sets are scored when they keep theirs
(classification, tagging, XCOPA, Mewsli-X, MLQA), and ``"split": "dev"`` says so. Where no labelled
alternative exists (XQuAD and TyDiQA-GoldP with their answers stripped, Tatoeba with its English side
sorted), the predictions are still written in the official layout, which is what the leaderboard takes, but
not scored: result.json has ``"scores": null`` and a ``reason``.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from data_prep.output_dirs import claim
from data_prep.typed_config import ConfigError
from weam_ds.run_lock import holding_enclosing
from weam_ds.xtreme_r import choice, classification, dual_encoder_task, qa, tagging, tatoeba
from weam_ds.xtreme_r.aggregate import aggregate
from weam_ds.xtreme_r.eval_dir import EvalDir
from weam_ds.xtreme_r.pipeline import Outcome, Seed
from weam_ds.xtreme_r.readers import check_layout, task_file
from weam_ds.xtreme_r.recipe import (RECIPES, SIZE_CLASSES, Recipe, for_size, load_recipe,
                                     model_size_class)
from weam_ds.xtreme_r.score import ScoreError, score_task, write_scores
from weam_ds.xtreme_r.tasks import TASKS
from weam_ds.xtreme_r.tuners import batch_split, device_count, protocol_record

log = logging.getLogger(__name__)

PIPELINES = {"classification": classification.run_seed, "multiple_choice": choice.run_seed,
             "tagging": tagging.run_seed, "qa": qa.run_seed, "retrieval": tatoeba.run_seed,
             "dual_encoder": dual_encoder_task.run_seed}
"""Per family: ``(seed, tokenizer) -> Outcome``, having written the predictions and labels."""

COMMAND = "weam_ds.xtreme_r run"
"""The marker of its output folders (data_prep.output_dirs)."""
TATOEBA_ENCODERS = ("squad", "raw")
"""What Tatoeba embeds with: the English-SQuAD QA model (XTREME-R's protocol) or the raw pre-trained model."""


@dataclass(frozen=True)
class Unit:
    """One job's worth of a run: a task's fine-tuning seed, or (``task`` SQUAD) the seed's English-SQuAD model
    that the tasks in ``RunPlan.shares_squad`` load instead of fine-tuning their own."""

    task: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-seed{self.seed}"


SQUAD = "squad"


@dataclass(frozen=True)
class RunPlan:
    """What a run does, every input checked: per task its recipe and languages, the seeds, the shared SQuAD
    model's recipe, and why Tatoeba embeds with the raw model (None when it uses the SQuAD model)."""

    data: Path
    tasks: dict[str, tuple[Recipe, list[str]]]
    seeds: list[int]
    squad_recipe: Recipe | None
    why_raw: str | None

    def shares_squad(self, task: str) -> bool:
        return task in qa.SQUAD_TRAINED or (task == "tatoeba" and self.why_raw is None)

    @property
    def units(self) -> list[Unit]:
        """Per seed its SQuAD model (when a task shares it), then every task: each unit after those it needs."""
        squad = any(self.shares_squad(name) for name in self.tasks)
        return [*(Unit(SQUAD, k) for k in self.seeds if squad), *(Unit(name, k) for name in self.tasks
                                                                    for k in self.seeds)]

    def needs(self, unit: Unit) -> list[Unit]:
        """The units that must be done before ``unit`` starts (they share a file it reads)."""
        return [Unit(SQUAD, unit.seed)] if unit.task != SQUAD and self.shares_squad(unit.task) else []

    def unit(self, name: str) -> Unit:
        found = next((u for u in self.units if u.name == name), None)
        if found is None:
            raise ConfigError(f"unit {name!r}: not one of this run's ({' '.join(u.name for u in self.units)})")
        return found


def run(model_dir: Path, data: Path, tasks: list[str], out: Path, seeds: list[int], recipes: Path = RECIPES,
        languages: list[str] | None = None, deepspeed: str | None = None, tatoeba_encoder: str = "squad") -> dict:
    return run_units(model_dir, plan_run(data, tasks, seeds, recipes, languages, tatoeba_encoder), out, deepspeed)


def plan_run(data: Path, tasks: list[str], seeds: list[int], recipes: Path = RECIPES,
             languages: list[str] | None = None, tatoeba_encoder: str = "squad") -> RunPlan:
    plan = _plan(data, tasks, recipes, languages)
    if tatoeba_encoder not in TATOEBA_ENCODERS:
        raise ConfigError(f"--tatoeba-encoder: {tatoeba_encoder!r} (expected {' or '.join(TATOEBA_ENCODERS)})")
    squad_recipe, why_raw = _squad_plan(data, plan, recipes, tatoeba_encoder)
    return RunPlan(data, plan, list(seeds), squad_recipe, why_raw)


def run_units(model_dir: Path, plan: RunPlan, out: Path, deepspeed: str | None = None,
              units: list[Unit] | None = None) -> dict | None:
    """Runs ``units`` (default: all of the plan's, in order), each skipped when done before; ``results.json``
    once every unit of the plan is done (returned; None before). Processes that each run some units of one
    plan into one ``out`` at once (a study's jobs) may: each unit writes only its own folder, and the files
    they share (labels, the SQuAD model once its unit is done) are written atomically with the same content."""
    with holding_enclosing(out, COMMAND):
        claim(out, COMMAND)  # a new folder, or this command's to resume: it removes seeds' checkpoints there
        for unit in plan.units if units is None else units:
            _run_unit(model_dir, plan, unit, out, deepspeed)
        folder = EvalDir(out)
        if not all(folder.result(u.task, u.seed).is_file() for u in plan.units if u.task != SQUAD):
            return None
        results = aggregate(out, list(plan.tasks), plan.seeds)
        write_scores(results, folder.results)
    return results


def _run_unit(model_dir: Path, plan: RunPlan, unit: Unit, out: Path, deepspeed: str | None) -> None:
    from transformers import AutoTokenizer

    size = model_size_class(model_dir)  # the recipes' values for the model's size class (recipe.py)
    squad_recipe = for_size(plan.squad_recipe, size) if plan.squad_recipe else None
    if unit.task == SQUAD:  # trained once: train_squad keeps a finished one
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        qa.train_squad(model_dir, plan.data, squad_recipe, unit.seed, out, deepspeed, tokenizer)
        return
    recipe, langs = plan.tasks[unit.task]
    seed = Seed(model_dir, plan.data, TASKS[unit.task], langs, for_size(recipe, size), unit.seed, out, deepspeed)
    if seed.result.is_file():
        log.info("%s seed %d: done before, skipped", unit.task, unit.seed)
        return
    _run_seed(seed, squad_recipe if plan.shares_squad(unit.task) else None, plan.why_raw)


def _plan(data: Path, tasks: list[str], recipes: Path, languages: list[str] | None) -> dict:
    """Per task its recipe and languages, every input checked before anything trains."""
    runnable = [name for name, task in TASKS.items() if task.runnable]
    unsupported = [t for t in tasks if t not in runnable]
    if unsupported:
        raise ScoreError(f"--tasks: {', '.join(unsupported)} not supported by run yet "
                         f"(supported: {', '.join(runnable)})")
    plan = {}
    for name in tasks:
        task = TASKS[name]
        everyone = task.languages_to_run()
        langs = [lang for lang in everyone if languages is None or lang in languages]
        if not langs:
            raise ScoreError(f"--languages: none of {name}'s languages ({' '.join(everyone)})")
        recipe = load_recipe(task, recipes)
        if task.family != "retrieval":  # refused here, not after the tasks before it have trained
            for size in SIZE_CLASSES:  # the model's size class is known once it is exported
                batch_split(for_size(recipe, size), device_count(),
                            where=str(recipes / f"{name}.yaml") + ("" if size == "base" else f" ({size} models)"))
        check_layout(data, task, langs, recipe.first_stage)
        plan[name] = (recipe, langs)
    return plan


def _squad_plan(data: Path, plan: dict, recipes: Path, encoder: str) -> tuple[Recipe | None, str | None]:
    """The recipe of the shared English-SQuAD model (XQuAD's and MLQA's, which must agree), and why Tatoeba
    embeds with the raw model instead (None when it uses the SQuAD model or is not run)."""
    shared = {name: plan[name][0] for name in qa.SQUAD_TRAINED if name in plan}
    values = {name: {k: v for k, v in asdict(r).items() if k != "differences"} for name, r in shared.items()}
    if len({str(v) for v in values.values()}) > 1:
        raise ConfigError(f"{recipes}: {' and '.join(f'{n}.yaml' for n in values)} differ, but one English-SQuAD "
                          f"model serves both")
    recipe = next(iter(shared.values()), None)
    if "tatoeba" not in plan:
        return recipe, None
    if encoder == "raw":
        return recipe, "asked for with --tatoeba-encoder raw"
    squad = task_file(data, TASKS["xquad"], "train")
    if not squad.is_file():
        log.warning("tatoeba: no English SQuAD training data (%s): it embeds with the raw model", squad)
        return recipe, f"no English SQuAD training data in the download ({squad})"
    if recipe is None:  # Tatoeba alone: the SQuAD model is trained with XQuAD's recipe
        recipe = load_recipe(TASKS["xquad"], recipes if (recipes / "xquad.yaml").is_file() else RECIPES)
    return recipe, None


def _run_seed(seed: Seed, squad_recipe: Recipe | None, why_raw: str | None) -> None:
    from transformers import AutoTokenizer

    shutil.rmtree(seed.checkpoints, ignore_errors=True)  # left by a seed cut off mid-way
    tokenizer = AutoTokenizer.from_pretrained(str(seed.model_dir), local_files_only=True)
    if squad_recipe is not None:
        seed.squad_model = qa.train_squad(seed.model_dir, seed.data, squad_recipe, seed.seed, seed.out,
                                          seed.deepspeed, tokenizer)
    pipeline = PIPELINES[seed.task.family]
    if seed.task.family == "retrieval":
        pipeline = partial(pipeline, why_raw=why_raw)
    outcome = pipeline(seed, tokenizer)
    shutil.rmtree(seed.checkpoints, ignore_errors=True)
    _score_seed(seed, outcome)


def _score_seed(seed: Seed, outcome: Outcome) -> None:
    """Scores a seed's predictions against the labels with the official scorer; its result.json, written
    last, marks the seed done. Unscored predictions (labels withheld) get ``"scores": null`` and the reason."""
    task = seed.task
    protocol = protocol_record(seed.recipe, outcome.batch, task.script, outcome.differences,
                               outcome.details.get("selection"))
    record = {"task": task.name, "seed": seed.seed, "split": outcome.split, "model": str(seed.model_dir),
              "recipe": asdict(seed.recipe), "protocol": protocol, **outcome.details}
    if outcome.unscored:
        scores, record["reason"] = None, outcome.unscored
    else:
        scores = score_task(task.name, outcome.langs, seed.predictions, seed.eval_dir.labels(outcome.split))
    write_scores({**record, "scores": scores}, seed.result)
