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
from functools import partial
from pathlib import Path
from statistics import fmean

from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.tasks import CATEGORIES, LANGUAGES, QA_TASKS, suffix


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


def _scorer(task: str) -> tuple[_Reader, _Reader, Callable[[object, object, str], dict], bool]:
    """(prediction reader, label reader, metric(labels, predictions, lang), whether both files are aligned
    example by example: one per line, or per sentence for tags)."""
    if task in ("panx", "udpos"):
        return read_tags, read_tags, lambda g, p, _: metrics.tagging(g, p), True
    if task == "bucc2018":
        return read_lines, read_lines, lambda g, p, _: metrics.bucc_f1(g, p), False
    if task == "mlqa":
        return read_answers, read_squad_labels, metrics.mlqa, False
    if task in QA_TASKS:
        return read_answers, read_squad_labels, lambda g, p, _: metrics.squad(g, p), False
    if task == "mewslix":  # the gold entity is the first (only) id of each label
        return read_ids, partial(read_ids, nonempty=True), lambda g, p, _: metrics.mewslix_map20(g, p), False
    if task == "lareqa":
        return read_ids, read_ids, lambda g, p, _: metrics.lareqa_map20(g, p), False
    if task == "xcopa":
        return read_jsonl_labels, read_jsonl_labels, lambda g, p, _: metrics.accuracy(g, p), True
    return read_lines, read_lines, lambda g, p, _: metrics.accuracy(g, p), True


def _check_aligned(pred_file: Path, pred: list, gold_file: Path, gold: list) -> None:
    if len(pred) != len(gold):
        raise ScoreError(f"{pred_file} has {len(pred)} examples but {gold_file} has {len(gold)}")
    for n, (p, g) in enumerate(zip(pred, gold), start=1):
        if isinstance(g, list) and len(p) != len(g):  # tags: seqeval needs one per token
            raise ScoreError(f"{pred_file}: sentence {n} has {len(p)} tags but sentence {n} of {gold_file} "
                             f"has {len(g)}")


def score_task(task: str, languages: list[str], predictions: Path, labels: Path) -> dict:
    missing = [str(d / task / f"test-{lang}.{suffix(task)}") for lang in languages for d in (predictions, labels)
               if not (d / task / f"test-{lang}.{suffix(task)}").is_file()]
    if missing:
        raise ScoreError(f"{task}: missing {', '.join(missing)}")
    read_predictions, read_labels, metric, aligned = _scorer(task)
    result: dict = {}
    for lang in languages:
        pred_file, gold_file = (d / task / f"test-{lang}.{suffix(task)}" for d in (predictions, labels))
        pred, gold = read_predictions(pred_file), read_labels(gold_file)
        if aligned:
            _check_aligned(pred_file, pred, gold_file, gold)
        if not gold:
            raise ScoreError(f"{gold_file}: no examples")
        for name, value in metric(gold, pred, lang).items():
            result.setdefault(name, {})[lang] = value
    for name in list(result):
        result[f"avg_{name}"] = fmean(result[name].values())
    if task in QA_TASKS:
        result["avg_metric"] = (result["avg_exact_match"] + result["avg_f1"]) / 2
    else:
        result["avg_metric"] = next(result[k] for k in ("avg_f1", "avg_accuracy", "avg_map@20") if k in result)
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
    overall = {}
    if set(tasks) == set(LANGUAGES[version]):
        overall["all_task"] = fmean(t["avg_metric"] for t in tasks.values())
    for category, members in CATEGORIES[version].items():
        if all(m in tasks for m in members):
            overall[category] = fmean(tasks[m]["avg_metric"] for m in members)
    return {**overall, **tasks}


def write_scores(scores: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(output)
