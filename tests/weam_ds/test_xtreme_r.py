"""The XTREME / XTREME-R scorer against hand-computed values, its file contract, Tatoeba-style retrieval
on the session dataset, and the Mewsli-X / LAReQA readers and dual-encoder loss."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtreme_fixtures import save_tiny_model, write_mewslix

from weam_ds.presets import build_model
from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.__main__ import main
from weam_ds.xtreme_r.dual_encoder import DualEncoder
from weam_ds.xtreme_r.readers import (entity_text, mention_query, mewslix_files, read_squad_sentences, read_wikinews,
                                      read_xquad_r, sentence_breaks)
from weam_ds.xtreme_r.score import ScoreError, read_tags, score, score_task
from weam_ds.xtreme_r.tasks import LANGUAGES, suffix
from weam_ds.xtreme_r.tatoeba import evaluate_dataset, held_out_pairs

# --- metrics by hand -----------------------------------------------------------------------------------


def test_accuracy_and_bucc():
    assert metrics.accuracy(["1", "0", "2", "2"], ["1", "1", "2", "0"]) == {"accuracy": 50.0}
    gold = ["de-1\ten-1", "de-2\ten-2", "de-3\ten-3"]
    found = ["de-1\ten-1", "de-2\ten-9"]
    r = metrics.bucc_f1(gold, found)
    assert r["precision"] == pytest.approx(50.0) and r["recall"] == pytest.approx(100 / 3)
    assert r["f1"] == pytest.approx(100 * 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert metrics.bucc_f1(gold, ["x\ty"]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def _squad(*qas):
    return [{"paragraphs": [{"context": "", "qas": [{"id": i, "answers": [{"text": t} for t in golds]}
                                                     for i, golds in qas]}]}]


def test_squad_em_f1_with_several_golds_and_a_missing_answer():
    data = _squad(("q1", ["The Eiffel Tower", "Eiffel tower!"]), ("q2", ["in 1889"]), ("q3", ["Paris"]))
    # q1: normalises to "eiffel tower" = exact; q2: "1889" vs "in 1889": P 1, R 1/2; q3 unanswered.
    r = metrics.squad(data, {"q1": "eiffel  Tower.", "q2": "1889"})
    assert r["exact_match"] == pytest.approx(100 / 3)
    assert r["f1"] == pytest.approx(100 * (1 + 2 * 1 * 0.5 / 1.5 + 0) / 3)
    assert metrics.squad(data, {"q1": "", "q2": "", "q3": ""}) == {"exact_match": 0.0, "f1": 0.0}
    assert metrics.squad_normalize("An apple, the pear and A fig.") == "apple pear and fig"


def test_mlqa_normalisation_per_language():
    assert metrics.mlqa_normalize("¡El niño, los gatos!", "es") == "niño gatos"
    assert metrics.mlqa_normalize("Der Hund und die Katze «zu Hause»", "de") == "hund und katze zu hause"
    assert metrics.mlqa_normalize("The «quick» fox", "en") == "quick fox"
    assert metrics.mlqa_normalize("những con mèo của tôi", "vi") == "con mèo tôi"
    # Arabic: the two letters ال go wherever they are, not only at the start of a word.
    assert metrics.mlqa_normalize("الكتاب جميل", "ar") == "كتاب جميل"
    assert metrics.mlqa_normalize("قالوا", "ar") == "ق وا"
    # Chinese: each ideograph is a token, runs of other characters are split on spaces.
    assert metrics.mlqa_normalize("北京是abc def首都。", "zh") == "北 京 是 abc def 首 都"
    assert metrics.mlqa_normalize("नमस्ते, दुनिया!", "hi") == "नमस्ते दुनिया"
    with pytest.raises(metrics.MetricError, match="'fr'"):
        metrics.mlqa_normalize("le chat", "fr")


def test_mlqa_scores_with_language_aware_tokens():
    data = _squad(("a", ["北京大学"]))
    r = metrics.mlqa(data, {"a": "北京"}, "zh")  # 2 of 4 characters: P 1, R 1/2
    assert r["exact_match"] == 0.0 and r["f1"] == pytest.approx(100 * 2 * 0.5 / 1.5)
    r = metrics.mlqa(_squad(("b", ["los perros"])), {"b": "perros"}, "es")
    assert r == {"exact_match": 100.0, "f1": 100.0}


def test_tagging_uses_seqeval_chunks_including_repairs():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    # An I- tag with no B- before it opens a chunk in seqeval's default mode: I-PER I-PER = one PER.
    assert metrics.tagging(gold, [["I-PER", "I-PER", "O", "B-LOC"]])["f1"] == pytest.approx(100.0)
    r = metrics.tagging(gold, [["B-PER", "O", "O", "B-LOC"]])
    assert r["precision"] == pytest.approx(50.0) and r["recall"] == pytest.approx(50.0)
    # UD-POS tags have no prefix; seqeval's chunking of them is what the official numbers use.
    pos = metrics.tagging([["NOUN", "VERB", "NOUN"]], [["NOUN", "VERB", "ADJ"]])
    assert 0 < pos["f1"] < 100


def test_mewslix_map_at_20():
    labels = {"e1": [" Q1 "], "e2": ["Q2"], "e3": ["Q3"]}
    predictions = {"e1": ["Q1", "Q9"], "e2": ["Q7", "Q8", "Q2"], "e3": ["Q0"] * 20 + ["Q3"]}
    assert metrics.mewslix_map20(labels, predictions)["map@20"] == pytest.approx(100 * (1 + 1 / 3 + 0) / 3)


def test_lareqa_map_at_20_counts_every_relevant_answer():
    labels = {"q1": ["a", "b"], "q2": ["c"], "q3": ["d", "e"]}
    predictions = {"q1": ["x", "a", "a", "b"], "q2": ["y", "c"], "q3": ["z"] * 20 + ["d"]}
    # q1: hits at ranks 2 and 4 (the repeated "a" counts once): (1/2 + 2/4) / 2; q2: 1/2; q3: outside the 20.
    assert metrics.lareqa_map20(labels, predictions)["map@20"] == pytest.approx(100 * (0.5 + 0.5 + 0) / 3)
    # With one relevant id it is Mewsli-X's reciprocal rank.
    single, guesses = {"e1": ["Q1"], "e2": ["Q2"], "e3": ["Q3"]}, {"e1": ["Q0", "Q1"], "e2": ["Q2"]}
    assert metrics.lareqa_map20(single, guesses) == metrics.mewslix_map20(single, guesses)


# --- the scorer's contract ---------------------------------------------------------------------------


def _write(root: Path, task: str, lang: str, suffix: str, text: str) -> None:
    path = root / task / f"test-{lang}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _benchmark(tmp_path: Path, version: str, tasks: list[str]) -> tuple[Path, Path]:
    """Prediction and label folders for ``tasks``: per language, a known share of correct answers."""
    pred, gold = tmp_path / "pred", tmp_path / "gold"
    for task in tasks:
        for k, lang in enumerate(LANGUAGES[version][task]):
            right = k % 4  # 0..3 of 4 examples right
            if task in ("xnli", "pawsx", "tatoeba"):
                _write(gold, task, lang, "tsv", "a\nb\nc\nd\n")
                _write(pred, task, lang, "tsv", "".join((x if i < right else "z") + "\n" for i, x in enumerate("abcd")))
            elif task == "xcopa":
                _write(gold, task, lang, "jsonl", "".join(json.dumps({"label": i % 2}) + "\n" for i in range(4)))
                _write(pred, task, lang, "jsonl", "".join(json.dumps({"label": i % 2 if i < right else 9}) + "\n"
                                                          for i in range(4)))
            elif task in ("udpos", "panx"):
                _write(gold, task, lang, "tsv", "B-PER\nI-PER\n\nB-LOC\n")
                _write(pred, task, lang, "tsv", "B-PER\nI-PER\n\nO\n" if right else "O\nO\n\nO\n")
            elif task in ("xquad", "mlqa", "tydiqa"):
                _write(gold, task, lang, "json", json.dumps({"data": _squad(*[(f"q{i}", ["yes"]) for i in range(4)])}))
                _write(pred, task, lang, "json", json.dumps({f"q{i}": "yes" if i < right else "no" for i in range(4)}))
            elif task == "mewslix":
                _write(gold, task, lang, "json", json.dumps({f"e{i}": [f"Q{i}"] for i in range(4)}))
                _write(pred, task, lang, "json", json.dumps({f"e{i}": [f"Q{i}" if i < right else "Q9"]
                                                             for i in range(4)}))
            elif task == "bucc2018":
                _write(gold, task, lang, "tsv", "a\tb\nc\td\n")
                _write(pred, task, lang, "tsv", "a\tb\n" if right else "x\ty\n")
    return pred, gold


def test_xtreme_r_scores_have_the_official_structure(tmp_path):
    tasks = [t for t, langs in LANGUAGES["xtreme-r"].items() if langs]
    pred, gold = _benchmark(tmp_path, "xtreme-r", tasks)
    scores = score(pred, gold, "xtreme-r")
    # Categories first (no all_task: lareqa has no languages), then the tasks in the scorer's order.
    assert list(scores)[:5] == ["classification", "tagging", "qa", "retrieval", "multi_choice"]
    assert "all_task" not in scores and list(scores)[5:] == tasks
    xnli = scores["xnli"]
    expected = {lang: 100 * (k % 4) / 4 for k, lang in enumerate(LANGUAGES["xtreme-r"]["xnli"])}
    assert xnli["accuracy"] == pytest.approx(expected)
    assert xnli["avg_accuracy"] == pytest.approx(sum(expected.values()) / len(expected))
    assert xnli["avg_metric"] == xnli["avg_accuracy"]
    assert set(scores["panx"]) == {"f1", "precision", "recall", "avg_f1", "avg_precision", "avg_recall", "avg_metric"}
    qa = scores["mlqa"]
    assert qa["avg_metric"] == pytest.approx((qa["avg_exact_match"] + qa["avg_f1"]) / 2)
    assert scores["mewslix"]["avg_metric"] == scores["mewslix"]["avg_map@20"]
    assert scores["classification"] == pytest.approx((xnli["avg_metric"] + scores["xcopa"]["avg_metric"]) / 2)
    assert scores["multi_choice"] == scores["xcopa"]["avg_metric"]


def test_xtreme_all_task_and_cli(tmp_path):
    pred, gold = _benchmark(tmp_path, "xtreme", list(LANGUAGES["xtreme"]))
    out = tmp_path / "scores.json"
    run = subprocess.run([sys.executable, "-m", "weam_ds.xtreme_r", "score", "--predictions", str(pred), "--labels",
                          str(gold), "--version", "xtreme", "--output", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    scores = json.loads(out.read_text())
    assert list(scores)[0] == "all_task"
    assert scores["all_task"] == pytest.approx(sum(scores[t]["avg_metric"] for t in LANGUAGES["xtreme"]) / 9)
    retrieval = (scores["bucc2018"]["avg_metric"] + scores["tatoeba"]["avg_metric"]) / 2
    assert scores["retrieval"] == pytest.approx(retrieval)


def test_missing_and_mismatched_files_are_errors_naming_them(tmp_path):
    pred, gold = _benchmark(tmp_path, "xtreme-r", ["xnli"])
    (pred / "xnli" / "test-sw.tsv").unlink()
    with pytest.raises(ScoreError, match="pred/xnli/test-sw.tsv"):
        score(pred, gold, "xtreme-r")
    _write(pred, "xnli", "sw", "tsv", "a\n")
    with pytest.raises(ScoreError, match="test-sw.tsv has 1 examples but .*gold/xnli/test-sw.tsv has 4"):
        score(pred, gold, "xtreme-r")
    run = subprocess.run([sys.executable, "-m", "weam_ds.xtreme_r", "score", "--predictions", str(pred), "--labels",
                          str(gold), "--output", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and not (tmp_path / "s.json").exists()


def _line(n: int, text: bytes):
    """Damage: line ``n`` (from 1) replaced by ``text``."""
    def damage(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        lines[n - 1] = text
        return b"\n".join(lines)
    return damage


def _json(change):
    """Damage: the file's JSON value replaced by ``change(value)``."""
    return lambda raw: json.dumps(change(json.loads(raw))).encode()


def _set(*keys_and_value):
    """Damage: the JSON value at ``keys`` replaced."""
    *keys, value = keys_and_value

    def change(data):
        inner = data
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value
        return data
    return _json(change)


LATIN1 = "Größe".encode("latin-1")
QAS = ("data", 0, "paragraphs", 0, "qas")
# (task, language, folder, damage, what the message names besides the file)
BAD_FILES = {
    "predictions not UTF-8": ("xnli", "de", "pred", _line(3, LATIN1), r":3: not UTF-8"),
    "labels not UTF-8": ("udpos", "de", "gold", _line(2, LATIN1), r":2: not UTF-8"),
    "QA predictions not UTF-8": ("xquad", "de", "pred", lambda raw: raw.replace(b"yes", LATIN1, 1), r":1: not UTF-8"),
    "one tag too few": ("panx", "de", "pred", lambda raw: raw.replace(b"I-PER\n", b"", 1),
                        r": sentence 1 has 1 tags but sentence 1 of \S+/gold/panx/test-de.tsv has 2"),
    "one tag too many": ("udpos", "fr", "pred", lambda raw: raw + b"O\n",
                         r": sentence 2 has 2 tags but sentence 2 of \S+/gold/udpos/test-fr.tsv has 1"),
    "QA answer a number": ("xquad", "de", "pred", _set("q2", 2), r": question q2: the answer is a number"),
    "QA answer a list": ("mlqa", "de", "pred", _set("q1", ["yes"]), r": question q1: the answer is a list"),
    "QA predictions a list": ("tydiqa", "en", "pred", _json(lambda answers: list(answers.values())),
                              r": expected an object mapping question ids to answer texts, got a list"),
    "ranked ids a string": ("mewslix", "de", "pred", _set("e1", "Q1"),
                            r": example e1: expected a list of ids, got a string"),
    "ranked ids numbers": ("mewslix", "de", "pred", _set("e3", [3]), r": example e3: id 3 is a number"),
    "Mewsli-X predictions a list": ("mewslix", "ar", "pred", _json(lambda ids: list(ids.values())),
                                    r": expected an object mapping example ids to lists of ids, got a list"),
    "Mewsli-X label empty": ("mewslix", "de", "gold", _set("e2", []), r": example e2: no ids"),
    "Mewsli-X label a string": ("mewslix", "de", "gold", _set("e0", "Q0"), r": example e0: expected a list of ids"),
    "XCOPA line not an object": ("xcopa", "it", "pred", _line(2, b"[1]"),
                                 r":2: expected an object with a 'label', got a list"),
    "XCOPA label a string": ("xcopa", "it", "gold", _line(1, b'{"label": "0"}'), r':1: label "0" is a string'),
    "QA labels not SQuAD": ("xquad", "de", "gold", _json(lambda data: {"q0": "yes"}), r": expected a SQuAD dataset"),
    "QA label without answers": ("mlqa", "de", "gold", _set(*QAS, 3, "answers", "yes"),
                                 r": question q3: expected 'answers', a non-empty list"),
    "QA label without id": ("tydiqa", "en", "gold", _set(*QAS, 1, "id", 1),
                            r": article 1, paragraph 1, question 2: expected an object with a string 'id'"),
}


@pytest.mark.parametrize("task, lang, folder, damage, names", BAD_FILES.values(), ids=BAD_FILES)
def test_bad_files_are_one_line_errors_naming_file_and_example(tmp_path, capsys, task, lang, folder, damage, names):
    pred, gold = _benchmark(tmp_path, "xtreme-r", [task])
    path = {"pred": pred, "gold": gold}[folder] / task / f"test-{lang}.{suffix(task)}"
    path.write_bytes(damage(path.read_bytes()))
    out = tmp_path / "scores.json"
    code = main(["score", "--predictions", str(pred), "--labels", str(gold), "--version", "xtreme-r", "--output",
                 str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith(f"weam_ds.xtreme_r: error: {path}") and err.count("\n") == 1, err
    assert re.search(re.escape(str(path)) + names, err), err


def test_lareqa_ids_must_be_lists(tmp_path):
    """LAReQA is scored by ``run`` alone (the official scorer lists no languages for it): a string of ids
    would be read character by character."""
    pred, gold = tmp_path / "pred", tmp_path / "gold"
    _write(gold, "lareqa", "de", "json", json.dumps({"q1_de": ["en_1_0", "de_1_0"]}))
    _write(pred, "lareqa", "de", "json", json.dumps({"q1_de": "en_1_0"}))
    with pytest.raises(ScoreError, match="pred/lareqa/test-de.json: example q1_de: expected a list of ids"):
        score_task("lareqa", ["de"], pred, gold)


def test_tag_files_keep_a_last_sentence_without_blank_line(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("B-PER\nO\n\nB-LOC\n\nO\nB-ORG")
    assert read_tags(path) == [["B-PER", "O"], ["B-LOC"], ["O", "B-ORG"]]


# --- Tatoeba-style retrieval on the project's own test pairs ---------------------------------------------


def test_tatoeba_retrieval_in_both_directions(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    model_dir = save_tiny_model(dataset, tmp_path / "model")
    results = evaluate_dataset(model_dir, dataset, tmp_path / "eval", batch_size=32)
    pairs = held_out_pairs(dataset)
    langs = sorted(lang for lang, _, _ in pairs.values())
    assert langs == ["fr", "ja"]
    for direction in ("xx2en", "en2xx"):
        folder = tmp_path / "eval" / f"tatoeba-{direction}"
        for lang in langs:
            predicted = (folder / "predictions" / "tatoeba" / f"test-{lang}.tsv").read_text().split()
            gold = (folder / "labels" / "tatoeba" / f"test-{lang}.tsv").read_text().split()
            assert len(predicted) == len(gold) == 60 and gold == [str(i) for i in range(60)]
            hits = sum(p == g for p, g in zip(predicted, gold))
            assert results[direction]["tatoeba"]["accuracy"][lang] == pytest.approx(100 * hits / 60)
        written = json.loads((folder / "scores.json").read_text())
        assert written["tatoeba"]["avg_accuracy"] == pytest.approx(results[direction]["tatoeba"]["avg_accuracy"])


def test_retrieval_takes_the_nearest_target_by_cosine():
    from weam_ds.xtreme_r.tatoeba import retrieve

    targets = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    queries = torch.nn.functional.normalize(torch.tensor([[0.1, 1.0], [1.0, 0.9], [1.0, -0.2]]), dim=-1)
    assert retrieve(queries, targets) == [1, 2, 0]



# --- Mewsli-X and LAReQA: readers and the dual encoder ---------------------------------------------------


def _spans_of(text: str, *sentences: str) -> list[dict]:
    return [{"start": text.index(x), "end": text.index(x) + len(x)} for x in sentences]


def test_mention_query_marks_the_mention_in_its_sentence():
    text = "Rain fell. The {old} mayor of Oslo\nspoke today. Then he left."
    context = {"text": text, "sentence_spans": _spans_of(text, "Rain fell.", "The {old} mayor of Oslo\nspoke today.",
                                                          "Then he left.")}
    at = text.index("Oslo")
    mention = {"example_id": "m1", "entity_id": "Q1", "mention_span": {"start": at, "end": at + 4, "text": "Oslo"}}
    # One sentence of context, braces in the text escaped, the mention in front, on one line.
    assert mention_query(context, mention) == "Oslo: The (old) mayor of { Oslo } spoke today."
    # A mention across a sentence break keeps the whole text.
    across = {"example_id": "m2", "entity_id": "Q2", "mention_span": {"start": 5, "end": 14, "text": text[5:14]}}
    assert mention_query(context, across) == ("fell. The: Rain { fell. The } (old) mayor of Oslo spoke today. "
                                              "Then he left.")
    description = "Oslo is a city.\nIt is in Norway. (Trailing notes"
    entity = {"entity_id": "Q585", "description": description,
              "sentence_spans": _spans_of(description, "Oslo is a city.", "It is in Norway.")}
    assert entity_text(entity) == "Oslo is a city. It is in Norway."


def test_wikinews_mentions_from_either_download_layout(tmp_path):
    combined = write_mewslix(tmp_path / "a", languages=("en", "de"))
    files = mewslix_files(combined, ["de"])
    assert files["wikinews-test"].name == "wikinews_mentions-test.jsonl"
    tests = read_wikinews(files, "test", ["de"])  # the file holds en and de: de's mentions only
    assert list(tests) == ["de"] and tests["de"].labelled()
    assert all(q.startswith("news-de-") for q in tests["de"].query_ids)

    split = write_mewslix(tmp_path / "b", languages=("en", "de"), layout="xtreme")
    files = mewslix_files(split, ["en", "de"])
    assert files["wikinews-dev-de"] == split / "mewslix" / "wikinews_mentions" / "dev-de.jsonl"
    assert not any(s.labelled() for s in read_wikinews(files, "test", ["en", "de"]).values())  # ids blanked
    dev = read_wikinews(files, "dev", ["en", "de"])
    labels = json.loads((split / "mewslix" / "wikinews_labels" / "dev-de.json").read_text())
    assert dev["de"].gold == labels and dev["de"].query_ids == list(labels)
    with pytest.raises(ScoreError, match="dev-de.jsonl: no dev mentions in es"):
        read_wikinews({"wikinews-dev": files["wikinews-dev-de"]}, "dev", ["de", "es"])


def test_sentence_breaks():
    text = 'He said "Stop." Then he left!  東京は大きい。本当に？ End'
    assert [text[s:e] for s, e in sentence_breaks(text)] == ['He said "Stop."', "Then he left!", "東京は大きい。",
                                                             "本当に？", "End"]
    assert sentence_breaks("No stop at all") == [(0, 14)] and sentence_breaks("") == []


def test_xquad_r_questions_are_relevant_to_their_answer_in_every_language(tmp_path):
    def paragraph(context: str, answers: list[tuple[str, str]], breaks: list[list[int]]) -> dict:
        return {"context": context, "sentence_breaks": breaks,
                "qas": [{"id": qid, "question": f"{qid}?", "answers": [{"text": a, "answer_start": context.index(a)}]}
                        for qid, a in answers]}

    en = "Ana rows. Ben sails far."
    de = "Ana rudert. Ben segelt weit."
    for lang, context in (("en", en), ("de", de)):
        cut = context.index(". ") + 1
        # q3's answer starts at the space between the sentences: in no sentence, so it is left out.
        answers = [("q1", "Ana"), ("q2", "Ben"), ("q3", " Ben")]
        data = {"data": [{"paragraphs": [paragraph(context, answers, [[0, cut], [cut + 1, len(context)]])]}]}
        path = tmp_path / "lareqa" / "xquad-r" / f"{lang}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data), encoding="utf-8")
    tests, ids, texts = read_xquad_r(tmp_path, ["en", "de"])
    assert ids == ["en_1_0", "en_1_1", "de_1_0", "de_1_1"]
    assert texts[1] == f"Ben sails far. {en}"  # the sentence, then its paragraph
    assert tests["de"].query_ids == ["q1_de", "q2_de"] and tests["de"].queries == ["q1?", "q2?"]
    assert tests["de"].gold == {"q1_de": ["en_1_0", "de_1_0"], "q2_de": ["en_1_1", "de_1_1"]}
    assert tests["en"].candidates == [] and tests["en"].labelled()

    # SQuAD ships no sentence breaks: they are found; the English set keeps its own pool for training.
    squad = tmp_path / "train.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": en, "qas": [
        {"id": "s1", "question": "Who sails?", "answers": [{"text": "Ben", "answer_start": en.index("Ben")}]}]}]}]}))
    found = read_squad_sentences(squad, "en")
    assert found.candidate_ids == ["en_1_0", "en_1_1"] and found.gold == {"s1_en": ["en_1_1"]}
    assert found.training_pairs() == [("Who sails?", f"Ben sails far. {en}", "en_1_1")]


def test_dual_encoder_loss_takes_in_batch_negatives_but_not_duplicates():
    torch.manual_seed(0)
    model = DualEncoder(build_model("tiny", 100).base_model).eval()  # eval: no dropout
    queries, answers = torch.randint(5, 100, (4, 6)), torch.randint(5, 100, (4, 6))
    mask = torch.ones_like(queries)
    keys = torch.tensor([0, 0, 1, 2])  # the first two candidates are one item
    with torch.no_grad():
        logits = 100 * model.embed(queries, mask) @ model.embed(answers, mask).T
    logits[0, 1] = logits[1, 0] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert model(queries, mask, answers, mask, keys)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # One item four times leaves no negatives: nothing to learn.
    assert model(queries, mask, answers, mask, torch.zeros(4, dtype=torch.long))["loss"].item() == pytest.approx(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model(queries, mask, answers, mask, keys)["loss"]
    for _ in range(30):
        loss = model(queries, mask, answers, mask, keys)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item() / 10
