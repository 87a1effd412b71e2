"""Word alignment with eflomal, symmetrisation, and projection of word links onto subword positions."""
from __future__ import annotations

import tempfile
from pathlib import Path

import eflomal
import numpy as np

from data_prep.config import AlignerConfig
from data_prep.symmetrize import SYMMETRIZERS, Links


def _read_links(path: Path) -> list[Links]:
    with open(path, encoding="utf-8") as f:
        return [{(int(i), int(j)) for i, j in (link.split("-") for link in line.split())} for line in f]


def align_words(src_words: list[list[str]], tgt_words: list[list[str]], cfg: AlignerConfig,
                tmp_dir: Path) -> list[Links]:
    """Symmetrised word links for each sentence pair (eflomal in both directions, then ``cfg.symmetrize``)."""
    aligner = eflomal.Aligner(model=cfg.model, n_samplers=cfg.samplers)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        fwd, rev = Path(tmp) / "fwd", Path(tmp) / "rev"
        # eflomal lower-cases its vocabulary itself; tokens are the words, space-separated.
        aligner.align([" ".join(w) for w in src_words], [" ".join(w) for w in tgt_words],
                      links_filename_fwd=str(fwd), links_filename_rev=str(rev), quiet=True)
        fwd_links, rev_links = _read_links(fwd), _read_links(rev)
    if len(fwd_links) != len(src_words) or len(rev_links) != len(src_words):
        raise RuntimeError(f"eflomal returned {len(fwd_links)}/{len(rev_links)} alignments for {len(src_words)} pairs")
    symmetrize = SYMMETRIZERS[cfg.symmetrize]
    return [symmetrize(f, r) for f, r in zip(fwd_links, rev_links)]


def word_token_ranges(word_spans: np.ndarray, token_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each word, the half-open range [lo, hi) of token positions whose characters overlap it.

    ``word_spans`` [W, 2] and ``token_offsets`` [T, 2] are character (start, end) offsets; special
    tokens have empty offsets and overlap nothing. Tokens are contiguous and ordered, so each word's
    tokens are too; a token straddling two words belongs to both.
    """
    starts, ends = token_offsets[:, 0], token_offsets[:, 1]
    real = ends > starts
    # For each token, the first and last word it overlaps (first > last: overlaps none).
    first = np.searchsorted(word_spans[:, 1], starts, side="right")
    last = np.searchsorted(word_spans[:, 0], ends, side="left") - 1
    first = np.where(real, first, len(word_spans))
    last = np.where(real, last, -1)
    # Make both monotone so that binary search works across the specials' sentinels.
    first = np.minimum.accumulate(first[::-1])[::-1]
    last = np.maximum.accumulate(last)
    words = np.arange(len(word_spans))
    return np.searchsorted(last, words, side="left"), np.searchsorted(first, words, side="right")


def project_links(links: Links, src_ranges: tuple[np.ndarray, np.ndarray],
                  tgt_ranges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Word links → unique, sorted (src token, tgt token) links: every subword of one aligned word
    links to every subword of the other."""
    pairs = sorted({(s, t)
                    for i, j in links
                    for s in range(src_ranges[0][i], src_ranges[1][i])
                    for t in range(tgt_ranges[0][j], tgt_ranges[1][j])})
    return np.asarray(pairs, dtype=np.int32).reshape(-1, 2)
