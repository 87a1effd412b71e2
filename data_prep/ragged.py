"""Per-sentence lists of integer pairs (word spans, token offsets, links) stored as two flat arrays."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import numpy as np


@dataclass
class Ragged:
    """Sentence k's rows are ``values[starts[k]:starts[k + 1]]``. Chunks travel between stages in this
    form, and whole chunks are processed with array operations instead of loops over sentences."""

    values: np.ndarray
    """[N, 2] int64"""
    lengths: np.ndarray
    """[n] int64, rows per sentence"""

    @classmethod
    def of(cls, rows: Iterable[Iterable[tuple[int, int]]]) -> Ragged:
        rows = list(rows)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        values = np.fromiter(chain.from_iterable(chain.from_iterable(rows)), dtype=np.int64,
                             count=2 * int(lengths.sum())).reshape(-1, 2)
        return cls(values, lengths)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def sentence_index(self) -> np.ndarray:
        """Each row's sentence."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    def in_one_sequence(self) -> np.ndarray:
        """Character positions made chunk-global (sentence k's shifted by k * 2**32), so the whole
        chunk is one ordered sequence."""
        return self.values + (self.sentence_index() << 32)[:, None]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of a 1-D integer array by sorting: numpy 2's hash-based ``unique`` took about 60x as
    long as a sort on a chunk's link keys."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values
