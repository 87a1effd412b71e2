"""Symmetrisation of forward and reverse word alignments (Koehn et al., 2003/2005).

Links are (src word, tgt word) index pairs. The aligner is run in both directions; each direction can
only link a word to one word on the other side, and these heuristics combine the two.
"""
from __future__ import annotations

from collections.abc import Callable

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
