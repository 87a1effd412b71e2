r"""``python -m launcher study plan study.yaml``: what a study will cost, cell by cell, before anything runs.

Nothing trains and no weights exist: parameter counts come from each model's config (weam_ds.presets
.parameter_counts), steps and tokens from the study's budget and its datasets' manifests, the memory verdict from
the memory planner (launcher.planner) against the study's cluster (``launch:``). One line per cell and a total;
``study run`` prints the total before it runs or submits the cells.

Training. A cell trains D = steps × tokens per step (real tokens, both sides of every pair, over every rank:
launcher.study_config.tokens_per_step). Its FLOPs are counted as the training counts them (weam_ds.presets
.train_flops_per_token, what metrics.jsonl and the registry's ``train_flops`` record), at the mean sentence:

    C_train = D · (6·N + 12·L·ℓ·H + 6·r·(V + H)·H)

N the non-embedding parameters, L layers, H hidden size, V vocabulary, ℓ the mean tokens of a sentence of the
cell's train data (each sentence attends over itself; at the mean length the term is a slight underestimate), r
the share of tokens through the MLM head (the masking rate; WEAM predicts as many again for XPRED). 6·N·D is the
bulk; the attention term adds 2·L·ℓ·H / N of it.

Evaluation. Per fine-tuning seed, each XTREME-R task fine-tunes on its official English training set
(:data:`TRAIN_SETS`, the sizes the benchmark papers give) for its recipe's epochs, every input at the recipe's
``max_length`` S (an upper bound where inputs are padded per batch; QA counts questions, not their windows):

    C_eval = seeds · Σ examples · epochs · tokens per example · (6·N + 12·L·S·H)

tokens per example: S, one sequence per choice for multiple choice (S × choices), query plus candidate for dual
encoders. XQuAD and MLQA share one English-SQuAD model per seed (counted once); Tatoeba fine-tunes nothing; the
predictions (forward passes over the test sets) are not counted. A recipe's large-model values change the learning
rate and the batch, not these counts.

GPU-hours = C / (MFU × peak FLOP/s per GPU) / 3600, at an assumed MFU (``--mfu``, default 40%) and the dense bf16
peak of the cluster's GPU (``launch.gpu`` or ``--gpu``: weam_ds.peak_flops.PEAK_TFLOPS; ``--peak-tflops`` for
another). Where the cells run on CPUs, the plan says "no GPU" instead of GPU-hours.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.manifest import read_manifest
from data_prep.typed_config import ConfigError
from launcher.cluster import ClusterConfig
from launcher.planner import plan_launch
from launcher.study_config import CellPlan, StudyConfig, XtremeConfig, expand, load_study, tokens_per_step, \
    train_tokens
from weam_ds import monitor
from weam_ds.config import load_run_config
from weam_ds.objectives import OBJECTIVES
from weam_ds.peak_flops import PEAK_TFLOPS
from weam_ds.presets import encoder_config, parameter_counts, train_flops_per_token
from weam_ds.xtreme_r.recipe import RECIPES, load_recipe
from weam_ds.xtreme_r.tasks import TASKS

MFU = 0.40
"""The model FLOPs utilisation the GPU-hours assume (``--mfu``)."""


@dataclass(frozen=True)
class TrainingSet:
    """An official English training set that a task fine-tunes on."""

    name: str
    examples: int
    source: str
    """Where the size is published."""
    choices: int = 1
    """Multiple choice: the sequences encoded per example (one per choice)."""
    first_stage: str | None = None
    """Trained on only when the task's recipe names it as its ``first_stage`` (XCOPA's SIQA)."""


_XTREME = "Hu et al. 2020, XTREME, table 1"
_XTREME_R = "Ruder et al. 2021, XTREME-R, table 1"
MULTINLI = TrainingSet("MultiNLI", 392_702, f"Williams et al. 2018; {_XTREME}")
PAWS = TrainingSet("PAWS (Wiki, English)", 49_401, f"Yang et al. 2019, PAWS-X; {_XTREME}")
SIQA = TrainingSet("SIQA", 33_410, f"Sap et al. 2019; {_XTREME_R}", choices=3, first_stage="siqa")
COPA = TrainingSet("COPA (English)", 400, f"Roemmele et al. 2011; Ponti et al. 2020, XCOPA; {_XTREME_R}", choices=2)
UD_POS = TrainingSet("UD-POS (English)", 21_253, _XTREME)
PANX = TrainingSet("WikiANN (English)", 20_000, _XTREME)
SQUAD = TrainingSet("SQuAD v1.1", 87_599, f"Rajpurkar et al. 2016; {_XTREME}")
TYDIQA = TrainingSet("TyDiQA-GoldP (English)", 3_696, f"Clark et al. 2020; {_XTREME}")
MEWSLIX = TrainingSet("Mewsli-X (English Wikipedia pairs)", 116_903, _XTREME_R)

TRAIN_SETS: dict[str, tuple[TrainingSet, ...]] = {
    "xnli": (MULTINLI,), "pawsx": (PAWS,), "xcopa": (SIQA, COPA), "udpos": (UD_POS,), "panx": (PANX,),
    "xquad": (SQUAD,), "mlqa": (SQUAD,), "tydiqa": (TYDIQA,), "tatoeba": (), "mewslix": (MEWSLIX,),
    "lareqa": (SQUAD,),
}
"""Per task ``weam_ds.xtreme_r run`` runs, the official training sets it fine-tunes on, in order: examples
(sentences, sentence pairs, questions, mention-entity pairs) of the English train split."""


@dataclass(frozen=True)
class FineTuning:
    """One fine-tuning of one seed: a training set under a task's recipe."""

    train_set: TrainingSet
    epochs: float
    tokens_per_example: int
    max_length: int

    def flops(self, config, non_embedding: int) -> float:
        per_token = train_flops_per_token(config, non_embedding, seq_len=self.max_length, mask_rate=0.0)
        return self.train_set.examples * self.epochs * self.tokens_per_example * per_token


@dataclass(frozen=True)
class Accelerator:
    """What the cells run on, for their GPU-hours."""

    description: str
    peak_flops: float | None
    """Dense peak FLOP/s per GPU; None: no GPU, or its kind is unknown (``description`` says which)."""


@dataclass(frozen=True)
class CellCost:
    name: str
    steps: int
    tokens: float
    parameters: int
    """N: non-embedding parameters."""
    train_flops: float
    eval_flops: float
    memory: str
    """fits, refused, or not planned (no GPU memory known)."""
    reason: str | None = None
    """The planner's first reason when refused."""


@dataclass(frozen=True)
class StudyPlan:
    name: str
    cells: list[CellCost]
    accelerator: Accelerator
    mfu: float
    evaluation: str
    """What each cell's evaluation fine-tunes, in words."""

    def gpu_hours(self, flops: float) -> float | None:
        peak = self.accelerator.peak_flops
        return None if peak is None else flops / (self.mfu * peak) / 3600

    @property
    def refused(self) -> list[CellCost]:
        return [cell for cell in self.cells if cell.memory == "refused"]

    def table(self) -> str:
        """One line per cell and the total's line, then the refused cells' reasons."""
        rows = [("cell", "steps", "tokens", "N", "train FLOPs", "train GPU-h", "memory", "eval FLOPs", "eval GPU-h")]
        for cell in self.cells:
            rows.append(self._row(cell.name, cell.steps, cell.tokens, f"{cell.parameters:,}", cell.train_flops,
                                  cell.eval_flops, "REFUSED" if cell.memory == "refused" else cell.memory))
        totals = self.totals()
        rows.append(self._row("total", totals["steps"], totals["tokens"], "-", totals["train_flops"],
                              totals["eval_flops"], f"{len(self.refused)} refused"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"study {self.name}: {len(self.cells)} cells; {self._hours_basis()}",
                 f"evaluation per cell: {self.evaluation}"]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
        if any(cell.memory == "not planned" for cell in self.cells):
            lines.append("memory not planned: no GPU memory known (gpu_mem in launch:; CPU processes are not planned)")
        if self.refused:
            lines.append("refused by the memory planner (launcher plan gives the whole table of a run config):")
            lines += [f"  {cell.name}: {cell.reason}" for cell in self.refused]
        return "\n".join(lines)

    def _row(self, name: str, steps: int, tokens: float, parameters: str, train: float, evaluation: float,
             memory: str) -> tuple[str, ...]:
        return (name, f"{steps:,}", f"{tokens:,.0f}", parameters, f"{train:.4e}", _hours(self.gpu_hours(train)),
                memory, f"{evaluation:.4e}", _hours(self.gpu_hours(evaluation)))

    def totals(self) -> dict[str, float]:
        return {key: sum(getattr(cell, key) for cell in self.cells)
                for key in ("steps", "tokens", "train_flops", "eval_flops")}

    def total_line(self) -> str:
        """The plan's total in two lines, as ``study run`` prints it before running or submitting the cells."""
        t = self.totals()
        train, evaluation = self.gpu_hours(t["train_flops"]), self.gpu_hours(t["eval_flops"])
        hours = self._hours_basis()
        if train is not None:
            hours = f"{train:,.4g} training + {evaluation:,.4g} evaluation {hours}"
        refused = f"; {len(self.refused)} refused by the memory planner" if self.refused else ""
        return (f"study plan: {len(self.cells)} cells, {t['steps']:,} steps, {t['tokens']:.3g} tokens, "
                f"{t['train_flops']:.3g} training + {t['eval_flops']:.3g} evaluation FLOPs{refused}\n"
                f"study plan: {hours}; per cell: python -m launcher study plan")

    def _hours_basis(self) -> str:
        if self.accelerator.peak_flops is None:
            return f"GPU-hours: {self.accelerator.description}"
        return f"GPU-hours at {self.mfu:.0%} MFU of {self.accelerator.description}"


def _hours(hours: float | None) -> str:
    return "-" if hours is None else f"{hours:.4g}"


def accelerator(cluster: ClusterConfig, gpu: str | None = None, peak_tflops: float | None = None) -> Accelerator:
    """The cells' GPU and its peak: ``peak_tflops``, else ``gpu`` or the cluster's ``gpu``, else this machine's
    for a local study; no GPU where a local study runs on CPUs or SLURM jobs request none."""
    if peak_tflops is not None:
        return Accelerator(f"{peak_tflops:g} TFLOP/s per GPU (--peak-tflops)", peak_tflops * 1e12)
    gpu = gpu or cluster.gpu
    if gpu is not None:
        return Accelerator(f"{gpu} ({PEAK_TFLOPS[gpu]:g} TFLOP/s dense bf16)", PEAK_TFLOPS[gpu] * 1e12)
    if cluster.backend == "local":
        if not torch.cuda.is_available():
            return Accelerator("no GPU (the cells run on this machine's CPUs)", None)
        name, peak = torch.cuda.get_device_name(), monitor.peak_tflops(None)
        if peak is None:
            return Accelerator(f"unknown peak FLOP/s of {name} (give --peak-tflops)", None)
        return Accelerator(f"{name} ({peak:g} TFLOP/s dense bf16)", peak * 1e12)
    if cluster.backend == "slurm" and cluster.slurm.gpus_per_node is None:
        return Accelerator("no GPU (the jobs request none: slurm.gpus_per_node)", None)
    return Accelerator("unknown GPU (set gpu in launch:, or give --gpu or --peak-tflops)", None)


def fine_tunings(xtreme: XtremeConfig | None) -> list[FineTuning]:
    """Every fine-tuning of one evaluation seed, the shared SQuAD model once."""
    if xtreme is None:
        return []
    recipes = Path(xtreme.recipes) if xtreme.recipes else RECIPES
    found: list[FineTuning] = []
    for name in xtreme.tasks:
        if name not in TRAIN_SETS:
            raise ConfigError(f"evaluation.xtreme_r.tasks: {name!r} is not a task weam_ds.xtreme_r runs "
                              f"({', '.join(TRAIN_SETS)})")
        if not TRAIN_SETS[name]:
            continue  # fine-tunes nothing
        recipe = load_recipe(TASKS[name], recipes)
        for train_set in TRAIN_SETS[name]:
            if train_set.first_stage not in (None, recipe.first_stage):
                continue
            if TASKS[name].family == "dual_encoder":
                tokens = (recipe.query_length or recipe.max_length) + recipe.max_length
            else:
                tokens = train_set.choices * recipe.max_length
            unit = FineTuning(train_set, recipe.epochs, tokens, recipe.max_length)
            if unit not in found:  # XQuAD and MLQA: one SQuAD model
                found.append(unit)
    return found


def _describe(units: list[FineTuning], seeds: int) -> str:
    if not units:
        return "no fine-tuning"
    each = "; ".join(f"{u.train_set.name} {u.train_set.examples:,} x {u.epochs:g} epochs x {u.tokens_per_example} "
                     "tokens" for u in units)
    return f"{seeds} seed{'s' * (seeds > 1)} x ({each})"


def _memory_key(run: dict) -> str:
    """What decides a cell's memory: its run config less what only names it or sets its length."""
    kept = json.loads(json.dumps(run))
    kept.pop("output_dir", None)
    kept.get("train", {}).pop("seed", None)
    kept.get("train", {}).pop("steps", None)
    kept.get("data", {}).pop("pairs", None)
    return json.dumps(kept, sort_keys=True)


def cost_plan(study: StudyConfig, plans: list[CellPlan], mfu: float = MFU, gpu: str | None = None,
              peak_tflops: float | None = None) -> StudyPlan:
    """The cost of every cell of an expanded study (launcher.study_config.expand)."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu: {mfu} is not a share above 0 and at most 1")
    if peak_tflops is not None and peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops: {peak_tflops} is not positive")
    xtreme = study.evaluation.xtreme_r
    units = fine_tunings(xtreme)
    seeds = len(xtreme.seeds) if xtreme is not None else 0
    shape = study.launch.shape()
    verdicts: dict[str, tuple[str, str | None]] = {}
    cells = []
    for plan in plans:
        cfg = load_run_config(plan.config_file)
        config = encoder_config(cfg.model, int(read_manifest(cfg.data.datasets[0])["tokenizer"]["vocab_size"]),
                                resize_vocab=True)
        n = parameter_counts(config)["non_embedding"]
        pair_tokens, samples = train_tokens(cfg, plan.pairs)
        sentence = pair_tokens / max(2 * samples, 1)
        predicted = cfg.objective.masking.rate * (2 if OBJECTIVES[cfg.objective.name].cross_lingual else 1)  # + XPRED
        steps = cfg.train.steps
        tokens = steps * tokens_per_step(cfg, plan.pairs, study.launch)
        key = _memory_key(plan.run)
        if key not in verdicts:
            fit = plan_launch(cfg, study.launch, shape)
            verdicts[key] = (("not planned", None) if fit is None else
                             ("fits", None) if fit.fits else ("refused", fit.reasons[0]))
        cells.append(CellCost(plan.name, steps, tokens, n,
                              tokens * train_flops_per_token(config, n, seq_len=sentence, mask_rate=predicted),
                              seeds * sum(unit.flops(config, n) for unit in units), *verdicts[key]))
    return StudyPlan(study.name, cells, accelerator(study.launch, gpu, peak_tflops), mfu, _describe(units, seeds))


def plan_study(path: Path, mfu: float = MFU, gpu: str | None = None, peak_tflops: float | None = None) -> StudyPlan:
    """The plan of the study file ``path``; its cells are resolved in a scratch folder, so that planning writes
    nothing into the study directory (a runner may be using it)."""
    study = load_study(path)
    with tempfile.TemporaryDirectory(prefix="study-plan-") as scratch:
        plans = expand(dataclasses.replace(study, study_dir=scratch), str(path))
        return cost_plan(study, plans, mfu, gpu, peak_tflops)


def main(path: Path, mfu: float = MFU, gpu: str | None = None, peak_tflops: float | None = None) -> int:
    """Prints the plan; 0 when no cell is refused by the memory planner, else 1."""
    plan = plan_study(path, mfu, gpu, peak_tflops)
    print(plan.table())
    return 1 if plan.refused else 0
