"""Extractive QA (XQuAD, MLQA, TyDiQA-GoldP): contexts cut into the official SQuAD windows (``qa_windows``:
moved by ``doc_stride``, the question capped at ``max_query_length``, answers decoded under the max-context
rule), fine-tuned on English, predicted in every language.

XQuAD and MLQA are predicted by one model per seed fine-tuned on English SQuAD v1.1, as the official scripts
do (``train_qa.sh`` trains it once, ``predict_qa.sh`` predicts both): ``train_squad`` saves it under
``<out>/squad/seed<k>/model``, and Tatoeba embeds with it too. TyDiQA-GoldP trains its own on its English set.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.eval_dir import EvalDir
from weam_ds.xtreme_r.pipeline import Outcome, Seed, write_json
from weam_ds.xtreme_r.qa_windows import decode_answers, qa_features
from weam_ds.xtreme_r.readers import QAExample, answered, read_squad, task_file
from weam_ds.xtreme_r.recipe import Recipe
from weam_ds.xtreme_r.score import ScoreError
from weam_ds.xtreme_r.tasks import TASKS, Task
from weam_ds.xtreme_r.tuners import Encoded, Tuner, batch_split, device_count, training_arguments

log = logging.getLogger(__name__)

SQUAD_TRAINED = ("xquad", "mlqa")
"""The QA tasks whose English model is the shared SQuAD one (their descriptions name SQuAD's files)."""


class QuestionAnswering(Tuner):
    def model(self):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(str(self.model_dir), local_files_only=True)

    def collator(self):
        from transformers import default_data_collator

        return default_data_collator

    def encode(self, examples: list[QAExample]) -> Encoded:
        r = self.recipe
        features = qa_features(self.tokenizer, [e.question for e in examples], [e.context for e in examples],
                               r.max_length, r.doc_stride, r.max_query_length, [e.answers for e in examples])
        return Encoded(features.rows, features)

    def decode(self, predictions, examples: list[QAExample], encoded: Encoded) -> dict[str, str]:
        texts = decode_answers(encoded.layout, predictions[0], predictions[1], [e.context for e in examples])
        return {e.id: text for e, text in zip(examples, texts)}

    def dev_score(self, prediction, examples: list[QAExample], encoded: Encoded) -> float:
        answers = self.decode(prediction.predictions, examples, encoded)
        gold = [{"paragraphs": [{"qas": [{"id": e.id, "answers": e.answers} for e in examples]}]}]
        return metrics.squad(gold, answers)["f1"]

    def answers(self, examples: list[QAExample]) -> dict[str, str]:
        encoded = self.encode(examples)
        return self.decode(self.trainer.predict(encoded.rows).predictions, examples, encoded)

    def load_for_prediction(self, seed: int, scratch: Path) -> None:
        """A Trainer around ``model_dir`` as it is, for prediction only. Without DeepSpeed: its inference
        path takes ZeRO-3 configs only, and a QA model that was fine-tuned whole fits one device."""
        from transformers import Trainer

        args = training_arguments(self.recipe, self.split, scratch, seed, None, select=False)
        self.trainer = Trainer(model=self.model(), args=args, data_collator=self.collator())


def english_sets(data: Path, task: Task) -> tuple[list[QAExample], list[QAExample] | None]:
    """The English training and dev examples; dev None when the download withholds its answers (TyDiQA)."""
    train_file, dev_file = task_file(data, task, "train"), task_file(data, task, "dev")
    train, dev = read_squad(train_file)[0], read_squad(dev_file)[0]
    if not answered(train):
        raise ScoreError(f"{train_file}: no answers to train on")
    if not answered(dev):
        log.warning("%s: %s has no answers (withheld by the download): no selection, the last weights are kept",
                    task.name, dev_file)
        return train, None
    return train, dev


def _test_sets(seed: Seed):
    """(tests, split, unscored) of a QA task: per language the examples with the file's ``data`` list, the
    split they are, and why they are not scored (None when they are). XTREME's download strips the answers
    of XQuAD, of MLQA's test sets and of TyDiQA-GoldP's dev sets (its evaluation sets, the English one
    included): MLQA then scores its dev sets, which keep theirs; XQuAD and TyDiQA have no labelled
    alternative."""
    task, data = seed.task, seed.data
    paths = {lang: task_file(data, task, "test", lang) for lang in seed.langs}
    tests = {lang: read_squad(path) for lang, path in paths.items()}
    split = task.test_split
    stripped = [path for lang, path in paths.items() if not answered(tests[lang][0])]
    if not stripped:
        return tests, split, None
    if "labelled_dev" in task.files:  # MLQA: the download strips MLQA_V1/test only
        paths = {lang: task_file(data, task, "labelled_dev", lang) for lang in seed.langs}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ScoreError(f"{task.name}: the test answers are withheld ({stripped[0]} has none), and the dev "
                             f"sets to score instead are missing: {', '.join(missing)}")
        tests = {lang: read_squad(path) for lang, path in paths.items()}
        unanswered = [str(path) for lang, path in paths.items() if not answered(tests[lang][0])]
        if unanswered:
            raise ScoreError(f"{task.name}: neither the test nor the dev sets carry answers: {', '.join(unanswered)}")
        return tests, "dev", None
    reason = (f"{split} answers withheld by the download ({len(stripped)} of {len(paths)} files have none, "
              f"{stripped[0]} among them) and no labelled {task.name} set replaces them")
    return tests, split, reason


def recipe_hash(recipe: Recipe) -> str:
    """What a reused SQuAD model is checked against: the sha256 of the recipe's values (its size class's)."""
    values = {k: v for k, v in asdict(recipe).items() if k != "differences"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def train_squad(model_dir: Path, data: Path, recipe: Recipe, seed: int, out: Path, deepspeed: str | None,
                tokenizer) -> Path:
    """The seed's English-SQuAD QA model, fine-tuned once and reused (``selection.json``, written after the
    weights with the recipe's hash, marks it complete); one fine-tuned under another recipe (or before the hash
    was recorded) is fine-tuned again. Returns its ``from_pretrained`` folder."""
    folder = EvalDir(out).squad(seed)
    done = folder / "selection.json"
    if done.is_file():
        if json.loads(done.read_text(encoding="utf-8")).get("recipe_sha256") == recipe_hash(recipe):
            return folder / "model"
        log.warning("English SQuAD seed %d: %s was fine-tuned under another recipe: fine-tuning it again", seed,
                    folder / "model")
        done.unlink()  # first: a run cut off from here on finds no finished model
        shutil.rmtree(folder)
    train, dev = english_sets(data, TASKS["xquad"])
    log.info("English SQuAD seed %d: fine-tuning on %d questions (the model of %s and Tatoeba)", seed, len(train),
             " and ".join(SQUAD_TRAINED))
    tuner = QuestionAnswering(model_dir, tokenizer, train, recipe)
    record = tuner.fit(dev, folder / "checkpoints", seed, deepspeed)
    tuner.save_selected(folder / "model")
    tuner.release()
    write_json(done, {"selection": record, "recipe": asdict(recipe), "recipe_sha256": recipe_hash(recipe)})
    return folder / "model"


def run_seed(seed: Seed, tokenizer) -> Outcome:
    tests, split, unscored = _test_sets(seed)
    if unscored:
        log.warning("%s seed %d: NOT SCORED: %s; its predictions are written in the official layout",
                    seed.task.name, seed.seed, unscored)
    if seed.squad_model is not None:  # XQuAD, MLQA: the seed's shared English-SQuAD model (run trained it)
        squad = seed.squad_model
        tuner = QuestionAnswering(squad, tokenizer, [], seed.recipe)
        tuner.load_for_prediction(seed.seed, seed.checkpoints)
        record = json.loads((squad.parent / "selection.json").read_text(encoding="utf-8"))["selection"]
        details = {"english_model": str(squad), "selection": record}
    else:
        train, dev = english_sets(seed.data, seed.task)
        log.info("%s seed %d: fine-tuning on %d English questions", seed.task.name, seed.seed, len(train))
        tuner = QuestionAnswering(seed.model_dir, tokenizer, train, seed.recipe)
        details = {"selection": tuner.fit(dev, seed.checkpoints, seed.seed, seed.deepspeed)}
    for lang, (examples, articles) in tests.items():
        write_json(seed.prediction(lang), tuner.answers(examples))
        if not unscored:  # stripped answers are no labels
            write_json(seed.label(split, lang), {"data": articles})
    return Outcome(split, list(tests), details, unscored, batch=batch_split(seed.recipe, device_count()))
