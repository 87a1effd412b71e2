"""Cleaning of raw pairs (and monolingual sentences): normalise, filter, de-duplicate, and count every drop
by its reason."""
from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

from data_prep.config import CleaningConfig
from data_prep.words import split_words

_CONTROL = regex.compile(r"[\p{Cc}--[\t\n\r]]", regex.V1)
_SPACE = regex.compile(r"\s+")


class Cleaner:
    """Turns a stream of reader records into clean records (same arity); ``dropped`` counts the rest."""

    def __init__(self, cfg: CleaningConfig):
        self.cfg = cfg
        self.dropped: Counter[str] = Counter()
        self.seen: set[int] = set()

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize(self.cfg.normalization, text)
        # Tabs and newlines become spaces, so a clean text is always one TSV field.
        return _SPACE.sub(" ", _CONTROL.sub("", text)).strip()

    def drop_reason(self, *sides: str) -> str | None:
        """Why a record (a pair's two sides, or one monolingual sentence) is dropped, or None."""
        if not all(sides):
            return "empty"
        if self.cfg.drop_identical and len(sides) == 2 and sides[0] == sides[1]:
            return "identical"
        words = [len(split_words(side)) for side in sides]
        if min(words) < self.cfg.min_words:
            return "too_short"
        if max(words) > self.cfg.max_words:
            return "too_long"
        if max(words) > self.cfg.max_length_ratio * min(words):
            return "length_ratio"
        if self.cfg.dedup:
            digest = int.from_bytes(hashlib.blake2b("\t".join(sides).encode(), digest_size=8).digest(), "little")
            if digest in self.seen:
                return "duplicate"
            self.seen.add(digest)
        return None

    def clean(self, records: Iterable[tuple[str, ...] | str]) -> Iterator[tuple[str, ...]]:
        """Clean records of a reader: (src, tgt) pairs, or (sentence,) tuples of monolingual text."""
        for record in records:
            if isinstance(record, str):
                self.dropped[record] += 1
                continue
            sides = tuple(map(self.normalize, record))
            reason = self.drop_reason(*sides)
            if reason:
                self.dropped[reason] += 1
            else:
                yield sides
