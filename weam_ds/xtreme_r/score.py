"""The official scorer: prediction and label folders in the benchmark's layout → scores.json.

A task is scored when its subfolder is in both folders; then every language of the task needs
``test-<lang>.<suffix>`` in both. Output: the category scores (and ``all_task`` when every task of the
version was scored) at the top level, then per task: metric → {language → value}, ``avg_<metric>``,
and ``avg_metric``. Values are unrounded floats on the ×100 scale.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from statistics import fmean

from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.tasks import CATEGORIES, LANGUAGES, QA_TASKS, suffix


class ScoreError(ValueError):
    """Missing or malformed prediction/label files; the message names them."""


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]


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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ScoreError(f"{path}: not valid JSON ({exc})") from None
    return data["data"] if isinstance(data, dict) and "data" in data else data


def read_jsonl_labels(path: Path) -> list:
    try:
        return [json.loads(line)["label"] for line in read_lines(path) if line]
    except (ValueError, KeyError, TypeError) as exc:
        raise ScoreError(f"{path}: expected JSON lines with a 'label' field ({exc})") from None


def _scorer(task: str) -> tuple[Callable[[Path], object], Callable[[object, object, str], dict], bool]:
    """(reader, metric(labels, predictions, lang), whether both files must have the same length)."""
    if task in ("panx", "udpos"):
        return read_tags, lambda g, p, _: metrics.tagging(g, p), True
    if task == "bucc2018":
        return read_lines, lambda g, p, _: metrics.bucc_f1(g, p), False
    if task == "mlqa":
        return read_json, metrics.mlqa, False
    if task in QA_TASKS:
        return read_json, lambda g, p, _: metrics.squad(g, p), False
    if task == "mewslix":
        return read_json, lambda g, p, _: metrics.mewslix_map20(g, p), False
    if task == "lareqa":
        return read_json, lambda g, p, _: metrics.lareqa_map20(g, p), False
    if task == "xcopa":
        return read_jsonl_labels, lambda g, p, _: metrics.accuracy(g, p), True
    return read_lines, lambda g, p, _: metrics.accuracy(g, p), True


def score_task(task: str, languages: list[str], predictions: Path, labels: Path) -> dict:
    missing = [str(d / task / f"test-{lang}.{suffix(task)}") for lang in languages for d in (predictions, labels)
               if not (d / task / f"test-{lang}.{suffix(task)}").is_file()]
    if missing:
        raise ScoreError(f"{task}: missing {', '.join(missing)}")
    read, metric, same_length = _scorer(task)
    result: dict = {}
    for lang in languages:
        pred_file, gold_file = (d / task / f"test-{lang}.{suffix(task)}" for d in (predictions, labels))
        pred, gold = read(pred_file), read(gold_file)
        if same_length and len(pred) != len(gold):
            raise ScoreError(f"{pred_file} has {len(pred)} examples but {gold_file} has {len(gold)}")
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
