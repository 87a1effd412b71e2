"""Word splitting for alignment, with character spans so that words can be mapped onto subwords.

Words are runs of letters, digits and combining marks; every other non-space character (punctuation,
symbols) is a word of its own. Scripts written without spaces between words (Han, kana, Thai, Lao,
Khmer, Myanmar) fall back to one word per character, its combining marks attached: statistical
aligners then learn character-to-word links, which is the usual baseline for these languages.
"""
from __future__ import annotations

import regex

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
