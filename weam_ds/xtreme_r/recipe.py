"""A task's fine-tuning recipe (``recipes/<task>.yaml``): the official protocol's values, the same for every
model of a size class, so that differences come from the models.

Size classes: the official scripts branch on the model (``train_xnli.sh``: xlm-roberta-large and xlm-mlm-100-1280
get lr 3e-5 and batch 2 x 16, every other model lr 2e-5 and 8 x 4). A recipe's top-level values are the base
ones; its ``large`` block holds what the scripts change for large models. ``model_size_class`` decides, in one
place, which class a model is in; ``for_size`` gives the recipe's values for that class, and result.json's
``recipe.size_class`` says which applied.

``batch_size`` is the effective batch (examples per optimizer step over every device and accumulation step),
as the official scripts' per-GPU batch times gradient accumulation on their one GPU; ``tuners.batch_split``
divides it over the devices of the run, so the protocol is the same on 1 and 8 GPUs. ``selection`` is the
checkpoint rule (the task's official one when absent). ``differences`` names, in words, every place the recipe
or weam-ds departs from the official scripts; each run's ``result.json`` repeats them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from data_prep.typed_config import ConfigError, load_yaml
from weam_ds.presets import encoder_config, parameter_counts
from weam_ds.xtreme_r.encoders import POOLINGS
from weam_ds.xtreme_r.tasks import EverySteps, Task

RECIPES = Path(__file__).with_name("recipes")
"""The shipped recipes, one per task run."""

FIRST_STAGES = {"xcopa": ("siqa",)}
"""The first stages a task's recipe may name."""

SizeClass = Literal["base", "large"]
SIZE_CLASSES: tuple[SizeClass, ...] = ("base", "large")
LARGE_NON_EMBEDDING = 200_000_000
"""Non-embedding parameters from which a model is ``large``. The scripts' large branch is xlm-roberta-large (24
layers of 1024: about 300M) and xlm-mlm-100-1280 (16 of 1280: about 315M); they give the base values to mBERT and
xlm-roberta-base (about 85M) and to xlm-mlm-tlm-xnli15-1024 (12 of 1024: about 150M). Of the presets, tiny, mini
and base are base; large, xl and xxl are large. Embeddings are left out: they grow with the vocabulary, not with
what the scripts' branch is about (depth and width, hence memory and the learning rate that trains stably)."""


@dataclass
class SizeValues:
    """What the official script changes for a size class; an absent key keeps the recipe's (base) value."""
    learning_rate: float | None = None
    batch_size: int | None = None
    device_batch: int | None = None
    differences: list[str] = field(default_factory=list)
    """Departures from the script's branch for this class, beside the recipe's own."""


@dataclass
class Recipe:
    learning_rate: float
    epochs: float
    batch_size: int
    """The effective batch: examples per optimizer step over all devices and accumulation steps."""
    max_length: int
    """Tokens per input (QA: question and context window; dual encoders: the candidate side)."""
    device_batch: int | None = None
    """Examples per device per forward pass; gradient accumulation makes up the rest of ``batch_size``. None:
    ``batch_size`` split evenly over the devices, without accumulation. Dual encoders: the in-batch negatives
    (part of the objective, so the official per-GPU batch)."""
    warmup_steps: float = 0
    """Steps, or a fraction of all steps when below 1 (transformers' convention)."""
    weight_decay: float = 0.0
    selection: EverySteps | str | None = None
    """``last`` or ``{every_steps: N}`` (on the English dev set only); absent: the task's official rule."""
    doc_stride: int = 128
    """QA: tokens a context window moves by (the official SQuAD features' stride)."""
    max_query_length: int = 64
    """QA: the question's token cap."""
    layer: int | None = None
    """Tatoeba: the hidden layer whose mean-pooled states are the sentence embeddings (None: the default of
    the Tatoeba evaluator)."""
    query_length: int | None = None
    """Dual encoders: the query side's length limit (default max_length, which bounds the candidate side)."""
    pooling: str = "cls"
    """Dual encoders: ``cls`` (the first token's final state) or ``mean`` (of the final states)."""
    first_stage: str | None = None
    """XCOPA: the task fine-tuned on before English COPA, with the same values: ``siqa`` (the official recipe),
    or null for COPA alone."""
    differences: list[str] = field(default_factory=list)
    """Where this recipe, or weam-ds for this task, departs from the official protocol, in words."""
    large: SizeValues | None = None
    """The script's values for large models where they differ from the base ones (``LARGE_NON_EMBEDDING``);
    absent: the script has one set of values for every model."""
    size_class: SizeClass = "base"
    """The size class whose values the recipe holds: set by ``for_size`` from the model, not by the file."""


def model_size_class(model_dir: Path) -> SizeClass:
    """The size class of the model in ``model_dir`` (the one place that decides it): ``large`` from
    ``LARGE_NON_EMBEDDING`` non-embedding parameters, counted from its config (no weights read)."""
    non_embedding = parameter_counts(encoder_config(model_dir, 0))["non_embedding"]
    return "large" if non_embedding >= LARGE_NON_EMBEDDING else "base"


def for_size(recipe: Recipe, size: SizeClass) -> Recipe:
    """The recipe's values for a model of size class ``size``: its own, or those its ``large`` block changes."""
    values = recipe.large if size == "large" else None
    if values is None:
        return replace(recipe, size_class=size)
    changed = {key: getattr(values, key) for key in ("learning_rate", "batch_size", "device_batch")
               if getattr(values, key) is not None}
    return replace(recipe, **changed, size_class=size, differences=recipe.differences + values.differences)


def load_recipe(task: Task, recipes: Path) -> Recipe:
    """The task's recipe from ``recipes`` (its base values; ``for_size`` gives another class's), checked, with
    its selection rule resolved (the official one when the file gives none)."""
    path = recipes / f"{task.name}.yaml"
    recipe = load_yaml(Recipe, path)
    if recipe.pooling not in POOLINGS:
        raise ConfigError(f"{path}: pooling {recipe.pooling!r} (expected {' or '.join(POOLINGS)})")
    if recipe.first_stage is not None and recipe.first_stage not in FIRST_STAGES.get(task.name, ()):
        allowed = " or ".join(FIRST_STAGES.get(task.name, ()) + ("null",))
        raise ConfigError(f"{path}: first_stage {recipe.first_stage!r} (expected {allowed})")
    if recipe.size_class != "base":
        raise ConfigError(f"{path}: size_class {recipe.size_class!r} is the model's to set, not the file's "
                          f"(the large models' values go under large:)")
    if isinstance(recipe.selection, str) and recipe.selection != "last":
        raise ConfigError(f"{path}: selection {recipe.selection!r} (expected last or {{every_steps: N}})")
    for prefix, values in (("", recipe), ("large.", recipe.large)):
        for key in ("batch_size", "device_batch", "max_length"):
            value = getattr(values, key, None)
            if value is not None and value < 1:
                raise ConfigError(f"{path}: {prefix}{key} {value} (expected at least 1)")
    if recipe.selection is None:
        recipe.selection = task.selection
    return recipe


def selection_text(selection: EverySteps | str | None) -> str:
    if isinstance(selection, EverySteps):
        return f"best on English dev, evaluated every {selection.every_steps} steps"
    return "last weights" if selection == "last" else "no fine-tuning"
