"""Extractive QA as XTREME's SQuAD features lay it out: context windows, their labels, and answer decoding.

The official conversion (``third_party/processors/squad.py``, ``squad_convert_example_to_features``; values
from ``scripts/train_qa.sh``: ``max_seq_length`` 384, ``doc_stride`` 128) builds, per question:

- the question's tokens, cut to ``max_query_length`` (64);
- windows of the context's tokens, each at most ``L = max_length - len(question) - specials`` long, the
  first at token 0 and each next one ``doc_stride`` tokens after the previous one, until a window reaches
  the context's end (so ``doc_stride`` is the step between windows, not the overlap between them);
- per window ``[specials] question [specials] window [specials]``, padded to ``max_length``;
- for training, the answer's first and last token in a window that holds all of it, else (0, 0): the
  classification token, which the model learns to point at when the window lacks the answer.

A context token lies in several windows; its "max context" window is the one where
``min(tokens to its left, tokens to its right) + 0.01 * window length`` is largest (the first such window on
a tie). The official prediction (``run_squad.py`` → ``compute_predictions_logits``) takes the ``n_best``
(20) highest start and end logits of each window and keeps a pair only if both tokens are in the context,
``end >= start``, it spans at most ``max_answer_length`` (30) tokens, and the start token has its max
context in that window; the pair with the highest start + end logit over the question's windows wins.

weam-ds differs in how it finds the tokens, not in the layout: the official code splits the context at
whitespace and then each word into subwords, mapping answers back through the words; weam-ds tokenizes the
whole context once with a fast tokenizer and maps tokens to characters with its offsets, so an answer's
tokens are those that overlap its characters. Where no span is valid the answer is ``""`` (the official
code writes the word ``empty``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Span = tuple[int, int]


class Window(NamedTuple):
    """One row's place in its question: which example, and for every row position the context characters
    its token covers (``None`` outside the context) and whether this window is the token's max context."""

    example: int
    spans: list[Span | None]
    max_context: list[bool]


@dataclass
class QAFeatures:
    """The model's rows (``input_ids``, ``attention_mask``, ``token_type_ids`` where the tokenizer makes
    them, and ``start_positions``/``end_positions`` when answers were given) and, row by row, their windows."""

    rows: list[dict]
    windows: list[Window]


def qa_features(tokenizer, questions: list[str], contexts: list[str], max_length: int, doc_stride: int,
                max_query_length: int = 64, answers: list | None = None) -> QAFeatures:
    """The official window layout for each (question, context) pair. ``answers``: per example its gold
    answers as SQuAD files hold them (a list of ``{"text", "answer_start"}``; the first is the training
    target, as the official reader takes it), or one such dict; an example whose answer is empty or lies
    on no token is labelled (0, 0) in every window."""
    if not tokenizer.is_fast:
        raise ValueError("qa_features needs a fast tokenizer: its offsets map tokens to context characters")
    if len(questions) != len(contexts) or (answers is not None and len(answers) != len(contexts)):
        raise ValueError(f"{len(questions)} questions, {len(contexts)} contexts"
                         + ("" if answers is None else f" and {len(answers)} answers") + ": counts differ")
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be at least 1, not {doc_stride}")
    layout = _PairLayout(tokenizer)
    asked = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    read = tokenizer(list(contexts), add_special_tokens=False, return_offsets_mapping=True)
    rows, windows = [], []
    for k, (question, ids, offsets) in enumerate(zip(asked, read["input_ids"], read["offset_mapping"])):
        question = question[:max_query_length]
        length = max_length - len(question) - layout.n_special
        if length < 1 or doc_stride > length:
            raise ValueError(f"question {k}: max_length {max_length} leaves {max(length, 0)} context tokens per "
                             f"window beside {len(question)} question tokens and {layout.n_special} special "
                             f"tokens, fewer than doc_stride {doc_stride}")
        starts = _window_starts(len(ids), length, doc_stride)
        lengths = [min(length, len(ids) - s) for s in starts]
        best = _max_context_windows(starts, lengths, len(ids))
        target = _answer_tokens(offsets, answers[k]) if answers is not None else None
        for j, (start, size) in enumerate(zip(starts, lengths)):
            row, first = layout.row(question, ids[start:start + size], max_length)
            spans: list[Span | None] = [None] * max_length
            flags = [False] * max_length
            for i in range(size):
                spans[first + i] = tuple(offsets[start + i])
                flags[first + i] = best[start + i] == j
            if answers is not None:
                inside = target is not None and start <= target[0] and target[1] < start + size
                row["start_positions"] = target[0] - start + first if inside else 0
                row["end_positions"] = target[1] - start + first if inside else 0
            rows.append(row)
            windows.append(Window(k, spans, flags))
    return QAFeatures(rows, windows)


def _window_starts(n_tokens: int, length: int, doc_stride: int) -> list[int]:
    """Where each window starts: 0, doc_stride, 2·doc_stride, … until one reaches the last token. An empty
    context has no window (the official loop makes none either)."""
    starts = []
    while len(starts) * doc_stride < n_tokens:
        starts.append(len(starts) * doc_stride)
        if starts[-1] + length >= n_tokens:
            break
    return starts


def _max_context_windows(starts: list[int], lengths: list[int], n_tokens: int) -> list[int]:
    """For each context token, the window that gives it the most context on its shorter side (the
    official score ``min(left, right) + 0.01 * length``; the earlier window on a tie)."""
    best, score = [-1] * n_tokens, [float("-inf")] * n_tokens
    for j, (start, size) in enumerate(zip(starts, lengths)):
        end = start + size - 1
        for p in range(start, end + 1):
            value = min(p - start, end - p) + 0.01 * size
            if value > score[p]:
                best[p], score[p] = j, value
    return best


def decode_answers(features: QAFeatures, start_logits, end_logits, contexts: list[str], n_best: int = 20,
                   max_answer_length: int = 30) -> list[str]:
    """Each example's answer: the valid span (see the module docstring) with the highest start + end logit
    over its windows, as context text; ``""`` where no window has a valid span."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if len(start_logits) != len(features.windows) or len(end_logits) != len(features.windows):
        raise ValueError(f"{len(start_logits)} start and {len(end_logits)} end logit rows for "
                         f"{len(features.windows)} windows")
    best: dict[int, tuple[float, Span, Span]] = {}
    for window, starts, ends in zip(features.windows, start_logits, end_logits):
        positions = len(window.spans)
        for s in _highest(starts[:positions], n_best):
            if not window.max_context[s]:  # also False outside the context
                continue
            for e in _highest(ends[:positions], n_best):
                if window.spans[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                value = float(starts[s] + ends[e])
                if window.example not in best or value > best[window.example][0]:
                    best[window.example] = (value, window.spans[s], window.spans[e])
    answers = []
    for k, context in enumerate(contexts):
        if k not in best:
            answers.append("")
            continue
        _, first, last = best[k]
        answers.append(context[first[0]:last[1]].strip())
    return answers


def _highest(logits: np.ndarray, n: int) -> np.ndarray:
    """The positions of the ``n`` highest logits, highest first, the earlier position on a tie."""
    return np.argsort(-logits, kind="stable")[:n]


def _answer_tokens(offsets: list[Span], answer) -> tuple[int, int] | None:
    """The first and last context token overlapping the answer's characters, or None."""
    first = answer if isinstance(answer, dict) else (answer[0] if answer else None)
    if not first or not first.get("text"):
        return None
    a = first["answer_start"]
    b = a + len(first["text"])
    inside = [t for t, (s, e) in enumerate(offsets) if s < b and e > a]
    return (inside[0], inside[-1]) if inside else None


class _PairLayout:
    """Where the tokenizer puts its special tokens around a (question, context) pair, read once from the
    encoding of a probe pair, so rows are built from token ids in the tokenizer's own template (``<s> q
    </s></s> c </s>`` for XLM-R, ``[CLS] q [SEP] c [SEP]`` for BERT) whatever its class."""

    def __init__(self, tokenizer):
        probe = tokenizer("a", "a", return_token_type_ids=True)
        self.template: list[tuple[int | None, int | None, int]] = []  # (special id | None, segment | None, type)
        for token, segment, kind in zip(probe["input_ids"], probe.sequence_ids(), probe["token_type_ids"]):
            if segment is None:
                self.template.append((token, None, kind))
            elif not self.template or self.template[-1][1] != segment:
                self.template.append((None, segment, kind))
        if [seg for _, seg, _ in self.template if seg is not None] != [0, 1]:
            raise ValueError("the tokenizer's pair encoding does not hold a question followed by a context")
        self.n_special = sum(seg is None for _, seg, _ in self.template)
        self.pad = tokenizer.pad_token_id
        self.with_types = "token_type_ids" in tokenizer.model_input_names

    def row(self, question: list[int], window: list[int], max_length: int) -> tuple[dict, int]:
        """The padded row, and the position of the window's first token in it."""
        ids, types, first = [], [], 0
        for token, segment, kind in self.template:
            part = [token] if segment is None else (question if segment == 0 else window)
            if segment == 1:
                first = len(ids)
            ids += part
            types += [kind] * len(part)
        pad = max_length - len(ids)
        row = {"input_ids": ids + [self.pad] * pad, "attention_mask": [1] * len(ids) + [0] * pad}
        if self.with_types:
            row["token_type_ids"] = types + [0] * pad
        return row, first
