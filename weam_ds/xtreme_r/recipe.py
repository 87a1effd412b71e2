"""A task's fine-tuning recipe (``recipes/<task>.yaml``): the official protocol's values, the same for every
model evaluated, so that differences come from the models.

``batch_size`` is the effective batch (examples per optimizer step over every device and accumulation step),
as the official scripts' per-GPU batch times gradient accumulation on their one GPU; ``tuners.batch_split``
divides it over the devices of the run, so the protocol is the same on 1 and 8 GPUs. ``selection`` is the
checkpoint rule (the task's official one when absent). ``differences`` names, in words, every place the recipe
or weam-ds departs from the official scripts; each run's ``result.json`` repeats them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.typed_config import ConfigError, load_yaml
from weam_ds.xtreme_r.tasks import EverySteps, Task

RECIPES = Path(__file__).with_name("recipes")
"""The shipped recipes, one per task run."""

FIRST_STAGES = {"xcopa": ("siqa",)}
"""The first stages a task's recipe may name."""


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


def load_recipe(task: Task, recipes: Path) -> Recipe:
    """The task's recipe from ``recipes``, checked, with its selection rule resolved (the official one when
    the file gives none)."""
    path = recipes / f"{task.name}.yaml"
    recipe = load_yaml(Recipe, path)
    from weam_ds.xtreme_r.dual_encoder import POOLINGS  # here: dual_encoder imports the tuners, which import this

    if recipe.pooling not in POOLINGS:
        raise ConfigError(f"{path}: pooling {recipe.pooling!r} (expected {' or '.join(POOLINGS)})")
    if recipe.first_stage is not None and recipe.first_stage not in FIRST_STAGES.get(task.name, ()):
        allowed = " or ".join(FIRST_STAGES.get(task.name, ()) + ("null",))
        raise ConfigError(f"{path}: first_stage {recipe.first_stage!r} (expected {allowed})")
    if isinstance(recipe.selection, str) and recipe.selection != "last":
        raise ConfigError(f"{path}: selection {recipe.selection!r} (expected last or {{every_steps: N}})")
    for key in ("batch_size", "device_batch", "max_length"):
        value = getattr(recipe, key)
        if value is not None and value < 1:
            raise ConfigError(f"{path}: {key} {value} (expected at least 1)")
    if recipe.selection is None:
        recipe.selection = task.selection
    return recipe


def selection_text(selection: EverySteps | str | None) -> str:
    if isinstance(selection, EverySteps):
        return f"best on English dev, evaluated every {selection.every_steps} steps"
    return "last weights" if selection == "last" else "no fine-tuning"
