"""The official scorer: prediction and label folders in the benchmark's layout → scores.json.

A task is scored when its subfolder is in both folders; then every language of the task needs
``test-<lang>.<suffix>`` in both. Output: the category scores (and ``all_task`` when every task of the
version was scored) at the top level, then per task: metric → {language → value}, ``avg_<metric>``,
and ``avg_metric``. Values are unrounded floats on the ×100 scale.

Each file's structure is checked where it is read (UTF-8 text; QA answers as strings, SQuAD labels as
articles → paragraphs → questions with answers; retrieval ids as lists of strings; XCOPA labels as integers),
and a prediction file against its label file where both are line-aligned, so the metrics can trust their
inputs. A bad file is a ScoreError naming it and the example.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import fmean

from data_prep.files import write_atomically
from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.eval_dir import official_file
from weam_ds.xtreme_r.tasks import CATEGORIES, LANGUAGES, TASKS


class ScoreError(ValueError):
    """Missing or malformed prediction/label files; the message names them."""


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScoreError(f"{path}:{line}: not UTF-8 (byte {raw[exc.start]:#04x}: {exc.reason})") from None


def read_lines(path: Path) -> list[str]:
    # newline=None: lines end at \n, \r\n or \r, as when iterating a file opened in text mode
    return [line.strip() for line in io.StringIO(read_text(path), newline=None)]


def read_tags(path: Path) -> list[list[str]]:
    """One tag per line, a blank line after each sentence (the last one may lack it)."""
    sentences, current = [], []
    for line in read_lines(path):
        if line:
            current.append(line)
        else:
            sentences.append(current)
            current = []
    return sentences + [current] if current else sentences


def read_json(path: Path):
    text = read_text(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ScoreError(f"{path}: not valid JSON ({exc})") from None
    return data["data"] if isinstance(data, dict) and "data" in data else data


def _kind(value) -> str:
    """A JSON value's type in JSON's words, for messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def read_jsonl_labels(path: Path) -> list[int]:
    """XCOPA: JSON lines, each an object whose ``label`` is the number of the chosen alternative."""
    labels = []
    for n, line in enumerate(read_lines(path), start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ScoreError(f"{path}:{n}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ScoreError(f"{path}:{n}: expected an object with a 'label', got {_kind(record)}")
        if "label" not in record:
            raise ScoreError(f"{path}:{n}: no 'label'")
        label = record["label"]
        if type(label) is not int:  # "1" never equals 1: it would score 0 without a word
            raise ScoreError(f"{path}:{n}: label {json.dumps(label)} is {_kind(label)}, expected an integer")
        labels.append(label)
    return labels


def read_answers(path: Path) -> dict[str, str]:
    """QA predictions: an object mapping each question id to its answer text."""
    answers = read_json(path)
    if not isinstance(answers, dict):
        raise ScoreError(f"{path}: expected an object mapping question ids to answer texts, got {_kind(answers)}")
    for question, answer in answers.items():
        if not isinstance(answer, str):
            raise ScoreError(f"{path}: question {question}: the answer is {_kind(answer)}, expected a string")
    return answers


def read_squad_labels(path: Path) -> list[dict]:
    """QA labels: SQuAD's articles → ``paragraphs`` → ``qas``, each question with a string ``id`` and
    ``answers``, a non-empty list of objects with a string ``text``."""
    articles, questions = read_json(path), 0
    if not isinstance(articles, list):
        raise ScoreError(f"{path}: expected a SQuAD dataset (a list of articles, or an object with them under "
                         f"'data'), got {_kind(articles)}")
    for a, article in enumerate(articles, start=1):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ScoreError(f"{path}: article {a}: expected an object with a list of 'paragraphs'")
        for p, paragraph in enumerate(article["paragraphs"], start=1):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise ScoreError(f"{path}: article {a}, paragraph {p}: expected an object with a list of 'qas'")
            for q, qa in enumerate(paragraph["qas"], start=1):
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
                    raise ScoreError(f"{path}: article {a}, paragraph {p}, question {q}: expected an object "
                                     f"with a string 'id'")
                answers = qa.get("answers")
                if not (isinstance(answers, list) and answers
                        and all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers)):
                    raise ScoreError(f"{path}: question {qa['id']}: expected 'answers', a non-empty list of "
                                     f"objects with a string 'text'")
                questions += 1
    if not questions:
        raise ScoreError(f"{path}: no questions")
    return articles


def read_ids(path: Path, nonempty: bool = False) -> dict[str, list[str]]:
    """Mewsli-X and LAReQA: an object mapping each example id to a list of ids (ranked predictions, or the
    relevant ids)."""
    examples = read_json(path)
    if not isinstance(examples, dict):
        raise ScoreError(f"{path}: expected an object mapping example ids to lists of ids, got {_kind(examples)}")
    for example, ids in examples.items():
        if not isinstance(ids, list):
            raise ScoreError(f"{path}: example {example}: expected a list of ids, got {_kind(ids)}")
        odd = [i for i in ids if not isinstance(i, str)]
        if odd:
            raise ScoreError(f"{path}: example {example}: id {json.dumps(odd[0])} is {_kind(odd[0])}, "
                             f"expected a string")
        if nonempty and not ids:
            raise ScoreError(f"{path}: example {example}: no ids")
    return examples


_Reader = Callable[[Path], object]


@dataclass(frozen=True)
class Scorer:
    """How one kind of task file is read and scored: prediction and label readers, the metric (labels,
    predictions, language) → {name: value}, and whether both files are aligned example by example (one per
    line, or per sentence for tags)."""
    predictions: _Reader
    labels: _Reader
    metric: Callable[[object, object, str], dict]
    aligned: bool = False


SCORERS: dict[str, Scorer] = {
    "accuracy": Scorer(read_lines, read_lines, lambda g, p, _: metrics.accuracy(g, p), True),
    "xcopa": Scorer(read_jsonl_labels, read_jsonl_labels, lambda g, p, _: metrics.accuracy(g, p), True),
    "tags": Scorer(read_tags, read_tags, lambda g, p, _: metrics.tagging(g, p), True),
    "bucc": Scorer(read_lines, read_lines, lambda g, p, _: metrics.bucc_f1(g, p)),
    "squad": Scorer(read_answers, read_squad_labels, lambda g, p, _: metrics.squad(g, p)),
    "mlqa": Scorer(read_answers, read_squad_labels, metrics.mlqa),
    # the gold entity is the first (only) id of each label
    "mewslix": Scorer(read_ids, partial(read_ids, nonempty=True), lambda g, p, _: metrics.mewslix_map20(g, p)),
    "lareqa": Scorer(read_ids, read_ids, lambda g, p, _: metrics.lareqa_map20(g, p)),
}
"""Keyed by ``Task.scorer``."""


def _check_aligned(pred_file: Path, pred: list, gold_file: Path, gold: list) -> None:
    if len(pred) != len(gold):
        raise ScoreError(f"{pred_file} has {len(pred)} examples but {gold_file} has {len(gold)}")
    for n, (p, g) in enumerate(zip(pred, gold), start=1):
        if isinstance(g, list) and len(p) != len(g):  # tags: seqeval needs one per token
            raise ScoreError(f"{pred_file}: sentence {n} has {len(p)} tags but sentence {n} of {gold_file} "
                             f"has {len(g)}")


def score_task(name: str, languages: list[str], predictions: Path, labels: Path) -> dict:
    task = TASKS[name]
    files = {lang: [official_file(d, name, lang) for d in (predictions, labels)] for lang in languages}
    missing = [str(f) for pair in files.values() for f in pair if not f.is_file()]
    if missing:
        raise ScoreError(f"{name}: missing {', '.join(missing)}")
    scorer = SCORERS[task.scorer]
    result: dict = {}
    for lang in languages:
        pred_file, gold_file = files[lang]
        pred, gold = scorer.predictions(pred_file), scorer.labels(gold_file)
        if scorer.aligned:
            _check_aligned(pred_file, pred, gold_file, gold)
        if not gold:
            raise ScoreError(f"{gold_file}: no examples")
        for metric, value in scorer.metric(gold, pred, lang).items():
            result.setdefault(metric, {})[lang] = value
    for metric in list(result):
        result[f"avg_{metric}"] = fmean(result[metric].values())
    # the official rule: QA's is the mean of EM and F1; otherwise F1, else accuracy, else mAP@20
    result["avg_metric"] = fmean(result[f"avg_{metric}"] for metric in task.metrics)
    return result


def score(predictions: Path, labels: Path, version: str = "xtreme-r", languages: list[str] | None = None) -> dict:
    """``languages`` restricts every task to those of its languages (for data sets that are not the
    benchmark's, such as the demo; the averages are then over those languages only)."""
    if version not in LANGUAGES:
        raise ScoreError(f"unknown version {version!r} (expected {' or '.join(LANGUAGES)})")
    for d in (predictions, labels):
        if not d.is_dir():
            raise ScoreError(f"{d}: not a directory")
    tasks = {}
    for task, task_languages in LANGUAGES[version].items():
        if languages is not None:
            task_languages = [lang for lang in task_languages if lang in languages]
        if task_languages and (predictions / task).is_dir() and (labels / task).is_dir():
            tasks[task] = score_task(task, task_languages, predictions, labels)
    if not tasks:
        raise ScoreError(f"no task of {version} has a folder in both {predictions} and {labels}")
    return {**official_aggregates(version, {name: t["avg_metric"] for name, t in tasks.items()}), **tasks}


def official_aggregates(version: str, avg_metric: dict[str, float]) -> dict[str, float]:
    """The official scorer's aggregates from the tasks' ``avg_metric``: ``all_task`` when every task of the
    version is there (for xtreme-r that includes LAReQA), and each category whose tasks all are."""
    overall = {}
    if set(avg_metric) >= set(LANGUAGES[version]):
        overall["all_task"] = fmean(avg_metric[t] for t in LANGUAGES[version])
    for category, members in CATEGORIES[version].items():
        if all(m in avg_metric for m in members):
            overall[category] = fmean(avg_metric[m] for m in members)
    return overall


def write_scores(scores: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output, json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
