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
    links = fwd & rev
    candidates = (fwd | rev) - links  # empty when both directions agree, as they often do
    if not candidates:
        return links
    src_aligned = {i for i, _ in links}
    tgt_aligned = {j for _, j in links}
    frontier = sorted(links)
    while frontier and candidates:
        grown = []
        for i, j in frontier:
            for di, dj in _NEIGHBOURS:
                p = (i + di, j + dj)
                if p in candidates and (p[0] not in src_aligned or p[1] not in tgt_aligned):
                    candidates.discard(p)
                    src_aligned.add(p[0])
                    tgt_aligned.add(p[1])
                    grown.append(p)
        links.update(grown)
        # Only new links can have new neighbours to grow into; old ones were all tried.
        frontier = grown
    for direction in (fwd, rev):
        for i, j in sorted(direction):
            if i not in src_aligned and j not in tgt_aligned:
                links.add((i, j))
                src_aligned.add(i)
                tgt_aligned.add(j)
    return links


SYMMETRIZERS: dict[str, Callable[[Links, Links], Links]] = {
    "intersection": intersection,
    "union": union,
    "grow-diag-final-and": grow_diag_final_and,
}


def _keys(links: Ragged) -> np.ndarray:
    """One sortable int64 per link: sentence, src word, tgt word (chunks stay below 2**22 sentences and
    sentences below 2**20 words)."""
    return (links.sentence_index() << 40) | (links.values[:, 0] << 20) | links.values[:, 1]


def _from_keys(keys: np.ndarray, n: int) -> Ragged:
    return Ragged(np.stack([(keys >> 20) & 0xFFFFF, keys & 0xFFFFF], axis=1),
                  np.bincount(keys >> 40, minlength=n))


def symmetrize_chunk(heuristic: str, fwd: Ragged, rev: Ragged) -> Ragged:
    """``SYMMETRIZERS[heuristic]`` applied to every sentence pair of a chunk, links sorted per sentence.

    Intersection and union are set operations on the whole chunk. grow-diag-final-and only differs
    from the intersection where the two directions disagree; only those sentences go through the
    per-sentence heuristic.
    """
    n = len(fwd.lengths)
    f, r = _keys(fwd), _keys(rev)  # each unique: a direction links a word at most once
    either = sorted_unique(np.concatenate([f, r]))
    if heuristic == "union":
        return _from_keys(either, n)
    both = np.intersect1d(f, r, assume_unique=True)
    if heuristic == "intersection":
        return _from_keys(both, n)
    agree = np.bincount(both >> 40, minlength=n) == np.bincount(either >> 40, minlength=n)
    symmetrize = SYMMETRIZERS[heuristic]
    rows = []
    for links in (fwd, rev):  # the disagreeing sentences' links, as Python lists
        mine = np.repeat(~agree, links.lengths)
        at = np.concatenate([[0], np.cumsum(links.lengths[~agree])]).tolist()
        rows.append((links.values[mine].tolist(), at))
    (f_rows, f_at), (r_rows, r_at) = rows
    grown = []
    for m, k in enumerate(np.flatnonzero(~agree).tolist()):
        links = symmetrize(set(map(tuple, f_rows[f_at[m]:f_at[m + 1]])), set(map(tuple, r_rows[r_at[m]:r_at[m + 1]])))
        grown += [(k << 40) | (i << 20) | j for i, j in links]
    return _from_keys(np.sort(np.concatenate([both[agree[both >> 40]], np.asarray(grown, dtype=np.int64)])), n)
