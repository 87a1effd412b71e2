"""QA windows against the official SQuAD feature conversion, re-derived here from its rules, and the
max-context rule of its answer decoding."""
from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer
from xtreme_fixtures import QUESTION, squad_articles

from weam_ds.xtreme_r.qa_windows import decode_answers, qa_features

QUERY_CAP = 64  # squad.py's max_query_length, as run_squad.py's default sets it


@pytest.fixture(scope="module")
def tokenizer(small_dataset):
    dataset, _, _ = small_dataset
    return AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))


@pytest.fixture(scope="module")
def context() -> str:
    """Every fixture paragraph in one: a context several windows long."""
    return " ".join(p["context"] for p in squad_articles("en", "windows")[0]["paragraphs"])


def _official_windows(n_tokens: int, length: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window: squad.py moves the start by doc_stride until a window holds the end."""
    windows = [(0, min(length, n_tokens))]
    while windows[-1][0] + length < n_tokens:
        start = windows[-1][0] + doc_stride
        windows.append((start, min(length, n_tokens - start)))
    return windows


def _official_max_context(windows: list[tuple[int, int]], position: int) -> int:
    """squad.py's _check_is_max_context: the window with the largest min(left, right) + 0.01 * length."""
    best, best_score = None, None
    for j, (start, length) in enumerate(windows):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best_score is None or score > best_score:
                best, best_score = j, score
    return best


def _context_positions(window) -> list[int]:
    return [i for i, span in enumerate(window.spans) if span is not None]


def test_windows_follow_the_official_layout(tokenizer, context):
    long_question = " ".join(QUESTION["en"].format(p) for p in ("Maria", "John", "Aiko") * 8)
    questions = [QUESTION["en"].format("Maria"), long_question]
    max_length, doc_stride = 96, 16
    features = qa_features(tokenizer, questions, [context, context], max_length, doc_stride)

    read = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = read["input_ids"], read["offset_mapping"]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for k, question in enumerate(questions):
        asked = tokenizer(question, add_special_tokens=False)["input_ids"]
        kept = asked[:QUERY_CAP]
        length = max_length - len(kept) - specials
        expected = _official_windows(len(ids), length, doc_stride)
        assert len(expected) >= 3
        # The tokenizer's own special tokens around a pair, read from its encoding of this pair.
        pair = tokenizer(question, context)
        kinds = pair.sequence_ids()
        before = pair["input_ids"][:kinds.index(0)]
        between = pair["input_ids"][len(kinds) - kinds[::-1].index(0):kinds.index(1)]
        after = pair["input_ids"][len(kinds) - kinds[::-1].index(1):]

        rows = [(r, w) for r, w in zip(features.rows, features.windows) if w.example == k]
        assert len(rows) == len(expected)
        for (row, window), (start, size) in zip(rows, expected):
            body = before + kept + between + ids[start:start + size] + after
            assert row["input_ids"] == body + [tokenizer.pad_token_id] * (max_length - len(body))
            assert row["attention_mask"] == [1] * len(body) + [0] * (max_length - len(body))
            assert ("token_type_ids" in row) == ("token_type_ids" in tokenizer.model_input_names)
            where = _context_positions(window)
            assert where == list(range(len(before) + len(kept) + len(between),
                                       len(before) + len(kept) + len(between) + size))
            assert [window.spans[i] for i in where] == [tuple(o) for o in offsets[start:start + size]]
    assert len(tokenizer(long_question, add_special_tokens=False)["input_ids"]) > QUERY_CAP  # the cap was used


def test_max_context_flags_follow_the_official_definition(tokenizer, context):
    features = qa_features(tokenizer, [QUESTION["en"].format("Aiko")], [context], 48, 8)
    n_tokens = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    length = len(_context_positions(features.windows[0]))
    expected = _official_windows(n_tokens, length, 8)
    assert len(features.windows) == len(expected) >= 4
    for j, (window, (start, _)) in enumerate(zip(features.windows, expected)):
        where = _context_positions(window)
        assert [window.max_context[i] for i in where] == [_official_max_context(expected, start + i) == j
                                                          for i in range(len(where))]
        assert not any(flag for i, flag in enumerate(window.max_context) if i not in where)


def test_training_labels_point_at_the_answer_or_at_the_first_token(tokenizer, context):
    answer = {"text": "Tokyo", "answer_start": context.rindex("Tokyo")}
    features = qa_features(tokenizer, [QUESTION["en"].format("Aiko")], [context], 48, 8, answers=[[answer]])
    read = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    end = answer["answer_start"] + len(answer["text"])
    covering = [t for t, (a, b) in enumerate(read) if a < end and b > answer["answer_start"]]
    length = len(_context_positions(features.windows[0]))
    windows = _official_windows(len(read), length, 8)
    holding = [j for j, (start, size) in enumerate(windows) if start <= covering[0] and covering[-1] < start + size]
    assert holding and len(holding) < len(windows)
    for j, (row, window) in enumerate(zip(features.rows, features.windows)):
        if j in holding:
            s, e = row["start_positions"], row["end_positions"]
            assert context[window.spans[s][0]:window.spans[e][1]].strip() == "Tokyo"
        else:
            assert (row["start_positions"], row["end_positions"]) == (0, 0)
    unanswered = qa_features(tokenizer, ["?"], [context], 48, 8, answers=[[{"text": "", "answer_start": 0}]])
    assert all((r["start_positions"], r["end_positions"]) == (0, 0) for r in unanswered.rows)


def test_a_span_is_chosen_only_where_its_start_has_max_context(tokenizer, context):
    stride = 8
    features = qa_features(tokenizer, [QUESTION["en"].format("John")], [context], 48, stride)
    first, second = features.windows[0], features.windows[1]
    where = _context_positions(first)
    assert _context_positions(second)[0] == where[0]  # same question, so row position i - stride in the
    # second window holds the token at row position i of the first
    word = {i: context[slice(*first.spans[i])].strip() for i in where}
    shared = next(i for i in where if i - stride >= where[0] and not first.max_context[i]
                  and second.max_context[i - stride])
    own = next(i for i in where if first.max_context[i] and word[i] and word[i] != word[shared])

    start = np.full((len(features.rows), 48), -50.0)
    end = np.full((len(features.rows), 48), -50.0)
    start[0, shared] = end[0, shared] = 10.0  # the best logits, in a window that is not its max context
    start[0, own] = end[0, own] = 4.0
    one = {"max_answer_length": 1}  # single tokens only: (own, shared) would be a valid span too
    assert decode_answers(features, start, end, [context], **one) == [word[own]]
    start[1, shared - stride] = end[1, shared - stride] = 9.0  # the same token where it has max context
    assert decode_answers(features, start, end, [context], **one) == [word[shared]]

    ahead = np.full((len(features.rows), 48), -50.0)
    ahead[:, 0] = 20.0  # the classification token and the question lead the n-best lists
    ahead[:, 1:3] = 15.0
    assert decode_answers(features, ahead, ahead, [context], n_best=3) == [""]
    assert decode_answers(features, ahead, ahead, [context]) != [""]

    first_token, sixth_token = np.full_like(start, -50.0), np.full_like(end, -50.0)
    first_token[0, where[0]] = sixth_token[0, where[5]] = 10.0
    six = context[first.spans[where[0]][0]:first.spans[where[5]][1]].strip()
    assert decode_answers(features, first_token, sixth_token, [context]) == [six]
    assert decode_answers(features, first_token, sixth_token, [context], max_answer_length=5) != [six]


def test_bad_arguments_are_named(tokenizer, context):
    with pytest.raises(ValueError, match="doc_stride 40"):
        qa_features(tokenizer, ["Where?"], [context], 48, 40)
    with pytest.raises(ValueError, match="1 questions, 2 contexts"):
        qa_features(tokenizer, ["Where?"], [context, context], 48, 8)
    features = qa_features(tokenizer, ["Where?"], [context], 48, 8)
    with pytest.raises(ValueError, match="windows"):
        decode_answers(features, np.zeros((1, 48)), np.zeros((1, 48)), [context])
