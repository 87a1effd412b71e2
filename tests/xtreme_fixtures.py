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
    "es": {"people": ["María", "Juan", "Aiko"], "places": ["París", "Berlín", "Tokio"], "lives": "vive en",
           "works": "trabaja en", "sleeps": "duerme", "awake": "está despierto", "someone": "Alguien"},
}
def save_tiny_model(dataset: Path, folder: Path) -> Path:
    """A freshly initialised ``tiny`` masked LM (seed 0) with the dataset's tokenizer, saved to ``folder``: the
    model the evaluator tests fine-tune and embed with."""
    import torch
    from transformers import AutoTokenizer

    from weam_ds.presets import build_model

    tok = AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))
    torch.manual_seed(0)
    build_model("tiny", len(tok), pad_token_id=tok.pad_token_id).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


QUESTION = {"en": "Where does {} live?", "de": "Wo wohnt {}?", "fr": "Où habite {} ?", "es": "¿Dónde vive {}?",
            "id": "Di mana {} tinggal?"}


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


def _put_squad(path: Path, articles: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False), encoding="utf-8")


def write_qa(root: Path, languages=("en", "de")) -> Path:
    """SQuAD v1.1 (English train and dev), XQuAD and MLQA's test and dev sets, all with their answers."""
    _put_squad(root / "squad" / "train-v1.1.json", squad_articles("en", "train") * 4)
    _put_squad(root / "squad" / "dev-v1.1.json", squad_articles("en", "dev"))
    for lang in languages:
        _put_squad(root / "xquad" / f"xquad.{lang}.json", squad_articles(lang, "xquad"))
        _put_squad(root / "mlqa" / "MLQA_V1" / "test" / f"test-context-{lang}-question-{lang}.json",
                   squad_articles(lang, "mlqa"))
        _put_squad(root / "mlqa" / "MLQA_V1" / "dev" / f"dev-context-{lang}-question-{lang}.json",
                   squad_articles(lang, "mlqa-dev"))
    return root


def write_tydiqa(root: Path, languages=("en", "id")) -> Path:
    """TyDiQA-GoldP as XTREME's download_tydiqa leaves it: the English training file in
    ``tydiqa-goldp-v1.1-train/``, the per-language dev sets (its evaluation sets) in ``tydiqa-goldp-v1.1-dev/``."""
    folder = root / "tydiqa"
    _put_squad(folder / "tydiqa-goldp-v1.1-train" / "tydiqa.goldp.en.train.json", squad_articles("en", "tydi") * 4)
    for lang in languages:
        _put_squad(folder / "tydiqa-goldp-v1.1-dev" / f"tydiqa.goldp.{lang}.dev.json", squad_articles(lang, "tydi-dev"))
    return root


def strip_answers(folder: Path) -> None:
    """What XTREME's download (``remove_qa_test_annotations``) does to every file of ``folder``: each
    question moves into an article of its own (one paragraph, its context, no title), its answers replaced by
    the one empty answer ``{"answer_start": 0, "text": ""}``; ``version`` is kept."""
    for path in sorted(folder.iterdir()):
        raw = json.loads(path.read_text(encoding="utf-8"))
        articles = [{"paragraphs": [{"context": paragraph["context"],
                                     "qas": [{"answers": [{"answer_start": 0, "text": ""}],
                                              "question": qa["question"], "id": qa["id"]}]}]}
                    for article in raw["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
        path.write_text(json.dumps({"data": articles, "version": raw["version"]}, ensure_ascii=False),
                        encoding="utf-8")


def write_xcopa(root: Path, languages=("en", "it", "id"), test_labels: bool = True) -> Path:
    """COPA-style records: the premise, a cause or effect question, the right and a wrong choice.
    ``test_labels=False``: the test files as XTREME's download leaves them, every label set to 0."""
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
        for split in (("train", "val", "test") if lang == "en" else ("val", "test")):
            kept = rows if split != "test" or test_labels else [{**r, "label": 0} for r in rows]
            (folder / f"{split}-{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                  for r in kept), encoding="utf-8")
    return root


# Made-up Social IQa style questions: (context, question, three answers, the right one's number, 1-based).
SIQA = [
    ("Maria left her umbrella at home and walked to work in the rain.", "How would Maria feel afterwards?",
     "wet and cold", "well rested", "proud of her garden", 1),
    ("John baked bread for his neighbours on Sunday.", "Why did John do this?",
     "to sell his car", "to be kind to them", "to learn to swim", 2),
    ("Aiko practised the piano every evening for a month.", "What will Aiko want to do next?",
     "paint the kitchen", "sleep in the garden", "play at a concert", 3),
    ("Maria found a lost wallet on the train.", "What will Maria want to do next?",
     "return it to its owner", "buy a new train", "forget her name", 1),
    ("John forgot his friend's birthday.", "How would his friend feel?",
     "hungry", "a little hurt", "very tall", 2),
    ("Aiko helped an old man carry his bags up the stairs.", "How would you describe Aiko?",
     "lazy", "forgetful", "helpful", 3),
    ("Maria studied late every night before the exam.", "Why did Maria do this?",
     "to pass the exam", "to miss the bus", "to paint her door", 1),
    ("John dropped a glass and it broke on the floor.", "What does John need to do next?",
     "sing a song", "sweep up the pieces", "call the bank", 2),
    ("Aiko won the chess game against her brother.", "How would Aiko feel afterwards?",
     "bored of bread", "afraid of water", "happy", 3),
    ("John lent his bicycle to a friend for the weekend.", "How would you describe John?",
     "generous", "sleepy", "angry", 1),
    ("Maria planted tomatoes in her garden in spring.", "What will Maria want to do later?",
     "sell her shoes", "pick the tomatoes", "move to the moon", 2),
]
SIQA_DEV = 3
"""The last three questions are the dev split, the others the train split."""


def write_siqa(root: Path, layout: str = "allenai") -> Path:
    """``siqa/`` as AllenAI's socialiqa-train-dev.zip unpacks (``layout="allenai"``: ``<split>.jsonl`` and
    ``<split>-labels.lst``), or as XTREME's download_siqa leaves it (``layout="xtreme"``:
    ``socialIQa_v1.4_{trn,dev}.jsonl``, each line with its answer letter in ``correct``)."""
    folder = root / "siqa"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", SIQA[:-SIQA_DEV]), ("dev", SIQA[-SIQA_DEV:])):
        records = [{"context": c, "question": q, "answerA": a, "answerB": b, "answerC": d}
                   for c, q, a, b, d, _ in rows]
        if layout == "xtreme":
            lines = [json.dumps({**r, "correct": "ABC"[row[-1] - 1]}) for r, row in zip(records, rows)]
            name = {"train": "socialIQa_v1.4_trn.jsonl", "dev": "socialIQa_v1.4_dev.jsonl"}[split]
            (folder / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            continue
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        (folder / f"{split}-labels.lst").write_text("".join(f"{r[-1]}\n" for r in rows), encoding="utf-8")
    return root


def write_tatoeba(root: Path, languages=("de", "fr"), sort_english: bool = False) -> Path:
    """``<lang>-en.<lang>`` and ``<lang>-en.en``, translations aligned by line; with ``sort_english`` the
    English side sorted, as XTREME's download (``tatoeba_preprocess``) writes it."""
    folder = root / "tatoeba"
    folder.mkdir(parents=True, exist_ok=True)
    english = [f"{a} {b}" for a, b, _ in nli_rows("en")]
    if sort_english:
        english = sorted(english)
    for lang in languages:
        (folder / f"{lang}-en.{lang}").write_text("".join(f"{a} {b}\n" for a, b, _ in nli_rows(lang)), encoding="utf-8")
        (folder / f"{lang}-en.en").write_text("".join(f"{s}\n" for s in english), encoding="utf-8")
    return root


# --- Mewsli-X and LAReQA -----------------------------------------------------------------------------------

# Made-up entities (ids in WikiData's Q-number style): the people and places of WORDS, and two distractors.
ENTITIES = {
    "Q9000001": ("Paris", "Paris is the capital of France. It lies on the river Seine."),
    "Q9000002": ("Berlin", "Berlin is the capital of Germany. It lies on the river Spree."),
    "Q9000003": ("Tokyo", "Tokyo is the capital of Japan. It lies on a large bay."),
    "Q9000004": ("Maria", "Maria is a painter. She was born in Lisbon."),
    "Q9000005": ("John", "John is a baker. He sells bread every morning."),
    "Q9000006": ("Aiko", "Aiko is a pianist. She plays jazz at night."),
    "Q9000007": ("Madrid", "Madrid is the capital of Spain. It has a royal palace."),
    "Q9000008": ("Oslo", "Oslo is the capital of Norway. It lies at the end of a fjord."),
}
PEOPLE_IDS, PLACE_IDS = ["Q9000004", "Q9000005", "Q9000006"], ["Q9000001", "Q9000002", "Q9000003"]


def _spans(text: str, sentences: list[str]) -> list[dict]:
    spans, start = [], 0
    for sentence in sentences:
        start = text.index(sentence, start)
        spans.append({"start": start, "end": start + len(sentence)})
        start += len(sentence)
    return spans


def _entity(qid: str, lang: str = "en") -> dict:
    title, description = ENTITIES[qid]
    return {"entity_id": qid, "title": title, "description": description,
            "sentence_spans": _spans(description, description.replace(". ", ".|").split("|")),
            "description_language": lang, "description_url": f"https://{lang}.wikipedia.org/wiki/{title}"}


def _article(lang: str, k: int, person: int, place: int, verb: str) -> tuple[dict, list[tuple[int, int, str]]]:
    """A context about one person and one place; its mentions as (start, end, entity id)."""
    w = WORDS[lang]
    first = f"{w['people'][person]} {w[verb]} {w['places'][place]}."
    second = f"{w['someone']} {w['sleeps']}."
    text = f"{first} {second}"
    context = {"document_id": f"{lang}-{k}", "document_url": f"https://{lang}.wikinews.org/wiki?curid={k}",
               "document_title": first, "language": lang, "text": text, "sentence_spans": _spans(text, [first, second])}
    who, where = w["people"][person], w["places"][place]
    at = text.index(where)
    mentions = [(0, len(who), PEOPLE_IDS[person]), (at, at + len(where), PLACE_IDS[place])]
    return context, mentions


def _mention(prefix: str, context: dict, start: int, end: int, qid: str) -> dict:
    return {"example_id": f"{prefix}-{context['document_id']}-{start}", "entity_id": qid,
            "mention_span": {"start": start, "end": end, "text": context["text"][start:end]}}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_mewslix(root: Path, languages=("en", "de", "es"), layout: str = "combined") -> Path:
    """``mewslix/`` as Mewsli-X's own script leaves it (``layout="combined"``: WikiNews mentions of all
    languages in one file per split, with their entity ids), or as XTREME's download_data.sh leaves it
    (``layout="xtreme"``: one file per split and language, test entity ids blanked, labels beside)."""
    folder = root / "mewslix"
    _jsonl(folder / "candidate_set_entities.jsonl", [_entity(q) for q in ENTITIES])
    for split, verb in (("train", "lives"), ("dev", "works")):
        rows = []
        for k, (person, place) in enumerate(itertools.product(range(3), range(3))):
            context, mentions = _article("en", k, person, place, verb)
            context = {**context, "section_title": "Life"}
            rows += [{"contextual_mention": {"context": context, "mention": _mention(split, context, *m)},
                      "entity": _entity(m[2])} for m in mentions]
        _jsonl(folder / f"wikipedia_pairs-{split}.jsonl", rows)
    articles = {split: {lang: [] for lang in languages} for split in ("dev", "test")}
    for lang in languages:
        for k, (person, place) in enumerate(itertools.product(range(3), range(3))):
            split = "dev" if k % 3 == 0 else "test"
            context, mentions = _article(lang, k, person, place, "lives" if k % 2 else "works")
            articles[split][lang].append({"context": context,
                                          "mentions": [_mention("news", context, *m) for m in mentions]})
    for split, by_lang in articles.items():
        if layout == "combined":
            _jsonl(folder / f"wikinews_mentions-{split}.jsonl", [a for rows in by_lang.values() for a in rows])
            continue
        for lang, rows in by_lang.items():
            if split == "test":
                rows = [{**a, "mentions": [{**m, "entity_id": ""} for m in a["mentions"]]} for a in rows]
            _jsonl(folder / "wikinews_mentions" / f"{split}-{lang}.jsonl", rows)
            labels = {m["example_id"]: [m["entity_id"]] for a in rows for m in a["mentions"]}
            (folder / "wikinews_labels").mkdir(exist_ok=True)
            (folder / "wikinews_labels" / f"{split}-{lang}.json").write_text(json.dumps(labels), encoding="utf-8")
    return root


def xquad_r_articles(lang: str) -> list[dict]:
    """XQuAD-R style: squad_articles' paragraphs with shared question ids across languages and the
    paragraphs' sentence breaks ([start, end) pairs) and sentences."""
    articles = squad_articles(lang, "xquad-r")
    for k, paragraph in enumerate(articles[0]["paragraphs"]):
        context = paragraph["context"]
        cut = context.index(". ") + 1
        paragraph["sentence_breaks"] = [[0, cut], [cut + 1, len(context)]]
        paragraph["sentences"] = [context[:cut], context[cut + 1:]]
        paragraph["qas"][0]["id"] = f"xquad-r-{k}"
    return articles


def write_lareqa(root: Path, languages=("en", "de", "es")) -> Path:
    """English SQuAD v1.1 (no sentence breaks, as SQuAD ships) and ``lareqa/xquad-r/<lang>.json``."""
    def put(path: Path, articles: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False), encoding="utf-8")

    put(root / "squad" / "train-v1.1.json", squad_articles("en", "train") + squad_articles("en", "train2"))
    put(root / "squad" / "dev-v1.1.json", squad_articles("en", "dev"))
    for lang in languages:
        put(root / "lareqa" / "xquad-r" / f"{lang}.json", xquad_r_articles(lang))
    return root
