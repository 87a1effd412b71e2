"""Small task data in the official XTREME download layout, written from the project's own sentences."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

WORDS = {
    "en": {"people": ["Maria", "John", "Aiko"], "places": ["Paris", "Berlin", "Tokyo"], "lives": "lives in",
           "works": "works in", "sleeps": "sleeps", "awake": "is awake", "someone": "Someone"},
    "de": {"people": ["Maria", "Johann", "Aiko"], "places": ["Paris", "Berlin", "Tokio"], "lives": "wohnt in",
           "works": "arbeitet in", "sleeps": "schläft", "awake": "ist wach", "someone": "Jemand"},
    "fr": {"people": ["Marie", "Jean", "Aiko"], "places": ["Paris", "Berlin", "Tokyo"], "lives": "habite à",
           "works": "travaille à", "sleeps": "dort", "awake": "est réveillé", "someone": "Quelqu'un"},
    "it": {"people": ["Maria", "Giovanni", "Aiko"], "places": ["Parigi", "Berlino", "Tokyo"], "lives": "abita a",
           "works": "lavora a", "sleeps": "dorme", "awake": "è sveglio", "someone": "Qualcuno"},
    "id": {"people": ["Maria", "Budi", "Aiko"], "places": ["Paris", "Berlin", "Tokyo"], "lives": "tinggal di",
           "works": "bekerja di", "sleeps": "tidur", "awake": "sudah bangun", "someone": "Seseorang"},
}
QUESTION = {"en": "Where does {} live?", "de": "Wo wohnt {}?", "fr": "Où habite {} ?"}


def nli_rows(lang: str) -> list[tuple[str, str, str]]:
    w = WORDS[lang]
    rows = []
    for person, place in itertools.product(w["people"], w["places"]):
        rows.append((f"{person} {w['sleeps']}.", f"{w['someone']} {w['sleeps']}.", "entailment"))
        rows.append((f"{person} {w['sleeps']}.", f"{person} {w['awake']}.", "contradiction"))
        rows.append((f"{person} {w['lives']} {place}.", f"{person} {w['works']} {place}.", "neutral"))
    return rows


def ner_rows(lang: str) -> list[list[tuple[str, str]]]:
    w = WORDS[lang]
    rows = []
    for person, place in itertools.product(w["people"], w["places"]):
        verb = w["lives"].split()
        rows.append([(person, "B-PER")] + [(v, "O") for v in verb] + [(place, "B-LOC"), (".", "O")])
        rows.append([(w["someone"], "O"), (w["sleeps"], "O"), (".", "O")])
    return rows


def write_xtreme(root: Path, languages=("en", "de", "fr"), tagged_test: bool = True) -> Path:
    for task in ("xnli", "pawsx"):
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        for lang in languages:
            rows = nli_rows(lang)
            if task == "pawsx":  # paraphrase or not: entailment rows are the paraphrases
                rows = [(a, b, "1" if label == "entailment" else "0") for a, b, label in rows]
            text = "".join(f"{a}\t{b}\t{label}\n" for a, b, label in rows)
            splits = ("train", "dev", "test") if lang == "en" else ("dev", "test")
            for split in splits:
                (folder / f"{split}-{lang}.tsv").write_text(text, encoding="utf-8")
    for task in ("panx", "udpos"):
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        for lang in languages:
            rows = ner_rows(lang)
            full = "".join("".join(f"{tok}\t{tag}\n" for tok, tag in s) + "\n" for s in rows)
            bare = "".join("".join(f"{tok}\n" for tok, _ in s) + "\n" for s in rows)
            splits = ("train", "dev", "test") if lang == "en" else ("dev", "test")
            for split in splits:
                (folder / f"{split}-{lang}.tsv").write_text(full if split != "test" or tagged_test else bare,
                                                              encoding="utf-8")
    return root


def squad_articles(lang: str, prefix: str) -> list[dict]:
    """One paragraph per person: where they live (the answer) and where someone else works (a distractor)."""
    w = WORDS[lang]
    paragraphs = []
    for k, (person, place) in enumerate(itertools.product(w["people"], w["places"])):
        other = w["people"][(w["people"].index(person) + 1) % 3]
        elsewhere = w["places"][(w["places"].index(place) + 1) % 3]
        context = f"{other} {w['works']} {elsewhere}. {person} {w['lives']} {place}."
        start = context.rindex(place)
        paragraphs.append({"context": context, "qas": [{"id": f"{prefix}-{lang}-{k}",
                                                        "question": QUESTION[lang].format(person),
                                                        "answers": [{"text": place, "answer_start": start}]}]})
    return [{"title": "fixture", "paragraphs": paragraphs}]


def write_qa(root: Path, languages=("en", "de")) -> Path:
    def put(path: Path, articles: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False), encoding="utf-8")

    put(root / "squad" / "train-v1.1.json", squad_articles("en", "train") * 4)
    put(root / "squad" / "dev-v1.1.json", squad_articles("en", "dev"))
    for lang in languages:
        put(root / "xquad" / f"xquad.{lang}.json", squad_articles(lang, "xquad"))
        put(root / "mlqa" / "MLQA_V1" / "test" / f"test-context-{lang}-question-{lang}.json",
            squad_articles(lang, "mlqa"))
    return root


def write_xcopa(root: Path, languages=("en", "it", "id")) -> Path:
    """COPA-style records: the premise, a cause or effect question, the right and a wrong choice."""
    folder = root / "xcopa"
    folder.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        w = WORDS[lang]
        rows = []
        for k, person in enumerate(w["people"] * 3):
            right, wrong = f"{person} {w['sleeps']}.", f"{person} {w['lives']} {w['places'][k % 3]}."
            label = k % 2
            choices = (wrong, right) if label else (right, wrong)
            rows.append({"premise": f"{person} {w['awake']}.", "choice1": choices[0], "choice2": choices[1],
                         "question": "cause" if k % 3 else "effect", "label": label, "idx": k})
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        for split in (("train", "val", "test") if lang == "en" else ("val", "test")):
            (folder / f"{split}-{lang}.jsonl").write_text(text, encoding="utf-8")
    return root


def write_tatoeba(root: Path, languages=("de", "fr")) -> Path:
    """Translations aligned by line, as the download leaves them: ``<lang>-en.<lang>`` and ``<lang>-en.en``."""
    folder = root / "tatoeba"
    folder.mkdir(parents=True, exist_ok=True)
    english = [f"{a} {b}" for a, b, _ in nli_rows("en")]
    for lang in languages:
        (folder / f"{lang}-en.{lang}").write_text("".join(f"{a} {b}\n" for a, b, _ in nli_rows(lang)), encoding="utf-8")
        (folder / f"{lang}-en.en").write_text("".join(f"{s}\n" for s in english), encoding="utf-8")
    return root
