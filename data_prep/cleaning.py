"""Cleaning of raw pairs: normalise, filter, de-duplicate, and count every drop by its reason."""
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
    """Turns a stream of reader records into clean (src, tgt) pairs; ``dropped`` counts the rest."""

    def __init__(self, cfg: CleaningConfig):
        self.cfg = cfg
        self.dropped: Counter[str] = Counter()
        self.seen: set[int] = set()

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize(self.cfg.normalization, text)
        # Tabs and newlines become spaces, so a clean text is always one TSV field.
        return _SPACE.sub(" ", _CONTROL.sub("", text)).strip()

    def drop_reason(self, src: str, tgt: str) -> str | None:
        if not src or not tgt:
            return "empty"
        if self.cfg.drop_identical and src == tgt:
            return "identical"
        n_src, n_tgt = len(split_words(src)), len(split_words(tgt))
        if min(n_src, n_tgt) < self.cfg.min_words:
            return "too_short"
        if max(n_src, n_tgt) > self.cfg.max_words:
            return "too_long"
        if max(n_src, n_tgt) > self.cfg.max_length_ratio * min(n_src, n_tgt):
            return "length_ratio"
        if self.cfg.dedup:
            digest = int.from_bytes(hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=8).digest(), "little")
            if digest in self.seen:
                return "duplicate"
            self.seen.add(digest)
        return None

    def clean(self, records: Iterable[tuple[str, str] | str]) -> Iterator[tuple[str, str]]:
        for record in records:
            if isinstance(record, str):
                self.dropped[record] += 1
                continue
            src, tgt = self.normalize(record[0]), self.normalize(record[1])
            reason = self.drop_reason(src, tgt)
            if reason:
                self.dropped[reason] += 1
            else:
                yield src, tgt
