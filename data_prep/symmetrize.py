"""Symmetrisation of forward and reverse word alignments (Koehn et al., 2003/2005).

Links are (src word, tgt word) index pairs. The aligner is run in both directions; each direction can
only link a word to one word on the other side, and these heuristics combine the two.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from data_prep.ragged import Ragged, sorted_unique

Links = set[tuple[int, int]]

_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def intersection(fwd: Links, rev: Links) -> Links:
    """High precision: only links both directions agree on."""
    return fwd & rev


def union(fwd: Links, rev: Links) -> Links:
    """High recall: every link of either direction."""
    return fwd | rev


def grow_diag_final_and(fwd: Links, rev: Links) -> Links:
    """Start from the intersection, grow into neighbouring union links that cover a still unaligned
    word (grow-diag), then add union links whose both words are unaligned (final-and)."""
    links = _grow_diag_final_and({i << _SHIFT | j for i, j in fwd}, {i << _SHIFT | j for i, j in rev})
    return {(p >> _SHIFT, p & _LOW) for p in links}


# Links packed into one int, src << 20 | tgt, which the chunk form extends with the sentence above bit 40.
# A neighbour step never wraps into a real link: that would take a word numbered 2**20 - 1.
_SHIFT = 20
_LOW = (1 << _SHIFT) - 1
_STEPS = tuple((di << _SHIFT) + dj for di, dj in _NEIGHBOURS)


def _grow_diag_final_and(fwd: set[int], rev: set[int]) -> set[int]:
    links = fwd & rev
    candidates = (fwd | rev) - links  # empty when both directions agree, as they often do
    if not candidates:
        return links
    src_aligned = {p >> _SHIFT for p in links}
    tgt_aligned = {p & _LOW for p in links}
    frontier = sorted(links)
    while frontier and candidates:
        grown = []
        for p in frontier:
            for step in _STEPS:
                q = p + step
                if q in candidates and (q >> _SHIFT not in src_aligned or q & _LOW not in tgt_aligned):
                    candidates.discard(q)
                    src_aligned.add(q >> _SHIFT)
                    tgt_aligned.add(q & _LOW)
                    grown.append(q)
        links.update(grown)
        # Only new links can have new neighbours to grow into; old ones were all tried.
        frontier = grown
    for direction in (fwd, rev):
        for q in sorted(direction & candidates):  # links already in have both words aligned
            if q >> _SHIFT not in src_aligned and q & _LOW not in tgt_aligned:
                links.add(q)
                src_aligned.add(q >> _SHIFT)
                tgt_aligned.add(q & _LOW)
    return links


SYMMETRIZERS: dict[str, Callable[[Links, Links], Links]] = {
    "intersection": intersection,
    "union": union,
    "grow-diag-final-and": grow_diag_final_and,
}


def _keys(links: Ragged) -> np.ndarray:
    """One sortable int64 per link: sentence << 40 | src word << 20 | tgt word (chunks stay below 2**22
    sentences and sentences below 2**20 words)."""
    return (links.sentence_index() << 40) | (links.values[:, 0] << _SHIFT) | links.values[:, 1]


def _from_keys(keys: np.ndarray, n: int) -> Ragged:
    return Ragged(np.stack([(keys >> _SHIFT) & _LOW, keys & _LOW], axis=1), np.bincount(keys >> 40, minlength=n))


def symmetrize_chunk(heuristic: str, fwd: Ragged, rev: Ragged) -> Ragged:
    """``SYMMETRIZERS[heuristic]`` applied to every sentence pair of a chunk, links sorted per sentence.

    Intersection and union are set operations on the whole chunk. grow-diag-final-and only differs
    from the intersection where the two directions disagree; only those sentences go through the
    per-sentence loop, on packed links.
    """
    if heuristic not in SYMMETRIZERS:
        raise ValueError(f"unknown symmetrisation heuristic {heuristic!r}")
    n = len(fwd.lengths)
    f, r = _keys(fwd), _keys(rev)  # each unique: a direction links a word at most once
    either = sorted_unique(np.concatenate([f, r]))
    if heuristic == "union":
        return _from_keys(either, n)
    both = np.intersect1d(f, r, assume_unique=True)
    if heuristic == "intersection":
        return _from_keys(both, n)
    agree = np.bincount(both >> 40, minlength=n) == np.bincount(either >> 40, minlength=n)
    grown = []
    (f_keys, f_at), (r_keys, r_at) = [  # the disagreeing sentences' links, as Python ints
        (keys[np.repeat(~agree, links.lengths)].tolist(), np.cumsum([0, *links.lengths[~agree].tolist()]).tolist())
        for keys, links in ((f, fwd), (r, rev))]
    for m in range(len(f_at) - 1):
        grown += _grow_diag_final_and(set(f_keys[f_at[m]:f_at[m + 1]]), set(r_keys[r_at[m]:r_at[m + 1]]))
    return _from_keys(np.sort(np.concatenate([both[agree[both >> 40]], np.asarray(grown, dtype=np.int64)])), n)
