"""Fine-tuning with the Hugging Face Trainer (DeepSpeed when a config is given), shared by every family: the
one ``training_arguments`` builder (the dual encoder's tuner uses it too), the split of a recipe's effective
batch over the run's devices, and ``Tuner``, the base of the per-family tuners, which applies the recipe's
selection rule on the English dev set.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_prep.typed_config import ConfigError
from weam_ds.xtreme_r.recipe import Recipe, selection_text
from weam_ds.xtreme_r.tasks import EverySteps


@dataclass
class Encoded:
    """A tuner's rows for the Trainer and what maps them back to their examples (QA: the windows; tagging:
    the sentence pieces and first subwords), passed explicitly to whatever reads predictions of those rows."""
    rows: list[dict]
    layout: object = None


@dataclass(frozen=True)
class BatchSplit:
    """How the effective batch is made: ``devices`` × ``device_batch`` × ``accumulation``."""
    effective: int
    devices: int
    device_batch: int
    accumulation: int


def device_count() -> int:
    """The devices a Trainer in this process trains on: the launcher's world size (one device per process),
    or, in a single process, every visible GPU (the Trainer then splits each batch over them)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return world
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def batch_split(recipe: Recipe, devices: int, where: str = "recipe") -> BatchSplit:
    """The recipe's effective batch over ``devices``: its ``device_batch`` per device (else an even share)
    and the gradient accumulation that makes up the rest. A batch that does not divide is refused."""
    share, left = divmod(recipe.batch_size, devices)
    if left:
        raise ConfigError(f"{where}: batch_size {recipe.batch_size} does not divide over {devices} devices")
    device_batch = recipe.device_batch or share
    accumulation, left = divmod(share, device_batch)
    if left or not accumulation:
        raise ConfigError(f"{where}: batch_size {recipe.batch_size} is not {devices} devices x device_batch "
                          f"{device_batch} x a whole number of accumulation steps")
    return BatchSplit(recipe.batch_size, devices, device_batch, accumulation)


def training_arguments(recipe: Recipe, split: BatchSplit, output_dir: Path, seed: int, deepspeed: str | None,
                       select: bool, **extra):
    """The TrainingArguments of every tuner. ``select``: evaluate the English dev set at the recipe's
    cadence and keep the best checkpoint (``eval_score``, higher is better); otherwise nothing is evaluated
    or saved and the last weights are kept."""
    import torch
    from transformers import TrainingArguments

    every = recipe.selection.every_steps if select and isinstance(recipe.selection, EverySteps) else None
    cadence = dict(eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
                   load_best_model_at_end=True, metric_for_best_model="score", greater_is_better=True,
                   save_total_limit=1) if every else dict(eval_strategy="no", save_strategy="no")
    return TrainingArguments(
        output_dir=str(output_dir), learning_rate=recipe.learning_rate, num_train_epochs=recipe.epochs,
        per_device_train_batch_size=split.device_batch, per_device_eval_batch_size=split.device_batch,
        gradient_accumulation_steps=split.accumulation, warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay, seed=seed, report_to=[], logging_strategy="epoch", deepspeed=deepspeed,
        use_cpu=not torch.cuda.is_available(), **cadence, **extra)


def selection_record(trainer, recipe: Recipe, dev_available: bool) -> dict:
    """For result.json: the rule applied, the steps evaluated with their English dev scores, and the step
    whose weights were kept."""
    state = trainer.state
    evaluated = {e["step"]: e["eval_score"] for e in state.log_history if "eval_score" in e}
    kept = state.global_step
    if state.best_model_checkpoint is not None:
        kept = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    rule = selection_text(recipe.selection)
    if isinstance(recipe.selection, EverySteps) and not dev_available:
        rule = "last weights: the English dev labels are withheld"
    elif isinstance(recipe.selection, EverySteps) and not evaluated:
        rule += f" (training ended at step {state.global_step}, before the first evaluation: last weights)"
    return {"rule": rule, "evaluated": evaluated, "kept_step": kept, "final_step": state.global_step}


class Tuner:
    """Fine-tunes one task head: subclasses say how examples become rows (``encode``), how the English dev
    predictions score (``dev_score``) and which model class and collator they use."""

    auto_class = ""
    """The transformers Auto class of the task head; ``self.labels`` names its outputs."""

    def __init__(self, model_dir: Path, tokenizer, train: list, recipe: Recipe):
        self.model_dir, self.tokenizer, self.train, self.recipe = model_dir, tokenizer, train, recipe
        self.split = batch_split(recipe, device_count())

    def fit(self, dev: list | None, checkpoints: Path, seed: int, deepspeed: str | None) -> dict:
        """Trains; with a dev set and a step cadence, evaluates it at that cadence and keeps the best
        checkpoint, else keeps the last weights. Returns the selection record."""
        from transformers import Trainer, set_seed

        if deepspeed:
            from weam_ds.extensions import before_deepspeed

            before_deepspeed()  # as the training: on CPU, no ~75 s C++ build of an op it never uses
        set_seed(seed)
        select = dev is not None and isinstance(self.recipe.selection, EverySteps)
        args = training_arguments(self.recipe, self.split, checkpoints, seed, deepspeed, select)
        dev_rows = self.encode(dev) if select else None
        self.trainer = Trainer(model=self.model(), args=args, train_dataset=self.encode(self.train).rows,
                               eval_dataset=dev_rows.rows if select else None,
                               compute_metrics=(lambda p: {"score": self.dev_score(p, dev, dev_rows)}) if select
                               else None, data_collator=self.collator())
        self.trainer.train()
        return selection_record(self.trainer, self.recipe, dev is not None)

    def model(self):
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(
            str(self.model_dir), local_files_only=True, num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)), label2id={x: i for i, x in enumerate(self.labels)})

    def logits(self, rows: list[dict]) -> np.ndarray:
        return self.trainer.predict(rows).predictions

    def save_selected(self, path: Path) -> None:
        """The kept weights as a ``from_pretrained`` folder (with the tokenizer). Under ZeRO-3 every rank takes
        part in gathering the partitioned parameters (whatever ``stage3_gather_16bit_weights_on_model_save``
        says), and the main process writes them. Under a bf16/fp16 DeepSpeed config these are the model's
        16-bit weights, not the optimizer's fp32 master copy."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        trainer = self.trainer
        if trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled():
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None):
                if trainer.is_world_process_zero():
                    trainer.model.save_pretrained(str(path))
        else:
            trainer.save_model(str(path))
        if trainer.is_world_process_zero():
            self.tokenizer.save_pretrained(str(path))
        trainer.accelerator.wait_for_everyone()

    def release(self) -> None:
        """Drops the trainer (model, optimizer state, DeepSpeed engine) before the next one loads its own."""
        import gc

        import torch

        self.trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def final_weights_difference(selection: dict | None) -> list[str]:
    """The official scripts' ``--eval_all_checkpoints`` scores the final weights on English dev beside the
    ``--save_steps`` checkpoints. The Trainer makes the final step a candidate only in transformers versions that
    evaluate at the end of training (the installed one does): a selection record whose candidates miss it says so.
    Steps are compared as text: a record read back from JSON has them as keys."""
    if not selection or not selection["evaluated"] or str(selection["final_step"]) in map(str, selection["evaluated"]):
        return []
    return [f"selection: the final weights (step {selection['final_step']}) were not a candidate: this transformers "
            f"version's Trainer evaluates only every --save_steps, the official scripts' --eval_all_checkpoints "
            f"scores the final weights too"]


def protocol_record(recipe: Recipe, split: BatchSplit | None, script: str | None, differences: list[str],
                    selection: dict | None = None) -> dict:
    """result.json's ``protocol`` block: the official script the values follow, the batch as run, and every
    difference from the official protocol (the recipe's, the run's, and the ``selection`` record's)."""
    return {"official_script": script and f"google-research/xtreme scripts/{script}",
            "selection": selection_text(recipe.selection), "batch": split and asdict(split),
            "differences": list(recipe.differences) + differences + final_weights_difference(selection)}
