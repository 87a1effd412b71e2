"""Word alignment with eflomal, symmetrisation, and projection of word links onto subword positions."""
from __future__ import annotations

import tempfile
from pathlib import Path

import eflomal
import numpy as np

from data_prep.config import AlignerConfig
from data_prep.ragged import Ragged, sorted_unique


def read_links(path: Path) -> Ragged:
    """An eflomal links file (one line per sentence pair, ``i-j`` links separated by spaces)."""
    text = path.read_text(encoding="ascii")
    lines = text.split("\n")
    if lines[-1]:
        raise RuntimeError(f"{path}: eflomal's links file does not end with a newline")
    lengths = np.fromiter((line.count("-") for line in lines[:-1]), dtype=np.int64, count=len(lines) - 1)
    values = np.fromstring(text.replace("-", " "), dtype=np.int64, sep=" ")
    if len(values) != 2 * lengths.sum():
        raise RuntimeError(f"{path}: malformed links")
    return Ragged(values.reshape(-1, 2), lengths)


def align_words(src: list[str], tgt: list[str], cfg: AlignerConfig, tmp_dir: Path) -> tuple[Ragged, Ragged]:
    """Forward and reverse word links for each sentence pair, both as (src word, tgt word); sentences
    are their words separated by spaces."""
    aligner = eflomal.Aligner(model=cfg.model, n_samplers=cfg.samplers)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        src_ids, tgt_ids, fwd, rev = (Path(tmp) / name for name in ("src", "tgt", "fwd", "rev"))
        # Aligner.align would put its input files in the system temp dir, where a killed build leaves
        # them; here they go with the dataset's work dir. eflomal lower-cases its vocabulary itself.
        with open(src_ids, "wb") as src_file, open(tgt_ids, "wb") as tgt_file:
            aligner.prepare_files(src, src_file, tgt, tgt_file, None, None)
        # What Aligner.align passes on (no priors, no scores).
        eflomal.align(str(src_ids), str(tgt_ids), links_filename_fwd=str(fwd), links_filename_rev=str(rev),
                      model=aligner.model, score_model=aligner.score_model, n_iterations=aligner.n_iterations,
                      n_samplers=aligner.n_samplers, quiet=True, rel_iterations=aligner.rel_iterations,
                      null_prior=aligner.null_prior)
        fwd_links, rev_links = read_links(fwd), read_links(rev)
    if len(fwd_links.lengths) != len(src) or len(rev_links.lengths) != len(src):
        raise RuntimeError(f"eflomal returned {len(fwd_links.lengths)}/{len(rev_links.lengths)} alignments "
                           f"for {len(src)} pairs")
    return fwd_links, rev_links


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
    lo = np.searchsorted(last, words, side="left")
    return lo, np.maximum(np.searchsorted(first, words, side="right"), lo)  # no token: lo == hi


def project_links(word_links: Ragged, src_words: Ragged, src_tokens: Ragged, tgt_words: Ragged,
                  tgt_tokens: Ragged) -> list[np.ndarray]:
    """Word links → per sentence, the unique sorted [K, 2] (src token, tgt token) links: every subword
    of one aligned word links to every subword of the other.

    Inputs are per sentence: word links, and word spans and token offsets in characters. The whole
    chunk is projected at once with array operations (a loop over sentences cost more than eflomal).
    """
    n = len(word_links.lengths)
    ranges, token_base, word_base = [], [], []
    for words, tokens in ((src_words, src_tokens), (tgt_words, tgt_tokens)):
        ranges.append(word_token_ranges(words.in_one_sequence(), tokens.in_one_sequence()))
        token_base.append(tokens.starts)
        word_base.append(words.starts)
    flat, sent = word_links.values, word_links.sentence_index()
    (s_lo, s_hi), (t_lo, t_hi) = ranges
    s_lo, s_hi = s_lo[word_base[0][sent] + flat[:, 0]], s_hi[word_base[0][sent] + flat[:, 0]]
    t_lo, t_hi = t_lo[word_base[1][sent] + flat[:, 1]], t_hi[word_base[1][sent] + flat[:, 1]]
    # Expand each word link into the product of its two token ranges.
    n_t = t_hi - t_lo
    size = (s_hi - s_lo) * n_t
    link = np.repeat(np.arange(len(size)), size)
    r = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
    n_t = np.maximum(n_t[link], 1)
    sent = sent[link]
    s = s_lo[link] + r // n_t - token_base[0][sent]
    t = t_lo[link] + r % n_t - token_base[1][sent]
    # One sort makes them unique and ordered within each sentence.
    key = sorted_unique((sent << 40) | (s << 20) | t)
    pairs = np.stack([(key >> 20) & 0xFFFFF, key & 0xFFFFF], axis=1).astype(np.int32)
    return np.split(pairs, np.searchsorted(key >> 40, np.arange(1, n)))
