"""The benchmark's metrics, each as the official scorer computes it (all on the ×100 scale).

Written from the metric definitions in ../shared/xtreme_r_spec.md: accuracy, seqeval span F1 (through the
``seqeval`` package itself, whose chunking rules are part of the official numbers), BUCC F1 over sets of
sentence-id pairs, SQuAD v1.1 EM/F1, MLQA's language-aware EM/F1, Mewsli-X mAP@20, and LAReQA's mAP@20 (the
XTREME repository's definition; its scorer does not score LAReQA).
"""
from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import cache


class MetricError(ValueError):
    pass


def accuracy(labels: list[str], predictions: list[str]) -> dict[str, float]:
    correct = sum(p == g for p, g in zip(predictions, labels))
    return {"accuracy": 100.0 * correct / len(predictions)}


def tagging(labels: list[list[str]], predictions: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"f1": 100.0 * f1_score(labels, predictions), "precision": 100.0 * precision_score(labels, predictions),
            "recall": 100.0 * recall_score(labels, predictions)}


def bucc_f1(labels: list[str], predictions: list[str]) -> dict[str, float]:
    gold, found = {tuple(x.split("\t")) for x in labels}, {tuple(x.split("\t")) for x in predictions}
    both = len(gold & found)
    if both == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    precision, recall = both / len(found), both / len(gold)
    return {"f1": 100.0 * 2 * precision * recall / (precision + recall), "precision": 100.0 * precision,
            "recall": 100.0 * recall}


# --- extractive QA ---------------------------------------------------------------------------------------

_ASCII_PUNCT = frozenset(string.punctuation)
_EN_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MLQA_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "ar": re.compile("ال"),  # the official pattern matches the two letters anywhere, not only as a prefix
    "hi": None,
    "zh": None,
}
_CJK = re.compile("[\u4e00-\u9fa5]")


@cache
def _unicode_punct() -> frozenset[str]:
    return frozenset(c for c in map(chr, range(sys.maxunicode + 1))
                     if unicodedata.category(c).startswith("P")) | _ASCII_PUNCT


def squad_normalize(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _ASCII_PUNCT)
    return " ".join(_EN_ARTICLES.sub(" ", text).split())


def mlqa_normalize(text: str, lang: str) -> str:
    if lang not in _MLQA_ARTICLES:
        raise MetricError(f"MLQA has no normalisation for language {lang!r} (expected one of "
                          f"{', '.join(_MLQA_ARTICLES)})")
    punct = _unicode_punct()
    text = "".join(c for c in text.lower() if c not in punct)
    if _MLQA_ARTICLES[lang] is not None:
        text = _MLQA_ARTICLES[lang].sub(" ", text)
    return " ".join(_mixed_segmentation(text, punct) if lang == "zh" else text.split())


def _mixed_segmentation(text: str, punct: frozenset[str]) -> list[str]:
    """Every CJK ideograph and punctuation character is a token; the runs between are split on spaces."""
    tokens, run = [], []
    for c in text:
        if _CJK.match(c) or c in punct:
            tokens += "".join(run).split()
            run = []
            tokens.append(c)
        else:
            run.append(c)
    return tokens + "".join(run).split()


def _token_f1(prediction: str, gold: str) -> float:
    p, g = prediction.split(), gold.split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _qa(dataset: list[dict], predictions: dict[str, str], normalize: Callable[[str], str]) -> dict[str, float]:
    """EM and F1 over every question of the labels; each takes its best gold answer; an unanswered
    question scores 0."""
    exact = f1 = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                guess = normalize(predictions[qa["id"]])
                golds = [normalize(a["text"]) for a in qa["answers"]]
                exact += max(float(guess == g) for g in golds)
                f1 += max(_token_f1(guess, g) for g in golds)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def squad(dataset: list[dict], predictions: dict[str, str]) -> dict[str, float]:
    return _qa(dataset, predictions, squad_normalize)


def mlqa(dataset: list[dict], predictions: dict[str, str], lang: str) -> dict[str, float]:
    return _qa(dataset, predictions, lambda text: mlqa_normalize(text, lang))


def mewslix_map20(labels: dict[str, list[str]], predictions: dict[str, list[str]]) -> dict[str, float]:
    """Mean reciprocal rank of the gold entity within the first 20 predictions (0 when absent)."""
    total = 0.0
    for example, gold in labels.items():
        target = gold[0].strip()
        for rank, guess in enumerate(predictions.get(example, [])[:20], start=1):
            if guess == target:
                total += 1.0 / rank
                break
    return {"map@20": 100.0 * total / len(labels)}


def lareqa_map20(labels: dict[str, list[str]], predictions: dict[str, list[str]]) -> dict[str, float]:
    """Mean average precision in the first 20 predictions, every query having one or more relevant ids (in
    LAReQA, the answer sentence in each language): for each hit at rank r, the number of hits up to r over r,
    summed, over min(number relevant, 20); a repeated prediction counts once. With one relevant id this is
    the reciprocal rank, as in mewslix_map20."""
    total = 0.0
    for example, gold in labels.items():
        relevant = {g.strip() for g in gold} - {""}
        if not relevant:
            continue
        hits, precision, seen = 0, 0.0, set()
        for rank, guess in enumerate(predictions.get(example, [])[:20], start=1):
            if guess in relevant and guess not in seen:
                hits += 1
                precision += hits / rank
            seen.add(guess)
        total += precision / min(len(relevant), 20)
    return {"map@20": 100.0 * total / len(labels)}
