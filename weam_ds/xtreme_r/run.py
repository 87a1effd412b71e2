"""Zero-shot fine-tuning and prediction under the matched protocol, for every XTREME-R task and PAWS-X:
sentence-pair classification (XNLI, PAWS-X), multiple choice (XCOPA), tagging (UD-POS, PAN-X), extractive QA
(XQuAD, MLQA, TyDiQA-GoldP), Tatoeba (no fine-tuning), and retrieval with a fine-tuned dual encoder (Mewsli-X,
LAReQA; see dual_encoder.py).

For each task and seed: fine-tune MODEL_DIR on the English training data with the task's recipe (one
file per task, the same for every model), select the epoch on the English dev set only (target-language
dev data is never used), predict every language, write predictions and labels in the official layout,
and score them with the official scorer (LAReQA, which the official scorer does not cover, with the XTREME
repository's mAP@20). XCOPA trains in two stages, as the official recipe does: English SIQA (selected on
SIQA dev), then English COPA from the selected SIQA weights (selected on COPA val); its result.json lists
the stages that ran, and a recipe with ``first_stage: null`` trains on COPA alone.
``<out>/<task>/seed<k>/result.json`` is written last, so an interrupted run resumes at the task/seed level
(a seed cut off between its stages is redone from the start); ``<out>/results.json`` aggregates mean and
standard deviation over seeds, per language, task and category, and the transfer gap (English minus the
mean of the other languages). Pass a DeepSpeed config (``ds_configs/``) to fine-tune large encoders under
ZeRO.

Where XTREME's download withholds the evaluation labels, the dev sets are scored when they keep theirs
(classification, tagging, XCOPA, Mewsli-X, MLQA), and ``"split": "dev"`` says so. Where no labelled
alternative exists (XQuAD and TyDiQA-GoldP with their answers stripped, Tatoeba with its English side
sorted), the predictions are still written in the official layout, which is what the leaderboard takes,
but not scored: result.json has ``"scores": null`` and a ``reason``, and results.json reports the task as
unscored, leaving it out of ``tasks_mean`` and of its categories. TyDiQA-GoldP's English dev set is also its
model-selection set: without its answers the last epoch is kept, and result.json's ``selection`` says so.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_prep.typed_config import load_yaml
from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.readers import (CLASSIFICATION, DUAL_ENCODER, MULTIPLE_CHOICE, QA, RETRIEVAL, TAGGING,
                                      answered, check_layout, choice_file, choices_labelled, labelled, mewslix_files,
                                      mlqa_dev_file, qa_files, read_choices, read_entities, read_mention_pairs,
                                      read_sentences, read_siqa, read_split, read_squad, read_squad_sentences,
                                      read_wikinews, read_xquad_r, siqa_files, split_file, squad_files,
                                      tatoeba_files, tatoeba_shuffled)
from weam_ds.xtreme_r.score import ScoreError, score, score_task, write_scores
from weam_ds.xtreme_r.tasks import CATEGORIES, LANGUAGES, LAREQA_LANGUAGES

log = logging.getLogger(__name__)
RECIPES = Path(__file__).with_name("recipes")
IGNORE = -100


@dataclass
class Recipe:
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    warmup_steps: float = 0
    """Steps, or a fraction of all steps when below 1 (transformers' convention)."""
    weight_decay: float = 0.0
    doc_stride: int = 128
    """QA: overlap of the windows a long context is cut into."""
    layer: int | None = None
    """Tatoeba: the hidden layer whose mean-pooled states are the sentence embeddings (default: a middle one)."""
    gradient_accumulation_steps: int = 1
    query_length: int | None = None
    """Dual encoders: the query side's length limit (default max_length, which bounds the candidate side)."""
    pooling: str = "cls"
    """Dual encoders: ``cls`` (the first token's final state) or ``mean`` (of the final states)."""
    first_stage: str | None = None
    """XCOPA: the task fine-tuned on before English COPA, with the same values: ``siqa`` (the official recipe),
    or null (or absent) for COPA alone."""


FIRST_STAGES = {"xcopa": ("siqa",)}
"""The first stages a task's recipe may name."""


def task_languages(task: str) -> list[str]:
    if task == "lareqa":  # the official scorer lists none: XQuAD-R's
        return LAREQA_LANGUAGES
    return LANGUAGES["xtreme-r"].get(task) or LANGUAGES["xtreme"][task]


def run(model_dir: Path, data: Path, tasks: list[str], out: Path, seeds: list[int], recipes: Path = RECIPES,
        languages: list[str] | None = None, deepspeed: str | None = None) -> dict:
    supported = CLASSIFICATION + MULTIPLE_CHOICE + TAGGING + QA + RETRIEVAL + DUAL_ENCODER
    unsupported = [t for t in tasks if t not in supported]
    if unsupported:
        raise ScoreError(f"--tasks: {', '.join(unsupported)} not supported by run yet "
                         f"(supported: {', '.join(supported)})")
    plan = {}
    for task in tasks:
        langs = [lang for lang in task_languages(task) if languages is None or lang in languages]
        if not langs:
            raise ScoreError(f"--languages: none of {task}'s languages ({' '.join(task_languages(task))})")
        recipe = load_yaml(Recipe, recipes / f"{task}.yaml")
        if recipe.pooling not in ("cls", "mean"):
            raise ScoreError(f"{recipes / f'{task}.yaml'}: pooling {recipe.pooling!r} (expected cls or mean)")
        if recipe.first_stage is not None and recipe.first_stage not in FIRST_STAGES.get(task, ()):
            allowed = " or ".join(FIRST_STAGES.get(task, ()) + ("null",))
            raise ScoreError(f"{recipes / f'{task}.yaml'}: first_stage {recipe.first_stage!r} (expected {allowed})")
        check_layout(data, task, langs, recipe.first_stage)
        plan[task] = (recipe, langs)
    for task, (recipe, langs) in plan.items():
        for seed in seeds:
            done = out / task / f"seed{seed}" / "result.json"
            if done.is_file():
                log.info("%s seed %d: done before, skipped", task, seed)
                continue
            _run_seed(model_dir, data, task, langs, recipe, seed, out, deepspeed)
    results = aggregate(out, plan, seeds)
    write_scores(results, out / "results.json")
    return results


def _run_seed(model_dir: Path, data: Path, task: str, langs: list[str], recipe: Recipe, seed: int, out: Path,
              deepspeed: str | None) -> None:
    from transformers import AutoTokenizer

    if task in RETRIEVAL:
        return _retrieve_seed(model_dir, data, task, langs, recipe, seed, out)
    if task in DUAL_ENCODER:
        return _dual_encoder_seed(model_dir, data, task, langs, recipe, seed, out, deepspeed)
    work = out / task / f"seed{seed}"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    details = {"model": str(model_dir), "recipe": asdict(recipe)}
    unscored = None
    if task in QA:
        train, dev, tests, split, unscored, details["selection"] = _qa_data(data, task, langs)
    elif task in MULTIPLE_CHOICE:
        stages = _choice_stages(data, recipe)
        train, dev = stages[-1].train, stages[-1].dev
        tests = {lang: read_choices(choice_file(data, "test", lang)) for lang in langs}
        split = "test" if all(choices_labelled(t) for t in tests.values()) else "dev"  # the download zeroes them
        if split == "dev":
            _require([choice_file(data, "val", lang) for lang in langs], f"{task}'s test labels are withheld")
            tests = {lang: read_choices(choice_file(data, "val", lang)) for lang in langs}
    else:
        train, dev = read_split(data, task, "train", "en"), read_split(data, task, "dev", "en")
        tests = {lang: read_split(data, task, "test", lang) for lang in langs}
        split = "test" if all(labelled(t) for t in tests.values()) else "dev"
        if split == "dev":  # the download withholds test labels: score the dev sets, and say so
            # Some UD treebanks (kk, th, tl, yo) have no dev set: those languages cannot be scored.
            no_dev = [lang for lang in langs if not split_file(data, task, "dev", lang).is_file()]
            if len(no_dev) == len(langs):
                _require([split_file(data, task, "dev", lang) for lang in langs], f"{task}'s test labels are withheld")
            if no_dev:
                log.warning("%s: test labels withheld and no dev set for %s: not scored", task, " ".join(no_dev))
                details["unscored_languages"] = {lang: "test labels withheld, no dev set" for lang in no_dev}
                langs = [lang for lang in langs if lang not in no_dev]
            tests = {lang: read_split(data, task, "dev", lang) for lang in langs}
    if unscored:
        log.warning("%s seed %d: NOT SCORED: %s; its predictions are written in the official layout", task, seed,
                    unscored)
    log.info("%s seed %d: fine-tuning on %d English examples, %s the %s split of %d languages", task, seed,
             len(train), "predicting" if unscored else "scoring", split, len(langs))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # left by a seed cut off mid-way: it starts afresh
    if task in MULTIPLE_CHOICE:
        tuner, details["stages"] = _fit_stages(model_dir, tokenizer, stages, recipe, data, work / "checkpoints",
                                               seed, deepspeed)
    else:
        tuner = {**dict.fromkeys(CLASSIFICATION, _Classifier), **dict.fromkeys(TAGGING, _Tagger),
                 **dict.fromkeys(QA, _QuestionAnswering)}[task](model_dir, tokenizer, train, recipe)
        tuner.fit(dev, work / "checkpoints", seed, deepspeed)
        if task in QA and dev is not None:
            details["selected_epoch"] = tuner.selected()[0]
    for lang, examples in tests.items():
        pred, gold = work / "predictions" / task / f"test-{lang}", out / "labels" / split / task / f"test-{lang}"
        if task in QA:
            _write_json(pred.with_suffix(".json"), tuner.answers(examples[0]))
            if not unscored:  # stripped answers are no labels
                _write_json(gold.with_suffix(".json"), {"data": examples[1]})
        elif task in MULTIPLE_CHOICE:
            _write_lines(pred.with_suffix(".jsonl"), [json.dumps({"label": k}) for k in tuner.choose(examples)])
            _write_lines(gold.with_suffix(".jsonl"), [json.dumps(r, ensure_ascii=False) for r in examples])
        else:
            _write_lines(pred.with_suffix(".tsv"), tuner.predict_lines(examples))
            _write_lines(gold.with_suffix(".tsv"), tuner.gold_lines(examples))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    _score_seed(out, task, seed, split, langs, details, unscored)


def _require(paths: list[Path], why: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ScoreError(f"{why}, and the dev sets scored instead are missing: {', '.join(map(str, missing))}")


def _qa_data(data: Path, task: str, langs: list[str]):
    """(train, dev, tests, split, unscored, selection) of a QA task: the English training and dev examples
    (dev None when its answers are withheld: then fit() keeps the last epoch), per language the test examples
    with the file's ``data`` list, the split they are, the reason they are not scored (None when they are),
    and how the epoch is chosen. XTREME's download strips the answers of XQuAD, of MLQA's test sets and of
    TyDiQA-GoldP's dev sets (its evaluation sets, the English one included): MLQA then scores its dev sets,
    which keep theirs; XQuAD and TyDiQA have no labelled alternative."""
    files = qa_files(data, task, None)
    train, dev = read_squad(files["train"])[0], read_squad(files["dev"])[0]
    if not answered(train):
        raise ScoreError(f"{files['train']}: no answers to train on")
    selection = "best English dev F1"
    if not answered(dev):
        dev, selection = None, "last epoch: English dev answers withheld"
        log.warning("%s: %s has no answers (withheld by the download): no epoch selection, the last epoch is kept",
                    task, files["dev"])
    paths = {lang: qa_files(data, task, lang)["test"] for lang in langs}
    tests = {lang: read_squad(path) for lang, path in paths.items()}
    split = "dev" if task == "tydiqa" else "test"  # TyDiQA-GoldP's public evaluation sets are its dev sets
    stripped = [path for lang, path in paths.items() if not answered(tests[lang][0])]
    if not stripped:
        return train, dev, tests, split, None, selection
    if task == "mlqa":  # the download strips MLQA_V1/test only: score the dev sets, and say so
        paths = {lang: mlqa_dev_file(data, lang) for lang in langs}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ScoreError(f"mlqa: the test answers are withheld ({stripped[0]} has none), and the dev sets "
                             f"to score instead are missing: {', '.join(missing)}")
        tests = {lang: read_squad(path) for lang, path in paths.items()}
        unanswered = [str(path) for lang, path in paths.items() if not answered(tests[lang][0])]
        if unanswered:
            raise ScoreError(f"mlqa: neither the test nor the dev sets carry answers: {', '.join(unanswered)}")
        return train, dev, tests, "dev", None, selection
    reason = (f"{split} answers withheld by the download ({len(stripped)} of {len(paths)} files have none, "
              f"{stripped[0]} among them) and no labelled {task} set replaces them")
    return train, dev, tests, split, reason, selection


@dataclass
class _Stage:
    """One fine-tuning stage of a multiple-choice task: its English training data, and the English dev data
    that selects its epoch."""
    name: str
    train_file: Path
    dev_file: Path
    train: list[dict]
    dev: list[dict]


def _choice_stages(data: Path, recipe: Recipe) -> list[_Stage]:
    """XCOPA's stages, in order: the recipe's first stage (SIQA), then English COPA."""
    stages = []
    if recipe.first_stage == "siqa":
        stages.append(_Stage("siqa", siqa_files(data, "train")[0], siqa_files(data, "dev")[0],
                             read_siqa(data, "train"), read_siqa(data, "dev")))
    train, dev = choice_file(data, "train", "en"), choice_file(data, "val", "en")
    return stages + [_Stage("copa", train, dev, read_choices(train), read_choices(dev))]


def _fit_stages(model_dir: Path, tokenizer, stages: list[_Stage], recipe: Recipe, data: Path, checkpoints: Path,
                seed: int, deepspeed: str | None) -> tuple[_MultipleChoice, list[dict]]:
    """Fine-tunes stage after stage with the recipe's values, each from the weights its predecessor selected
    on its own dev set (the first from MODEL_DIR), through the same Trainer path (DeepSpeed included). Returns
    the last stage's tuner and, for result.json, what each stage trained on and the epoch it kept."""
    start, record = model_dir, []
    for k, stage in enumerate(stages):
        log.info("stage %d/%d: %s, %d English training examples, selected on %d dev examples", k + 1,
                 len(stages), stage.name, len(stage.train), len(stage.dev))
        tuner = _MultipleChoice(start, tokenizer, stage.train, recipe)
        tuner.fit(stage.dev, checkpoints / stage.name, seed, deepspeed)
        epoch, best = tuner.selected()
        record.append({"stage": stage.name, "from": stages[k - 1].name if k else "model",
                       "train": stage.train_file.relative_to(data).as_posix(),
                       "dev": stage.dev_file.relative_to(data).as_posix(), "train_examples": len(stage.train),
                       "dev_examples": len(stage.dev), "selected_epoch": epoch,
                       "dev_accuracy": None if best is None else 100 * best})
        if k + 1 < len(stages):
            start = checkpoints / f"{stage.name}-selected"
            tuner.save_selected(start)
            tuner.release()
    return tuner, record


def _score_seed(out: Path, task: str, seed: int, split: str, langs: list[str], details: dict,
                unscored: str | None = None) -> None:
    """Scores a seed's predictions against the labels with the official scorer; its result.json, written
    last, marks the seed done. ``unscored``: why the predictions cannot be scored (the labels are withheld);
    result.json then has ``"scores": null`` and that ``reason``."""
    work = out / task / f"seed{seed}"
    if unscored:
        write_scores({"task": task, "seed": seed, "split": split, **details, "scores": None, "reason": unscored},
                     work / "result.json")
        return
    if task == "lareqa":  # not in the official scorer's task list: its files are scored alike, with LAReQA's mAP@20
        scores = {task: score_task(task, langs, work / "predictions", out / "labels" / split)}
    else:
        scores = score(work / "predictions", out / "labels" / split, "xtreme" if task == "pawsx" else "xtreme-r",
                       languages=langs)
    write_scores({"task": task, "seed": seed, "split": split, **details, "scores": scores[task]},
                 work / "result.json")


def _dual_encoder_seed(model_dir: Path, data: Path, task: str, langs: list[str], recipe: Recipe, seed: int,
                       out: Path, deepspeed: str | None) -> None:
    """Mewsli-X: trained on English Wikipedia mention-entity pairs, selected on their dev split; each WikiNews
    mention ranks the whole candidate set. LAReQA: trained on English SQuAD v1.1 (question → the sentence
    holding the answer, with its paragraph), selected on SQuAD dev; each XQuAD-R question ranks the sentences
    of every language run. Predictions map query ids to their 20 best candidate ids, labels to the relevant
    ids, one ``test-<lang>.json`` each."""
    from transformers import AutoTokenizer

    from weam_ds.xtreme_r.dual_encoder import RetrievalTuner

    work = out / task / f"seed{seed}"
    if task == "mewslix":
        files = mewslix_files(data, langs)
        train, dev = read_mention_pairs(files["train"]), read_mention_pairs(files["dev"])
        tests = read_wikinews(files, "test", langs)
        split = "test" if all(t.labelled() for t in tests.values()) else "dev"
        if split == "dev":  # XTREME's download blanks the test entity ids: score the dev mentions, and say so
            tests = read_wikinews(files, "dev", langs)
        pool_ids, pool = read_entities(files["candidates"])
    else:
        squad = squad_files(data)
        train, dev = read_squad_sentences(squad["train"], "en"), read_squad_sentences(squad["dev"], "en")
        (tests, pool_ids, pool), split = read_xquad_r(data, langs), "test"
    log.info("%s seed %d: fine-tuning on %d English pairs; %s split of %d languages against %d candidates",
             task, seed, len(train.query_ids), split, len(langs), len(pool_ids))
    tuner = RetrievalTuner(model_dir, AutoTokenizer.from_pretrained(str(model_dir)), recipe)
    tuner.fit(train, dev, work / "checkpoints", seed, deepspeed)
    embedded = tuner.embed(pool, recipe.max_length)
    for lang, queries in tests.items():
        _write_json(work / "predictions" / task / f"test-{lang}.json", tuner.retrieve(queries, embedded, pool_ids))
        _write_json(out / "labels" / split / task / f"test-{lang}.json", queries.gold)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    _score_seed(out, task, seed, split, langs, {"model": str(model_dir), "recipe": asdict(recipe),
                                                "candidates": len(pool_ids)})


def _retrieve_seed(model_dir: Path, data: Path, task: str, langs: list[str], recipe: Recipe, seed: int,
                   out: Path) -> None:
    """Tatoeba needs no fine-tuning: each sentence retrieves its nearest English sentence; a prediction is
    its index in the English file. The seed changes nothing, so a later seed reuses the first one's
    predictions; each is recorded so that every task aggregates alike. Files aligned by line are scored
    (the gold of line i is i). XTREME's download sorts the English side, hiding the gold: the predictions
    (indices into the sorted file, what the leaderboard takes) are written, but not scored."""
    from weam_ds.xtreme_r.tatoeba import embed, load_encoder, retrieve, write_retrieval

    work = out / task / f"seed{seed}"
    earlier = next(iter(sorted((out / task).glob("seed*/result.json"))), None)
    if earlier is not None:
        shutil.copytree(earlier.parent / "predictions", work / "predictions", dirs_exist_ok=True)
        before = json.loads(earlier.read_text())
        _score_seed(out, task, seed, "test", langs,
                    {k: v for k, v in before.items() if k not in ("task", "seed", "split", "scores", "reason")},
                    before.get("reason") if before.get("scores") is None else None)
        return
    pairs = {lang: [read_sentences(f) for f in tatoeba_files(data, lang)] for lang in langs}
    for lang, (source, english) in pairs.items():
        if len(source) != len(english):
            raise ScoreError(f"{tatoeba_files(data, lang)[0]}: {len(source)} lines but its English side has "
                             f"{len(english)}")
    shuffled = [lang for lang, (_, english) in pairs.items() if tatoeba_shuffled(english)]
    unscored = None
    if shuffled:
        unscored = (f"the English side is sorted, as XTREME's download writes it, hiding the gold alignment "
                    f"({len(shuffled)} of {len(langs)} languages, {tatoeba_files(data, shuffled[0])[1]} among them)")
        log.warning("%s: NOT SCORED: %s; the predictions (indices into the sorted English files) are written",
                    task, unscored)
    encoder, tokenizer, layer = load_encoder(model_dir, recipe.layer)
    for lang, (source, english) in pairs.items():
        found = retrieve(embed(encoder, tokenizer, source, layer, recipe.batch_size, recipe.max_length),
                         embed(encoder, tokenizer, english, layer, recipe.batch_size, recipe.max_length))
        prediction = work / "predictions" / task / f"test-{lang}.tsv"
        if unscored:
            _write_lines(prediction, [str(i) for i in found])
        else:
            write_retrieval(found, prediction, out / "labels" / "test" / task / f"test-{lang}.tsv")
    _score_seed(out, task, seed, "test", langs, {"model": str(model_dir), "recipe": asdict(recipe), "layer": layer},
                unscored)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def aggregate(out: Path, plan: dict, seeds: list[int]) -> dict:
    """Mean and standard deviation over seeds; categories from the task means; the transfer gap. A task with
    an unscored seed (its labels withheld) is reported as ``{"split", "seeds", "metric", "scored": false,
    "reason"}`` and left out of ``tasks_mean`` (absent when no task was scored) and of its categories."""
    tasks = {}
    for task, (_, langs) in plan.items():
        runs = [json.loads((out / task / f"seed{s}" / "result.json").read_text()) for s in seeds]
        main = "f1" if task in TAGGING + QA else "map@20" if task in DUAL_ENCODER else "accuracy"  # XCOPA: accuracy
        blank = next((r for r in runs if r["scores"] is None), None)
        if blank is not None:
            reason = blank.get("reason") or "not scored"
            log.warning("%s: not scored (%s); left out of tasks_mean and of its categories", task, reason)
            tasks[task] = {"split": runs[0]["split"], "seeds": seeds, "metric": main, "scored": False,
                           "reason": reason}
            continue
        langs = [lang for lang in langs if lang in runs[0]["scores"][main]]  # less any without labels
        per_lang = {lang: [r["scores"][main][lang] for r in runs] for lang in langs}
        avg = [r["scores"]["avg_metric"] for r in runs]
        others = [lang for lang in langs if lang != "en"]
        gaps = [r["scores"][main]["en"] - statistics.fmean(r["scores"][main][lang] for lang in others)
                for r in runs] if "en" in langs and others else []
        tasks[task] = {
            "split": runs[0]["split"], "seeds": seeds, "metric": main, "scored": True,
            "mean": {lang: statistics.fmean(v) for lang, v in per_lang.items()},
            "std": {lang: statistics.pstdev(v) for lang, v in per_lang.items()},
            "avg_metric": statistics.fmean(avg), "avg_metric_std": statistics.pstdev(avg),
            **({"transfer_gap": statistics.fmean(gaps)} if gaps else {}),
        }
    scored = {task: t for task, t in tasks.items() if t["scored"]}
    overall = {"tasks_mean": statistics.fmean(t["avg_metric"] for t in scored.values())} if scored else {}
    for category, members in CATEGORIES["xtreme-r"].items():  # over the tasks run and scored
        if all(m in scored for m in members):
            overall[category] = statistics.fmean(scored[m]["avg_metric"] for m in members)
    return {**overall, **tasks}


class _Tuner:
    """Fine-tunes with the Hugging Face Trainer (DeepSpeed when a config is given) and picks the epoch with
    the best English dev score."""

    def __init__(self, model_dir: Path, tokenizer, train: list, recipe: Recipe):
        self.model_dir, self.tokenizer, self.train, self.recipe = model_dir, tokenizer, train, recipe

    def fit(self, dev: list | None, checkpoints: Path, seed: int, deepspeed: str | None) -> None:
        """Trains, evaluating ``dev`` after each epoch and keeping the best epoch; with ``dev`` None (its
        labels withheld) nothing is evaluated or saved and the last epoch is kept."""
        import torch
        from transformers import Trainer, TrainingArguments, set_seed

        set_seed(seed)
        r = self.recipe
        select = dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                      metric_for_best_model="score", greater_is_better=True, save_total_limit=1) \
            if dev is not None else dict(eval_strategy="no", save_strategy="no")
        args = TrainingArguments(
            output_dir=str(checkpoints), learning_rate=r.learning_rate, num_train_epochs=r.epochs,
            per_device_train_batch_size=r.batch_size, per_device_eval_batch_size=r.batch_size,
            warmup_steps=r.warmup_steps, weight_decay=r.weight_decay, **select,
            seed=seed, report_to=[], logging_strategy="epoch", deepspeed=deepspeed,
            gradient_accumulation_steps=r.gradient_accumulation_steps, use_cpu=not torch.cuda.is_available())
        self.trainer = Trainer(model=self.model(), args=args, train_dataset=self.encode(self.train),
                               eval_dataset=None if dev is None else self.encode(dev),
                               compute_metrics=None if dev is None else self.dev_score,
                               data_collator=self.collator())
        self.trainer.train()

    auto_class = ""
    """The transformers Auto class of the task head; ``self.labels`` names its outputs."""

    def model(self):
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(
            str(self.model_dir), num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={x: i for i, x in enumerate(self.labels)})

    def logits(self, examples: list) -> np.ndarray:
        return self.trainer.predict(self.encode(examples)).predictions

    def selected(self) -> tuple[float | None, float | None]:
        """The epoch kept at the end of fit() and its dev score (None when no epoch was evaluated)."""
        state = self.trainer.state
        if state.best_model_checkpoint is None:
            return None, None
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
        epoch = next((e["epoch"] for e in state.log_history if "eval_score" in e and e["step"] == step), None)
        return epoch, state.best_metric

    def save_selected(self, path: Path) -> None:
        """The kept weights as a ``from_pretrained`` folder. Under ZeRO-3 every rank takes part in gathering the
        partitioned parameters (whatever ``stage3_gather_16bit_weights_on_model_save`` says), and the main
        process writes them. Under a bf16/fp16 DeepSpeed config these are the model's 16-bit weights, not the
        optimizer's fp32 master copy."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        trainer = self.trainer
        if trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled():
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None):
                if trainer.is_world_process_zero():
                    trainer.model.save_pretrained(str(path))
        else:
            trainer.save_model(str(path))
        trainer.accelerator.wait_for_everyone()

    def release(self) -> None:
        """Drops the trainer (model, optimizer state, DeepSpeed engine) before the next stage loads its own."""
        import gc

        import torch

        self.trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Classifier(_Tuner):
    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, *args):
        super().__init__(*args)
        self.labels = sorted({e.label for e in self.train})

    def collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def encode(self, examples: list) -> list[dict]:
        enc = self.tokenizer([e.first for e in examples], [e.second for e in examples], truncation=True,
                             max_length=self.recipe.max_length)
        index = {x: i for i, x in enumerate(self.labels)}
        return [{**{k: v[i] for k, v in enc.items()}, "labels": index.get(e.label, 0)} for i, e in enumerate(examples)]

    def dev_score(self, prediction) -> dict:
        guess = prediction.predictions.argmax(-1)
        return {"score": float((guess == prediction.label_ids).mean())}

    def predict_lines(self, examples: list) -> list[str]:
        return [self.labels[i] for i in self.logits(examples).argmax(-1)]

    def gold_lines(self, examples: list) -> list[str]:
        return [e.label for e in examples]


class _Tagger(_Tuner):
    """First-subword labelling: a word's tag is predicted at its first subword; later subwords are ignored."""

    auto_class = "AutoModelForTokenClassification"

    def __init__(self, *args):
        super().__init__(*args)
        counts = Counter(t for e in self.train for t in e.tags)
        self.labels = sorted(counts)
        self.fallback = counts.most_common(1)[0][0]  # for words cut off by max_length

    def collator(self):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(self.tokenizer)

    def encode(self, examples: list) -> list[dict]:
        enc = self.tokenizer([e.words for e in examples], is_split_into_words=True, truncation=True,
                             max_length=self.recipe.max_length)
        index = {x: i for i, x in enumerate(self.labels)}
        self._firsts = []
        rows = []
        for i, e in enumerate(examples):
            firsts, seen = [], set()
            labels = []
            for pos, word in enumerate(enc.word_ids(i)):
                if word is None or word in seen:
                    labels.append(IGNORE)
                    continue
                seen.add(word)
                firsts.append((word, pos))
                labels.append(index.get(e.tags[word], 0) if e.tags else 0)
            self._firsts.append(firsts)
            rows.append({**{k: v[i] for k, v in enc.items()}, "labels": labels})
        return rows

    def dev_score(self, prediction) -> dict:
        guess, gold = prediction.predictions.argmax(-1), prediction.label_ids
        keep = gold != IGNORE
        sequences = [([self.labels[g] for g in gr[k]], [self.labels[p] for p in pr[k]])
                     for gr, pr, k in zip(gold, guess, keep)]
        return {"score": metrics.tagging([g for g, _ in sequences], [p for _, p in sequences])["f1"]}

    def predict_lines(self, examples: list) -> list[str]:
        logits = self.logits(examples)  # encode() ran last on these examples: _firsts is theirs
        lines = []
        for e, firsts, row in zip(examples, self._firsts, logits):
            tags = [self.fallback] * len(e.words)
            for word, pos in firsts:
                tags[word] = self.labels[int(row[pos].argmax())]
            lines += tags + [""]
        return lines

    def gold_lines(self, examples: list) -> list[str]:
        return [line for e in examples for line in e.tags + [""]]


class _QuestionAnswering(_Tuner):
    """Extractive QA: contexts cut into overlapping windows (``doc_stride``); an answer is the best-scoring
    valid span (start and end among the 20 best logits, at most 30 tokens, inside the context) over all
    windows of its question."""

    n_best, max_answer_tokens = 20, 30

    def model(self):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(str(self.model_dir))

    def collator(self):
        from transformers import default_data_collator

        return default_data_collator

    def encode(self, examples: list) -> list[dict]:
        """One row per window, labelled with the answer's token span, or (0, 0) when the window lacks it."""
        r = self.recipe
        enc = self.tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                             max_length=r.max_length, stride=r.doc_stride, return_overflowing_tokens=True,
                             return_offsets_mapping=True, padding="max_length")
        owners, offsets = enc.pop("overflow_to_sample_mapping"), enc.pop("offset_mapping")
        rows, windows = [], []
        for i, owner in enumerate(owners):
            in_context = [s == 1 for s in enc.sequence_ids(i)]
            spans = [o if c else None for o, c in zip(offsets[i], in_context)]
            windows.append((owner, spans))
            start = end = 0
            answers = examples[owner].answers
            if answers:
                first = answers[0]
                a, b = first["answer_start"], first["answer_start"] + len(first["text"])
                tokens = [k for k, span in enumerate(spans) if span is not None and span[0] < b and span[1] > a]
                if tokens and spans[tokens[0]][0] <= a and spans[tokens[-1]][1] >= b:
                    start, end = tokens[0], tokens[-1]
            rows.append({**{k: v[i] for k, v in enc.items()}, "start_positions": start, "end_positions": end})
        self._windows = windows
        return rows

    def _decode(self, start_logits: np.ndarray, end_logits: np.ndarray, examples: list) -> dict[str, str]:
        best: dict[int, tuple[float, str]] = {}
        for (owner, spans), starts, ends in zip(self._windows, start_logits, end_logits):
            for s in np.argsort(starts)[::-1][:self.n_best]:
                for e in np.argsort(ends)[::-1][:self.n_best]:
                    if spans[s] is None or spans[e] is None or e < s or e - s + 1 > self.max_answer_tokens:
                        continue
                    value = float(starts[s] + ends[e])
                    if owner not in best or value > best[owner][0]:
                        best[owner] = (value, examples[owner].context[spans[s][0]:spans[e][1]].strip())
        return {e.id: best[k][1] if k in best else "" for k, e in enumerate(examples)}

    def dev_score(self, prediction) -> dict:
        start, end = prediction.predictions[:2]
        answers = self._decode(start, end, self._dev)
        gold = [{"paragraphs": [{"qas": [{"id": e.id, "answers": e.answers} for e in self._dev]}]}]
        return {"score": metrics.squad(gold, answers)["f1"]}

    def fit(self, dev: list | None, checkpoints: Path, seed: int, deepspeed: str | None) -> None:
        self._dev = dev
        super().fit(dev, checkpoints, seed, deepspeed)

    def answers(self, examples: list) -> dict[str, str]:
        output = self.trainer.predict(self.encode(examples)).predictions
        return self._decode(output[0], output[1], examples)


class _MultipleChoice(_Tuner):
    """Multiple choice: the model scores a record's (first, choice) pairs against each other; one model class
    (AutoModelForMultipleChoice, one score per pair) serves any number of choices, so SIQA's three-way stage
    hands its weights on to COPA's two-way one. COPA/XCOPA: the premise with its question, worded as the
    official script words it ("What was the cause?" / "What was the effect?"), paired with each of the two
    choices. SIQA: the context followed by the question, paired with each of the three answers."""

    QUESTIONS = {"cause": "What was the cause?", "effect": "What was the effect?"}

    def model(self):
        from transformers import AutoModelForMultipleChoice

        return AutoModelForMultipleChoice.from_pretrained(str(self.model_dir))

    def collator(self):
        from transformers import DataCollatorForMultipleChoice

        return DataCollatorForMultipleChoice(self.tokenizer)

    def pairs(self, record: dict) -> tuple[str, list[str]]:
        """A record's first segment and its choices."""
        if "premise" in record:  # COPA and XCOPA
            first = f"{record['premise']} {self.QUESTIONS.get(record.get('question'), '')}".strip()
            return first, [record["choice1"], record["choice2"]]
        return f"{record['context']} {record['question']}", [record["answerA"], record["answerB"], record["answerC"]]

    def encode(self, examples: list) -> list[dict]:
        pairs = [self.pairs(r) for r in examples]
        enc = self.tokenizer([first for first, choices in pairs for _ in choices],
                             [choice for _, choices in pairs for choice in choices],
                             truncation=True, max_length=self.recipe.max_length)
        rows, at = [], 0
        for r, (_, choices) in zip(examples, pairs):
            rows.append({**{key: v[at:at + len(choices)] for key, v in enc.items()}, "labels": int(r.get("label", 0))})
            at += len(choices)
        return rows

    def dev_score(self, prediction) -> dict:
        return {"score": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    def choose(self, examples: list) -> list[int]:
        return [int(k) for k in self.logits(examples).argmax(-1)]
