"""Multiple choice (XCOPA), in two stages as the official recipe trains it (``train_xcopa.sh``): English SIQA,
then English COPA from the SIQA weights, each under the recipe's selection rule (officially the last weights
of each stage); a recipe with ``first_stage: null`` trains on COPA alone. The stages that ran are in
result.json.

The model scores a record's (first, choice) pairs against each other; one model class
(AutoModelForMultipleChoice, one score per pair) serves any number of choices, so SIQA's three-way stage hands
its weights on to COPA's two-way one. COPA/XCOPA: the premise with its question, worded as the official
script words it ("What was the cause?" / "What was the effect?"), paired with each of the two choices. SIQA:
the context followed by the question, paired with each of the three answers.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from weam_ds.xtreme_r.pipeline import Outcome, Seed, require, write_lines
from weam_ds.xtreme_r.readers import choices_labelled, read_choices, read_siqa, siqa_files, task_file
from weam_ds.xtreme_r.tuners import Encoded, Tuner

log = logging.getLogger(__name__)


class MultipleChoice(Tuner):
    QUESTIONS = {"cause": "What was the cause?", "effect": "What was the effect?"}

    def model(self):
        from transformers import AutoModelForMultipleChoice

        return AutoModelForMultipleChoice.from_pretrained(str(self.model_dir), local_files_only=True)

    def collator(self):
        from transformers import DataCollatorForMultipleChoice

        return DataCollatorForMultipleChoice(self.tokenizer)

    def pairs(self, record: dict) -> tuple[str, list[str]]:
        """A record's first segment and its choices."""
        if "premise" in record:  # COPA and XCOPA
            first = f"{record['premise']} {self.QUESTIONS.get(record.get('question'), '')}".strip()
            return first, [record["choice1"], record["choice2"]]
        return f"{record['context']} {record['question']}", [record["answerA"], record["answerB"], record["answerC"]]

    def encode(self, examples: list[dict]) -> Encoded:
        pairs = [self.pairs(r) for r in examples]
        enc = self.tokenizer([first for first, choices in pairs for _ in choices],
                             [choice for _, choices in pairs for choice in choices],
                             truncation=True, max_length=self.recipe.max_length)
        rows, at = [], 0
        for r, (_, choices) in zip(examples, pairs):
            rows.append({**{key: v[at:at + len(choices)] for key, v in enc.items()}, "labels": int(r.get("label", 0))})
            at += len(choices)
        return Encoded(rows)

    def dev_score(self, prediction, examples: list, encoded: Encoded) -> float:
        return 100.0 * float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())

    def choose(self, examples: list[dict]) -> list[int]:
        return [int(k) for k in self.logits(self.encode(examples).rows).argmax(-1)]


@dataclass
class Stage:
    """One fine-tuning stage: its English training data, and the English dev data of its selection."""
    name: str
    train_file: Path
    dev_file: Path
    train: list[dict]
    dev: list[dict]


def stages(seed: Seed) -> list[Stage]:
    """The recipe's first stage (SIQA), then English COPA."""
    found = []
    if seed.recipe.first_stage == "siqa":
        found.append(Stage("siqa", siqa_files(seed.data, "train")[0], siqa_files(seed.data, "dev")[0],
                           read_siqa(seed.data, "train"), read_siqa(seed.data, "dev")))
    train, dev = task_file(seed.data, seed.task, "train"), task_file(seed.data, seed.task, "dev")
    return found + [Stage("copa", train, dev, read_choices(train), read_choices(dev))]


def fit_stages(seed: Seed, tokenizer, plan: list[Stage]) -> tuple[MultipleChoice, list[dict]]:
    """Fine-tunes stage after stage with the recipe's values, each from the weights its predecessor kept (the
    first from MODEL_DIR), through the same Trainer path (DeepSpeed included). Returns the last stage's tuner
    and, for result.json, what each stage trained on and the weights it kept."""
    start, record, checkpoints = seed.model_dir, [], seed.checkpoints
    for k, stage in enumerate(plan):
        log.info("stage %d/%d: %s, %d English training examples, %d dev examples", k + 1, len(plan), stage.name,
                 len(stage.train), len(stage.dev))
        tuner = MultipleChoice(start, tokenizer, stage.train, seed.recipe)
        selection = tuner.fit(stage.dev, checkpoints / stage.name, seed.seed, seed.deepspeed)
        record.append({"stage": stage.name, "from": plan[k - 1].name if k else "model",
                       "train": stage.train_file.relative_to(seed.data).as_posix(),
                       "dev": stage.dev_file.relative_to(seed.data).as_posix(), "train_examples": len(stage.train),
                       "dev_examples": len(stage.dev), "selection": selection})
        if k + 1 < len(plan):
            start = checkpoints / f"{stage.name}-kept"
            tuner.save_selected(start)
            tuner.release()
    return tuner, record


def run_seed(seed: Seed, tokenizer) -> Outcome:
    plan = stages(seed)
    tests = {lang: read_choices(task_file(seed.data, seed.task, "test", lang)) for lang in seed.langs}
    split = "test" if all(choices_labelled(t) for t in tests.values()) else "dev"  # the download zeroes them
    if split == "dev":
        vals = [task_file(seed.data, seed.task, "dev", lang) for lang in seed.langs]
        require(vals, f"{seed.task.name}'s test labels are withheld")
        tests = {lang: read_choices(path) for lang, path in zip(seed.langs, vals)}
    tuner, record = fit_stages(seed, tokenizer, plan)
    for lang, examples in tests.items():
        write_lines(seed.prediction(lang), [json.dumps({"label": k}) for k in tuner.choose(examples)])
        write_lines(seed.label(split, lang), [json.dumps(r, ensure_ascii=False) for r in examples])
    return Outcome(split, list(tests), {"stages": record}, batch=tuner.split)
