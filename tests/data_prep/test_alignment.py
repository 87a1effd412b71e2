"""Symmetrisation, eflomal alignment, and projection of word links onto subword positions."""
from __future__ import annotations

import random

import numpy as np

import pytest

from data_prep.alignment import align_words, project_links, read_links, word_token_ranges
from data_prep.config import AlignerConfig
from data_prep.ragged import Ragged
from data_prep.symmetrize import SYMMETRIZERS, grow_diag_final_and, intersection, symmetrize_chunk, union
from data_prep.tokenizer import load_fast_tokenizer
from data_prep.words import chunk_words, split_words, word_spans


def test_grow_diag_final_and_by_hand():
    # Growth into a diagonal neighbour that covers an unaligned source word.
    assert grow_diag_final_and({(0, 0), (1, 1)}, {(0, 0)}) == {(0, 0), (1, 1)}
    # No growth where both words are already aligned.
    assert grow_diag_final_and({(0, 0), (1, 1), (0, 1)}, {(0, 0), (1, 1)}) == {(0, 0), (1, 1)}
    # (2, 2) is not next to the intersection: final-and adds it (both words unaligned);
    # then (2, 0) is refused because source word 2 is aligned by now.
    fwd, rev = {(0, 0), (2, 2)}, {(0, 0), (2, 0)}
    assert grow_diag_final_and(fwd, rev) == {(0, 0), (2, 2)}
    assert intersection(fwd, rev) == {(0, 0)} and union(fwd, rev) == {(0, 0), (2, 2), (2, 0)}


def test_grow_diag_final_and_lies_between_intersection_and_union():
    rng = random.Random(0)
    for _ in range(200):
        fwd = {(rng.randrange(8), rng.randrange(8)) for _ in range(rng.randrange(12))}
        rev = {(rng.randrange(8), rng.randrange(8)) for _ in range(rng.randrange(12))}
        assert fwd & rev <= grow_diag_final_and(fwd, rev) <= fwd | rev


def _as_sets(links: Ragged) -> list[set]:
    return [set(map(tuple, rows.tolist())) for rows in np.split(links.values, links.starts[1:-1])]


def test_chunk_symmetrisation_matches_the_per_sentence_heuristics():
    rng = random.Random(2)
    fwd, rev = [], []
    for _ in range(300):
        f = {(rng.randrange(6), rng.randrange(6)) for _ in range(rng.randrange(8))}
        fwd.append(f)
        rev.append(set(f) if rng.random() < 0.4 else {(rng.randrange(6), rng.randrange(6))
                                                     for _ in range(rng.randrange(8))})
    for name, heuristic in SYMMETRIZERS.items():
        links = symmetrize_chunk(name, Ragged.of(fwd), Ragged.of(rev))
        assert _as_sets(links) == [heuristic(f, r) for f, r in zip(fwd, rev)], name
        for rows in np.split(links.values, links.starts[1:-1]):  # sorted within each sentence
            assert rows.tolist() == sorted(rows.tolist())


def test_eflomal_links_files_are_read_per_line(tmp_path):
    path = tmp_path / "links"
    path.write_text("0-0 2-1\n\n3-4\n")
    links = read_links(path)
    assert links.lengths.tolist() == [2, 0, 1] and links.values.tolist() == [[0, 0], [2, 1], [3, 4]]
    path.write_text("0-0 2-\n")
    with pytest.raises(RuntimeError, match="links"):
        read_links(path)


def test_chunk_words_are_the_words_of_each_text(fr_pairs, ja_pairs):
    texts = [t for pair in fr_pairs[:200] + ja_pairs[:200] for t in pair] + ["", "ยินดี Ça va ?"]
    for batch in (texts, texts[:3] + ["a\x01b", "line\nbreak"]):  # the second takes the slow path
        spans, spaced = chunk_words(batch)
        assert _as_sets(spans) == [set(word_spans(t)) for t in batch]
        assert spans.values.tolist() == [list(s) for t in batch for s in word_spans(t)]
        assert [s.split() for s in spaced] == [split_words(t) for t in batch]


def test_eflomal_recovers_a_known_alignment(tmp_path, fr_pairs):
    # Real English sentences against a "translation" with a fixed lexicon and reversed word order:
    # the true alignment is i <-> n-1-i, which checks both directions' orientation end to end.
    src = [split_words(en) for _, en in fr_pairs]
    tgt = [[w[::-1] + "x" for w in reversed(words)] for words in src]
    fwd, rev = align_words([" ".join(w) for w in src], [" ".join(w) for w in tgt], AlignerConfig(), tmp_path)
    links = _as_sets(symmetrize_chunk("intersection", fwd, rev))
    gold = [{(i, len(words) - 1 - i) for i in range(len(words))} for words in src]
    hits = sum(len(found & true) for found, true in zip(links, gold))
    precision = hits / sum(map(len, links))
    recall = hits / sum(map(len, gold))
    assert precision > 0.9 and recall > 0.8, (precision, recall)


def test_word_token_ranges_cover_exactly_the_overlapping_tokens(small_dataset, fr_pairs, ja_pairs):
    dataset, _, _ = small_dataset
    tok = load_fast_tokenizer(dataset / "tokenizer")
    for text in [t for pair in fr_pairs[:100] + ja_pairs[:100] for t in pair]:
        spans = np.asarray(word_spans(text)).reshape(-1, 2)
        offsets = np.asarray(tok.encode(text).offsets).reshape(-1, 2)
        lo, hi = word_token_ranges(spans, offsets)
        for w, (a, b) in enumerate(spans):
            overlapping = [t for t, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
            assert list(range(lo[w], hi[w])) == overlapping, (text, w)


def test_projection_links_every_subword_pair():
    # src "ab cd": <s> ab c d </s>; tgt "xyz w": <s> x yz </s>, where no token covers "w".
    src_words, src_tokens = [(0, 2), (3, 5)], [(0, 0), (0, 2), (3, 4), (4, 5), (0, 0)]
    tgt_words, tgt_tokens = [(0, 3), (4, 5)], [(0, 0), (0, 1), (1, 3), (0, 0)]
    links = project_links(Ragged.of([{(1, 0)}, {(0, 1)}, {(0, 0), (1, 0)}]), Ragged.of([src_words] * 3),
                          Ragged.of([src_tokens] * 3), Ragged.of([tgt_words] * 3), Ragged.of([tgt_tokens] * 3))
    assert links[0].tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]
    assert links[1].shape == (0, 2)
    assert links[2].tolist() == [[1, 1], [1, 2], [2, 1], [2, 2], [3, 1], [3, 2]]


def test_chunk_projection_matches_the_definition(small_dataset, fr_pairs, ja_pairs):
    dataset, _, _ = small_dataset
    tok = load_fast_tokenizer(dataset / "tokenizer")
    rng = random.Random(1)
    pairs = fr_pairs[:150] + ja_pairs[:150]
    src_words, tgt_words = [word_spans(s) for s, _ in pairs], [word_spans(t) for _, t in pairs]
    src_tokens = [e.offsets for e in tok.encode_batch([s for s, _ in pairs])]
    tgt_tokens = [e.offsets for e in tok.encode_batch([t for _, t in pairs])]
    word_links = [{(rng.randrange(len(sw)), rng.randrange(len(tw))) for _ in range(rng.randrange(6))}
                  for sw, tw in zip(src_words, tgt_words)]
    links = project_links(*map(Ragged.of, (word_links, src_words, src_tokens, tgt_words, tgt_tokens)))

    def tokens_of(span, offsets):
        return [k for k, (s, e) in enumerate(offsets) if e > s and s < span[1] and e > span[0]]

    for k, wl in enumerate(word_links):
        expected = sorted({(s, t) for i, j in wl for s in tokens_of(src_words[k][i], src_tokens[k])
                           for t in tokens_of(tgt_words[k][j], tgt_tokens[k])})
        assert [tuple(x) for x in links[k].tolist()] == expected
