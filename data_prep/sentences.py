"""Sentence splitting for monolingual documents (``format: text`` with ``documents: true``).

Training samples are sentences, as for parallel text, so a document is cut into sentences by one
simple rule, the same for every language:

- a sentence ends after a run of sentence terminators (Unicode ``Sentence_Terminal``: . ! ? and their
  counterparts in other scripts, e.g. ؟ । ။ ። 。), optionally followed by closing quotes or brackets,
  when whitespace and then a character that is not a lowercase letter follow (``etc. and`` stays
  one sentence, ``ends. Next`` does not);
- after the full-width terminators of scripts written without spaces (。 ！ ？ ｡) a sentence ends
  even without whitespace.

The rule knows no abbreviations: ``Dr. Smith`` is split after ``Dr.``. That costs a few short
fragments, which cleaning's ``min_words`` can drop; a corpus that matters should come split already
(one sentence per line, the default of ``format: text``).
"""
from __future__ import annotations

import regex

_CLOSING = r"[\p{Pe}\p{Pf}\"']*"
_BOUNDARY = regex.compile(
    rf"(?<=\p{{Sentence_Terminal}}{_CLOSING})\s+(?=[^\p{{Ll}}])"  # terminator, space, no lowercase next
    rf"|(?<=[。！？｡]{_CLOSING})(?=\S)",                             # unspaced scripts: no space needed
    regex.V1,
)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (one paragraph or document, line breaks already joined), stripped."""
    return [s for s in (piece.strip() for piece in _BOUNDARY.split(text)) if s]
