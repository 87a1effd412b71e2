"""Readers for the official XTREME download layout (``download/<task>/...``), for the tasks ``run`` covers:
sentence-pair classification (XNLI, PAWS-X), tagging (UD-POS, PAN-X), extractive QA (XQuAD, MLQA,
TyDiQA-GoldP), XCOPA (and SIQA, its first training stage, as XTREME's download leaves it or in AllenAI's
own layout), Tatoeba, and the dual-encoder retrieval tasks Mewsli-X and LAReQA (XQuAD-R).

The download scripts withhold the evaluation labels of several tasks (XTREME's ``utils_preprocess.py``):
test labels or tags dropped (XNLI, PAWS-X, UD-POS, PAN-X), test labels set to 0 (XCOPA), test entity ids
blanked (Mewsli-X), every answer of XQuAD, of MLQA's test sets and of TyDiQA-GoldP's dev sets (its evaluation
sets) replaced by an empty one, and Tatoeba's English side sorted (its gold order hidden). The readers let
``run`` tell: ``labelled``, ``choices_labelled``, ``answered`` and ``tatoeba_shuffled``. ``run`` then scores
the dev sets where they keep their labels, and says so, or writes predictions without scoring them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from weam_ds.xtreme_r.score import ScoreError, read_json, read_lines
from weam_ds.xtreme_r.tasks import TASKS, Task


def task_file(data: Path, task: Task, role: str, lang: str = "en") -> Path:
    """The file a task's description names for ``role`` (``train``, ``dev``, ``test`` ...) and ``lang``: the
    first of its places that exists, else the first (for the error message)."""
    places = [data / t.format(lang=lang) for t in task.files[role].split("|")]
    return next((p for p in places if p.is_file()), places[0])


@dataclass
class PairExample:
    first: str
    second: str
    label: str | None


@dataclass
class TagExample:
    words: list[str]
    tags: list[str] | None


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


SPLIT_READERS = {"classification": read_pairs, "tagging": read_tagged}
"""The example reader of each family in the one-file-per-split layout."""


def read_split(data: Path, task: Task, split: str, lang: str) -> list:
    return SPLIT_READERS[task.family](task_file(data, task, split, lang))


def labelled(examples: list) -> bool:
    return bool(examples) and all((e.label if isinstance(e, PairExample) else e.tags) is not None for e in examples)


def choices_labelled(records: list[dict]) -> bool:
    """Whether XCOPA records keep their labels: XTREME's download sets every test label to 0 (the key stays),
    so a file whose labels are all 0 counts as withheld (a real XCOPA set has both answers)."""
    return bool(records) and all("label" in r for r in records) and any(r["label"] for r in records)


def _split_needs(data: Path, task: Task, languages: list[str], first_stage: str | None) -> list[Path]:
    """Classification, tagging, QA, XCOPA: English train and dev, and every language's test file; XCOPA's
    first stage (SIQA) adds its files."""
    needed = [f for split in SIQA_SPLITS for f in siqa_files(data, split)] if first_stage == "siqa" else []
    needed += [task_file(data, task, "train"), task_file(data, task, "dev")]
    return needed + [task_file(data, task, "test", lang) for lang in languages]


def _tatoeba_needs(data: Path, task: Task, languages: list[str], first_stage: str | None) -> list[Path]:
    return [task_file(data, task, role, lang) for lang in languages for role in ("source", "english")]


def _dual_encoder_needs(data: Path, task: Task, languages: list[str], first_stage: str | None) -> list[Path]:
    """Mewsli-X: the candidate set, the English pairs and the WikiNews mentions (either download layout);
    LAReQA: English SQuAD and every language's XQuAD-R file."""
    if "candidates" in task.files:
        return list(mewslix_files(data, languages).values())
    return [task_file(data, task, "train"), task_file(data, task, "dev")] + \
        [task_file(data, task, "test", lang) for lang in languages]


NEEDS = {"classification": _split_needs, "tagging": _split_needs, "qa": _split_needs,
         "multiple_choice": _split_needs, "retrieval": _tatoeba_needs, "dual_encoder": _dual_encoder_needs}
"""Per family: the files a run of a task needs."""


def check_layout(data: Path, task: Task, languages: list[str], first_stage: str | None = None) -> None:
    """One message listing every file the task needs that the folder lacks; ``first_stage`` is the recipe's
    (XCOPA's ``siqa`` adds the SIQA files)."""
    missing = [p for p in NEEDS[task.family](data, task, languages, first_stage) if not p.is_file()]
    if missing:
        hint = ""
        if any(p.parent == data / "siqa" for p in missing):
            hint = (f"; SIQA, the recipe's first stage: download_siqa of XTREME's scripts/download_data.sh unpacks "
                    f"socialIQa_v1.4.tgz into {data / 'siqa'}; AllenAI's layout is read there too (the four files "
                    "of socialiqa-train-dev.zip: train.jsonl, train-labels.lst, dev.jsonl, dev-labels.lst); or "
                    "train on COPA alone with --recipes pointing at a folder whose xcopa.yaml sets first_stage: null")
        raise ScoreError(f"{data}: {task.name} needs {', '.join(map(str, missing))}{hint}")


# --- extractive QA (SQuAD format) ----------------------------------------------------------------------
# Where each QA task's files sit is in its description (tasks.py): English training and dev data (SQuAD v1.1
# for XQuAD and MLQA, TyDiQA-GoldP's English sets for TyDiQA), a test file per language (TyDiQA-GoldP
# publishes no test set: its dev sets are its test sets), and MLQA's labelled dev sets. The download strips the
# answers of every test file, and of TyDiQA's English dev (``answered`` tells); MLQA's dev sets keep theirs.


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[dict]
    """SQuAD answers: {"text", "answer_start"}; the first is the training target."""


def answered(examples: list[QAExample]) -> bool:
    """Whether a SQuAD-format file carries answers: XTREME's download (``remove_qa_test_annotations``) gives
    every question of XQuAD, of MLQA's test sets and of TyDiQA-GoldP's dev sets the one answer
    ``{"answer_start": 0, "text": ""}``; a file with any non-empty answer text keeps its answers."""
    return any(a.get("text") for e in examples for a in e.answers)


def read_squad(path: Path) -> tuple[list[QAExample], list[dict]]:
    """The examples of a SQuAD-format file, and its ``data`` list (the labels the scorer reads)."""
    articles = read_json(path)
    examples = [QAExample(qa["id"], qa["question"], p["context"], qa.get("answers", []))
                for article in articles for p in article["paragraphs"] for qa in p["qas"]]
    return examples, articles


# --- XCOPA (COPA-style multiple choice, JSON lines) -----------------------------------------------------

def read_choices(path: Path) -> list[dict]:
    """COPA records: premise, choice1, choice2, question (cause or effect), and label where it is kept."""
    return list(read_jsonl(path))


# SIQA (Social IQa), the official recipe's first XCOPA training stage, in ``siqa/``. Two layouts:
# - XTREME's (primary): download_siqa of scripts/download_data.sh unpacks socialIQa_v1.4.tgz there, giving
#   ``socialIQa_v1.4_{trn,dev,tst}.jsonl``: one question per line ({"context", "question", "answerA",
#   "answerB", "answerC", "correct"}), ``correct`` the right answer's letter (A, B or C).
# - AllenAI's (the alternative, read when a split's XTREME file is absent and AllenAI's files of that split
#   are there): the files of socialiqa-train-dev.zip (its ``socialiqa-train-dev/`` folder). ``<split>.jsonl``
#   holds the questions without ``correct`` and ``<split>-labels.lst`` the answers, one per line, in the same
#   order, 1-based (1, 2 or 3 for answerA, answerB, answerC).

SIQA_SPLITS = ("train", "dev")
SIQA_FIELDS = ("context", "question", "answerA", "answerB", "answerC")
SIQA_XTREME = {"train": "socialIQa_v1.4_trn.jsonl", "dev": "socialIQa_v1.4_dev.jsonl"}
SIQA_LETTERS = {"A": 0, "B": 1, "C": 2}


def siqa_files(data: Path, split: str) -> tuple[Path, ...]:
    """The files of a SIQA split: XTREME's one file (questions with their answer letters) when it is there or
    when none of AllenAI's files of the split are; else AllenAI's questions and labels. The first is the
    questions file."""
    xtreme = (data / "siqa" / SIQA_XTREME[split],)
    allenai = (data / "siqa" / f"{split}.jsonl", data / "siqa" / f"{split}-labels.lst")
    return allenai if not xtreme[0].is_file() and any(p.is_file() for p in allenai) else xtreme


def _siqa_questions(path: Path, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line; a line that is no JSON object with every one of
    ``fields`` as a string is an error naming it."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ScoreError(f"{path}:{n}: not JSON ({exc})") from None
            absent = [k for k in fields if not isinstance(row, dict) or not isinstance(row.get(k), str)]
            if absent:
                raise ScoreError(f"{path}:{n}: no {', '.join(absent)} (expected {', '.join(fields)})")
            rows.append((n, {k: row[k] for k in fields}))
    return rows


def read_siqa(data: Path, split: str) -> list[dict]:
    """SIQA records: context, question, answerA/B/C, and ``label``, the index of the right answer (0-based:
    ``correct``'s A/B/C in XTREME's layout, the labels file's 1/2/3 minus one in AllenAI's). A malformed line,
    or labels that do not pair one to one with the questions, is an error naming the file."""
    files = siqa_files(data, split)
    if len(files) == 1:
        records = []
        for n, row in _siqa_questions(files[0], SIQA_FIELDS + ("correct",)):
            letter = row.pop("correct").strip()
            if letter not in SIQA_LETTERS:
                raise ScoreError(f"{files[0]}:{n}: correct {letter!r} (expected A, B or C)")
            records.append({**row, "label": SIQA_LETTERS[letter]})
        return records
    questions, labels = files
    rows = [row for _, row in _siqa_questions(questions, SIQA_FIELDS)]
    answers = []
    with open(labels, encoding="utf-8") as f:
        lines = f.read().rstrip().splitlines()
    for n, line in enumerate(lines, 1):
        if line.strip() not in ("1", "2", "3"):
            raise ScoreError(f"{labels}:{n}: label {line.strip()!r} (expected 1, 2 or 3)")
        answers.append(int(line) - 1)
    if len(answers) != len(rows):
        raise ScoreError(f"{labels}: {len(answers)} labels, but {questions} holds {len(rows)} questions")
    return [{**row, "label": label} for row, label in zip(rows, answers)]


def tatoeba_files(data: Path, lang: str) -> tuple[Path, Path]:
    """The download's Tatoeba pair: ``<lang>-en.<lang>`` and ``<lang>-en.en``. XTREME's download copies the
    first as LASER ships it and writes the second sorted (``tatoeba_shuffled``); files aligned by line (the
    gold: sentence i translates English sentence i) are read as well."""
    tatoeba = TASKS["tatoeba"]
    return task_file(data, tatoeba, "source", lang), task_file(data, tatoeba, "english", lang)


def tatoeba_shuffled(english: list[str]) -> bool:
    """Whether a Tatoeba English side is in XTREME's download layout, sorted (``tatoeba_preprocess`` writes
    the English sentences in sorted order, hiding which one translates which source line), rather than
    aligned with its source. Two lines or fewer are sorted by chance too often to tell: read as aligned."""
    return len(english) > 2 and all(a <= b for a, b in zip(english, english[1:]))


read_sentences = read_lines
"""One sentence per line (the scorer's line reader: UTF-8 checked, whitespace stripped)."""


# --- dual-encoder retrieval: Mewsli-X and LAReQA (XQuAD-R) ------------------------------------------------

@dataclass
class RetrievalSet:
    """Queries, and for each the ids of its relevant candidates (an empty list where the download withholds
    them). ``candidate_ids``/``candidates`` hold the pool they rank when the set carries its own (the English
    sets used for training and model selection); test sets rank a pool shared by all languages."""
    query_ids: list[str]
    queries: list[str]
    gold: dict[str, list[str]]
    candidate_ids: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)

    def labelled(self) -> bool:
        return bool(self.query_ids) and all(self.gold.get(q) for q in self.query_ids)

    def training_pairs(self) -> list[tuple[str, str, str]]:
        """(query, its first relevant candidate's text, that candidate's id) for every labelled query."""
        text = dict(zip(self.candidate_ids, self.candidates))
        return [(query, text[self.gold[q][0]], self.gold[q][0])
                for q, query in zip(self.query_ids, self.queries) if self.gold.get(q)]


def read_jsonl(path: Path):
    """The JSON object of every non-blank line; a malformed line is an error naming it."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ScoreError(f"{path}:{n}: not JSON ({exc})") from None


def _span(span) -> tuple[int, int]:
    """Mewsli-X writes spans as {"start", "end"}, XQuAD-R as [start, end]; end is exclusive in both."""
    return (span["start"], span["end"]) if isinstance(span, dict) else (span[0], span[1])


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Mewsli-X. The official download leaves, in ``mewslix/``: the candidate set (``candidate_set_entities.jsonl``:
# one entity per line: entity_id, title, description, sentence_spans, description_language, description_url),
# English Wikipedia (mention, entity) pairs for training and dev (``wikipedia_pairs-{train,dev}.jsonl``: each
# line {"contextual_mention": {"context", "mention"}, "entity"}), and WikiNews mentions for evaluation
# (``wikinews_mentions-{dev,test}.jsonl``: each line one article, {"context", "mentions": [...]}). A context has
# document_id/url/title, language, text and sentence_spans; a mention has example_id, entity_id (a WikiData QID)
# and mention_span {start, end, text}. XTREME's download_data.sh further splits the WikiNews files by language
# (``wikinews_mentions/{dev,test}-<lang>.jsonl``, test entity ids blanked) and deletes the combined ones: both
# layouts are read, the combined one first.

def mewslix_files(data: Path, languages: list[str]) -> dict[str, Path]:
    folder = data / "mewslix"
    files = {role: task_file(data, TASKS["mewslix"], role) for role in ("candidates", "train", "dev")}
    combined = {f"wikinews-{split}": folder / f"wikinews_mentions-{split}.jsonl" for split in ("dev", "test")}
    per_language = {f"wikinews-{split}-{lang}": folder / "wikinews_mentions" / f"{split}-{lang}.jsonl"
                    for split in ("dev", "test") for lang in languages}
    use_split = (folder / "wikinews_mentions").is_dir() and not all(p.is_file() for p in combined.values())
    return {**files, **(per_language if use_split else combined)}


def mention_query(context: dict, mention: dict) -> str:
    """A mention in context, as the official baseline feeds it to the query encoder: the sentence holding
    the mention (the whole text when no sentence holds it entirely), the mention marked by braces (braces
    already in the text become parentheses), and the mention text again in front, so that truncation to a
    short length keeps it."""
    text = context.get("text") or ""
    start, end = _span(mention["mention_span"])
    surface = mention["mention_span"].get("text", text[start:end])
    first, last = 0, len(text)
    for span in context.get("sentence_spans") or []:
        s, e = _span(span)
        if s <= start < e and end <= e:
            first, last = s, e
            break
    escape = str.maketrans("{}", "()")
    left, right = text[first:start].translate(escape), text[end:last].translate(escape)
    return _one_line(f"{surface}: {left} {{ {surface} }} {right}")


def entity_text(entity: dict) -> str:
    """An entity's description (its annotated sentences), on one line."""
    description = entity.get("description") or ""
    spans = entity.get("sentence_spans") or []
    return _one_line(" ".join(description[s:e] for s, e in map(_span, spans)) if spans else description)


def read_entities(path: Path) -> tuple[list[str], list[str]]:
    """The candidate set: entity ids and their description texts."""
    ids, texts = [], []
    for entity in read_jsonl(path):
        ids.append(entity["entity_id"])
        texts.append(entity_text(entity))
    return ids, texts


def read_mention_pairs(path: Path) -> RetrievalSet:
    """Wikipedia (mention, entity) pairs: each mention is a query whose one relevant candidate is its entity;
    the pool is the distinct entities of the file."""
    queries = RetrievalSet([], [], {})
    seen = set()
    for row in read_jsonl(path):
        cm, entity = row["contextual_mention"], row["entity"]
        mention = cm["mention"]
        queries.query_ids.append(mention["example_id"])
        queries.queries.append(mention_query(cm["context"], mention))
        queries.gold[mention["example_id"]] = [entity["entity_id"]]
        if entity["entity_id"] not in seen:
            seen.add(entity["entity_id"])
            queries.candidate_ids.append(entity["entity_id"])
            queries.candidates.append(entity_text(entity))
    return queries


def read_wikinews(files: dict[str, Path], split: str, languages: list[str]) -> dict[str, RetrievalSet]:
    """The WikiNews mentions of one split, per language; gold is the mention's entity id (none when blank)."""
    sources = [files[f"wikinews-{split}"]] if f"wikinews-{split}" in files else \
        [files[f"wikinews-{split}-{lang}"] for lang in languages]
    sets = {lang: RetrievalSet([], [], {}) for lang in languages}
    for path in sources:
        for article in read_jsonl(path):
            context = article["context"]
            target = sets.get(context.get("language"))
            if target is None:
                continue
            for mention in article["mentions"]:
                target.query_ids.append(mention["example_id"])
                target.queries.append(mention_query(context, mention))
                gold = (mention.get("entity_id") or "").strip()
                target.gold[mention["example_id"]] = [gold] if gold else []
    empty = [lang for lang, s in sets.items() if not s.query_ids]
    if empty:
        raise ScoreError(f"{', '.join(map(str, sources))}: no {split} mentions in {' '.join(empty)}")
    return sets


# LAReQA. XQuAD-R (``lareqa/xquad-r/<lang>.json``, from google-research-datasets/lareqa) is XQuAD in SQuAD
# format with each paragraph's sentences added: ``sentence_breaks`` ([start, end) character offsets into the
# context) and ``sentences``. Every sentence of every paragraph, in every language, is a candidate; a question's
# relevant candidates are the sentences holding the answer (its first answer's start) to the same question
# (same id) in each language of the pool. English SQuAD v1.1, the official training data, carries no
# sentence breaks: sentence_breaks() finds them.

_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s)|[。！？]+""")


def sentence_breaks(text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the sentences of ``text``: each ends at . ! ? … (and closing quotes or brackets)
    before whitespace, or at a CJK full stop; leading whitespace is not part of a sentence."""
    spans, start = [], 0
    for match in list(_SENTENCE_END.finditer(text)) + [None]:
        end = match.end() if match else len(text)
        while start < end and text[start].isspace():
            start += 1
        if start < end:
            spans.append((start, end))
        start = end
    return spans


def read_squad_sentences(path: Path, lang: str) -> RetrievalSet:
    """Questions (ids ``<question id>_<lang>``) of a SQuAD-format file and every sentence of its paragraphs
    as candidates (ids ``<lang>_<paragraph number>_<sentence number>``, numbered from 1 and 0). A candidate's
    text is its sentence followed by its whole paragraph (the official baseline's answer encoding). A
    question's gold is the sentence holding its first answer's start; questions whose answer starts in no
    sentence are left out, as the official code does."""
    articles = read_json(path)
    found = RetrievalSet([], [], {})
    number = 0
    for article in articles:
        for paragraph in article["paragraphs"]:
            number += 1
            context = paragraph["context"]
            breaks = [_span(b) for b in paragraph["sentence_breaks"]] if "sentence_breaks" in paragraph \
                else sentence_breaks(context)
            ids = [f"{lang}_{number}_{k}" for k in range(len(breaks))]
            found.candidate_ids += ids
            found.candidates += [_one_line(f"{context[s:e]} {context}") for s, e in breaks]
            for qa in paragraph["qas"]:
                if not qa.get("answers"):
                    continue
                start = qa["answers"][0]["answer_start"]
                holder = next((k for k, (s, e) in enumerate(breaks) if s <= start < e), None)
                if holder is None:
                    continue
                uid = f"{qa['id']}_{lang}"
                found.query_ids.append(uid)
                found.queries.append(qa["question"])
                found.gold[uid] = [ids[holder]]
    return found


def read_xquad_r(data: Path, languages: list[str]) -> tuple[dict[str, RetrievalSet], list[str], list[str]]:
    """Per language its questions, each relevant to the answer sentences of its translations in every
    language of ``languages``; and the multilingual pool (ids and texts) they all rank."""
    sets = {lang: read_squad_sentences(task_file(data, TASKS["lareqa"], "test", lang), lang) for lang in languages}
    answers: dict[str, list[str]] = {}
    for lang, found in sets.items():
        for uid in found.query_ids:
            answers.setdefault(uid[:-len(lang) - 1], []).append(found.gold[uid][0])
    for lang, found in sets.items():
        found.gold = {uid: answers[uid[:-len(lang) - 1]] for uid in found.query_ids}
    ids = [c for found in sets.values() for c in found.candidate_ids]
    texts = [t for found in sets.values() for t in found.candidates]
    for found in sets.values():
        found.candidate_ids, found.candidates = [], []
    return sets, ids, texts
