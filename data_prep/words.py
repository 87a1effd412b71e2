"""Word splitting for alignment, with character spans so that words can be mapped onto subwords.

Words are runs of letters, digits and combining marks; every other non-space character (punctuation,
symbols) is a word of its own. Scripts written without spaces between words (Han, kana, Thai, Lao,
Khmer, Myanmar) fall back to one word per character, its combining marks attached: statistical
aligners then learn character-to-word links, which is the usual baseline for these languages.
"""
from __future__ import annotations

import numpy as np
import regex

from data_prep.ragged import Ragged

_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_WORD = regex.compile(
    rf"[{_UNSPACED}]\p{{M}}*"           # one character of an unspaced script
    rf"|[[\w\p{{M}}]--[{_UNSPACED}]]+"  # a run of letters/digits/marks of any other script
    rf"|[^\s]\p{{M}}*",                 # any other single character (punctuation, symbols)
    regex.V1,
)


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the words of ``text``, in order."""
    return [m.span() for m in _WORD.finditer(text)]


def split_words(text: str) -> list[str]:
    return _WORD.findall(text)


def chunk_words(texts: list[str]) -> tuple[Ragged, list[str]]:
    """The word spans of many texts (as ``word_spans`` gives them) and each text's words separated
    by spaces (eflomal's input).

    One regex pass over all texts marks where each word starts and ends, and numpy reads the spans off
    the marks: a per-word Python loop cost about as much as everything else around the aligner.
    """
    joined = "\n".join(texts)
    if joined.count("\n") != len(texts) - 1 or "\0" in joined or "\1" in joined:
        # Line breaks or the marks inside a text (cleaning removes them): the slow way.
        spans = [word_spans(t) for t in texts]
        return Ragged.of(spans), [" ".join(t[a:b] for a, b in s) for t, s in zip(texts, spans)]
    marked = _WORD.sub("\0\\g<0>\1", joined)
    codes = np.frombuffer(marked.encode("utf-32-le"), dtype=np.uint32)
    # Before word k's start mark stand k start and k end marks; before its end mark, one start more.
    two_k = 2 * np.arange(int(np.count_nonzero(codes == 0)))
    starts = np.flatnonzero(codes == 0) - two_k
    ends = np.flatnonzero(codes == 1) - two_k - 1
    text_starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    text = np.searchsorted(text_starts, starts, side="right") - 1
    spans = np.stack([starts, ends], axis=1) - text_starts[text][:, None]
    spaced = marked.replace("\0", " ").replace("\1", "").split("\n") if texts else []
    return Ragged(spans, np.bincount(text, minlength=len(texts))), spaced
