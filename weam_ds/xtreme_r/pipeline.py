"""What a task family's pipeline gets and gives back: ``Seed`` (one task and fine-tuning seed of a run: its
inputs and where its files go, in the official layout) and ``Outcome`` (the split it predicted, which
languages carry labels, why not when none do, and what result.json records). ``run`` scores the outcome.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.files import write_atomically
from weam_ds.xtreme_r.eval_dir import EvalDir
from weam_ds.xtreme_r.readers import labelled, read_split, task_file
from weam_ds.xtreme_r.recipe import Recipe
from weam_ds.xtreme_r.score import ScoreError
from weam_ds.xtreme_r.tasks import Task
from weam_ds.xtreme_r.tuners import BatchSplit

log = logging.getLogger(__name__)


@dataclass
class Seed:
    model_dir: Path
    data: Path
    task: Task
    langs: list[str]
    recipe: Recipe
    seed: int
    out: Path
    """The run's output folder (``eval_dir``)."""
    deepspeed: str | None = None
    squad_model: Path | None = None
    """The English-SQuAD QA model of this seed when the run trains one (XQuAD, MLQA and Tatoeba use it)."""

    @property
    def eval_dir(self) -> EvalDir:
        return EvalDir(self.out)

    @property
    def work(self) -> Path:
        return self.eval_dir.seed(self.task.name, self.seed)

    @property
    def checkpoints(self) -> Path:
        return self.eval_dir.checkpoints(self.task.name, self.seed)

    @property
    def result(self) -> Path:
        return self.eval_dir.result(self.task.name, self.seed)

    @property
    def predictions(self) -> Path:
        return self.eval_dir.predictions(self.task.name, self.seed)

    def prediction(self, lang: str) -> Path:
        return self.eval_dir.prediction(self.task.name, self.seed, lang)

    def label(self, split: str, lang: str) -> Path:
        return self.eval_dir.label(split, self.task.name, lang)


@dataclass
class Outcome:
    split: str
    """The split predicted: ``test``, or ``dev`` where the download withholds the test labels."""
    langs: list[str]
    """The languages scored."""
    details: dict = field(default_factory=dict)
    """What result.json records beside the scores (selection, stages, candidates ...)."""
    unscored: str | None = None
    """Why the predictions cannot be scored (their labels withheld); None when they are."""
    differences: list[str] = field(default_factory=list)
    """Differences from the official protocol that this run made (beside the recipe's)."""
    batch: BatchSplit | None = None
    """How the effective batch was split over devices and accumulation (None: nothing was fine-tuned)."""


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(value, ensure_ascii=False))


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "".join(f"{line}\n" for line in lines))


def require(paths: list[Path], why: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ScoreError(f"{why}, and the dev sets scored instead are missing: {', '.join(map(str, missing))}")


def test_or_dev_sets(seed: Seed, details: dict) -> tuple[str, dict[str, list]]:
    """Per language the examples to predict from a task in the split-file layout (classification, tagging):
    the test sets when they keep their labels, else the dev sets (the download withholds the test labels),
    less the languages that have none (some UD treebanks: kk, th, tl, yo), which ``details`` records."""
    task = seed.task.name
    tests = {lang: read_split(seed.data, seed.task, "test", lang) for lang in seed.langs}
    if all(labelled(t) for t in tests.values()):
        return "test", tests
    no_dev = [lang for lang in seed.langs if not task_file(seed.data, seed.task, "dev", lang).is_file()]
    if len(no_dev) == len(seed.langs):
        require([task_file(seed.data, seed.task, "dev", lang) for lang in seed.langs],
                f"{task}'s test labels are withheld")
    if no_dev:
        log.warning("%s: test labels withheld and no dev set for %s: not scored", task, " ".join(no_dev))
        details["unscored_languages"] = {lang: "test labels withheld, no dev set" for lang in no_dev}
    return "dev", {lang: read_split(seed.data, seed.task, "dev", lang) for lang in seed.langs if lang not in no_dev}


def fine_tune_split_files(seed: Seed, tokenizer, tuner_class, gold_lines, unit: str) -> Outcome:
    """The pipeline of the families whose data is one file per split and language (classification, tagging):
    fine-tune ``tuner_class`` on the English train file, selected on English dev by the recipe's rule, then
    write each language's predicted lines and its gold ``gold_lines(examples)``."""
    details: dict = {}
    split, tests = test_or_dev_sets(seed, details)
    train = read_split(seed.data, seed.task, "train", "en")
    dev = read_split(seed.data, seed.task, "dev", "en")
    log.info("%s seed %d: fine-tuning on %d English %s, scoring the %s split of %d languages",
             seed.task.name, seed.seed, len(train), unit, split, len(tests))
    tuner = tuner_class(seed.model_dir, tokenizer, train, seed.recipe)
    details["selection"] = tuner.fit(dev, seed.checkpoints, seed.seed, seed.deepspeed)
    for lang, examples in tests.items():
        write_lines(seed.prediction(lang), tuner.predict_lines(examples))
        write_lines(seed.label(split, lang), gold_lines(examples))
    return Outcome(split, list(tests), details, batch=tuner.split)
