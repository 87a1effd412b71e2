"""Readers for the official XTREME download layout (``download/<task>/...``), for the tasks ``run`` covers:
sentence-pair classification (XNLI, PAWS-X), tagging (UD-POS, PAN-X) and extractive QA (XQuAD, MLQA,
TyDiQA-GoldP).

Test labels of several tasks are withheld by the download scripts; ``eval_split`` then falls back to dev
and says so, and results record which split was scored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from weam_ds.xtreme_r.score import ScoreError

CLASSIFICATION = ("xnli", "pawsx")
TAGGING = ("udpos", "panx")
MULTIPLE_CHOICE = ("xcopa",)
RETRIEVAL = ("tatoeba",)


@dataclass
class PairExample:
    first: str
    second: str
    label: str | None


@dataclass
class TagExample:
    words: list[str]
    tags: list[str] | None


def split_file(data: Path, task: str, split: str, lang: str) -> Path:
    return data / task / f"{split}-{lang}.tsv"


def read_pairs(path: Path) -> list[PairExample]:
    """premise/sentence1 <TAB> hypothesis/sentence2 [<TAB> label] per line."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                raise ScoreError(f"{path}:{n}: expected at least two tab-separated fields")
            examples.append(PairExample(fields[0], fields[1], fields[2].strip() if len(fields) > 2 else None))
    return examples


def read_tagged(path: Path) -> list[TagExample]:
    """``token<TAB>tag`` per line (the token alone where the tag is withheld), a blank line between sentences."""
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if words:
                    sentences.append(TagExample(words, tags if len(tags) == len(words) else None))
                words, tags = [], []
                continue
            fields = line.split("\t")
            words.append(fields[0])
            if len(fields) > 1 and fields[1]:
                tags.append(fields[1])
    if words:
        sentences.append(TagExample(words, tags if len(tags) == len(words) else None))
    return sentences


def read_split(data: Path, task: str, split: str, lang: str) -> list:
    path = split_file(data, task, split, lang)
    return read_pairs(path) if task in CLASSIFICATION else read_tagged(path)


def labelled(examples: list) -> bool:
    return bool(examples) and all((e.label if isinstance(e, PairExample) else e.tags) is not None for e in examples)


def check_layout(data: Path, task: str, languages: list[str]) -> None:
    """One message listing every file the task needs that the folder lacks."""
    if task in QA:
        needed = list(qa_files(data, task, None).values())
        needed += [f for lang in languages for f in qa_files(data, task, lang).values()]
    elif task in RETRIEVAL:
        needed = [f for lang in languages for f in tatoeba_files(data, lang)]
    elif task in MULTIPLE_CHOICE:
        needed = [choice_file(data, "train", "en"), choice_file(data, "val", "en")]
        needed += [choice_file(data, "test", lang) for lang in languages]
    else:
        needed = [split_file(data, task, "train", "en"), split_file(data, task, "dev", "en")]
        needed += [split_file(data, task, "test", lang) for lang in languages]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ScoreError(f"{data}: {task} needs {', '.join(missing)}")


# --- extractive QA (SQuAD format) ----------------------------------------------------------------------

QA = ("xquad", "mlqa", "tydiqa")


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[dict]
    """SQuAD answers: {"text", "answer_start"}; the first is the training target."""


def qa_files(data: Path, task: str, lang: str | None) -> dict[str, Path]:
    """The files of a QA task in the official download: ``train``/``dev`` (English) when ``lang`` is None,
    else ``test`` for that language. TyDiQA-GoldP publishes no test set: its dev sets are the test sets."""
    if lang is None:
        if task == "tydiqa":
            return {"train": data / "tydiqa" / "tydiqa-goldp-v1.1-train" / "tydiqa.goldp.en.train.json",
                    "dev": _tydiqa_dev(data, "en")}
        return {"train": data / "squad" / "train-v1.1.json", "dev": data / "squad" / "dev-v1.1.json"}
    if task == "xquad":
        return {"test": data / "xquad" / f"xquad.{lang}.json"}
    if task == "mlqa":
        return {"test": data / "mlqa" / "MLQA_V1" / "test" / f"test-context-{lang}-question-{lang}.json"}
    return {"test": _tydiqa_dev(data, lang)}


def _tydiqa_dev(data: Path, lang: str) -> Path:
    """The download leaves the per-language dev files beside the train file or in the unpacked dev folder;
    the first that exists (else the first place, for the error message)."""
    name = f"tydiqa.goldp.{lang}.dev.json"
    places = [data / "tydiqa" / "tydiqa-goldp-v1.1-dev" / name, data / "tydiqa" / "tydiqa-goldp-v1.1-train" / name,
              data / "tydiqa" / name]
    return next((p for p in places if p.is_file()), places[0])


def read_squad(path: Path) -> tuple[list[QAExample], list[dict]]:
    """The examples of a SQuAD-format file, and its ``data`` list (the labels the scorer reads)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    articles = raw["data"] if isinstance(raw, dict) and "data" in raw else raw
    examples = [QAExample(qa["id"], qa["question"], p["context"], qa.get("answers", []))
                for article in articles for p in article["paragraphs"] for qa in p["qas"]]
    return examples, articles


# --- XCOPA (COPA-style multiple choice, JSON lines) -----------------------------------------------------

def choice_file(data: Path, split: str, lang: str) -> Path:
    return data / "xcopa" / f"{split}-{lang}.jsonl"


def read_choices(path: Path) -> list[dict]:
    """COPA records: premise, choice1, choice2, question (cause or effect), and label where it is kept."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise ScoreError(f"{path}:{n}: not JSON ({exc})") from None
    return rows


def tatoeba_files(data: Path, lang: str) -> tuple[Path, Path]:
    """The download's Tatoeba pair: ``<lang>-en.<lang>`` and ``<lang>-en.en``, aligned by line."""
    return data / "tatoeba" / f"{lang}-en.{lang}", data / "tatoeba" / f"{lang}-en.en"


def read_sentences(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
