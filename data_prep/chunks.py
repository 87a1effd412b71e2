"""The two work units of a chunk of clean pairs, run in worker processes.

``align_chunk`` splits words and aligns them; it needs no tokenizer, so chunks are aligned while the
tokenizer trains. It leaves the word spans and symmetrised word links next to the chunk's spool.
``encode_chunk`` then tokenizes, projects the links onto subwords and writes the shards. A chunk of
monolingual text is only encoded: its samples have no target side and no links. Everything a
unit needs travels in the ChunkTask; what it made comes back as shard records (for the manifest) and
per-step seconds (for the benchmark's breakdown).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.alignment import align_words, project_links
from data_prep.config import AlignerConfig, ShardConfig
from data_prep.manifest import SPLITS
from data_prep.ragged import Ragged
from data_prep.shard_format import encode_sample
from data_prep.shards import ShardWriter
from data_prep.symmetrize import symmetrize_chunk
from data_prep.tokenizer import load_fast_tokenizer
from data_prep.words import chunk_words


@dataclass
class ChunkTask:
    pair: str
    """The source's key: a language pair, or a language for monolingual text."""
    src_lang: str
    tgt_lang: str | None
    """None for monolingual text."""
    chunk: int
    spool: str
    """TSV file of the chunk's clean records (pairs, or one sentence per line)."""
    first: int
    """Index of the chunk's first pair within its language pair (sample keys and splits use it)."""
    dev: np.ndarray
    test: np.ndarray
    """Sorted indices of the held-out pairs of the whole language pair."""
    out_dir: str
    tokenizer_dir: str
    aligner: AlignerConfig
    shards: ShardConfig

    @property
    def parallel(self) -> bool:
        """The chunk holds sentence pairs (to align), not monolingual text."""
        return self.tgt_lang is not None

    @property
    def aligned(self) -> Path:
        """Where align_chunk leaves its result (written whole, then renamed)."""
        return Path(self.spool).with_suffix(".aligned.npz")


@dataclass
class ChunkResult:
    pair: str
    chunk: int
    shards: list[dict]
    seconds: Counter


_TOKENIZERS = {}


def _tokenizer(path: str):
    if path not in _TOKENIZERS:  # once per worker process
        _TOKENIZERS[path] = load_fast_tokenizer(Path(path))
    return _TOKENIZERS[path]


def read_spool(path: str) -> tuple[list[str], ...]:
    """The spool's columns: (src, tgt) texts of a pair's chunk, (sentences,) of a monolingual one."""
    with open(path, encoding="utf-8") as f:
        return tuple(map(list, zip(*(line.rstrip("\n").split("\t") for line in f), strict=True)))


def _splits(task: ChunkTask, n: int) -> np.ndarray:
    """Each pair's index into SPLITS."""
    index = np.arange(task.first, task.first + n)
    split = np.zeros(n, dtype=np.int8)
    split[np.isin(index, task.dev)] = 1
    split[np.isin(index, task.test)] = 2
    return split


class _Laps:
    """Seconds per step, for the benchmark's breakdown."""

    def __init__(self):
        self.seconds = Counter()
        self._clock = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] += now - self._clock
        self._clock = now


_NO_IDS = np.zeros(0, dtype=np.int32)
_NO_LINKS = np.zeros((0, 2), dtype=np.int32)
_ALIGNED_FIELDS = ("src_words", "src_counts", "tgt_words", "tgt_counts", "links", "link_counts")


def align_chunk(task: ChunkTask) -> ChunkResult:
    lap = _Laps()
    src_text, tgt_text = read_spool(task.spool)
    (src_spans, src_words), (tgt_spans, tgt_words) = chunk_words(src_text), chunk_words(tgt_text)
    lap("words")

    fwd, rev = align_words(src_words, tgt_words, task.aligner, Path(task.out_dir) / ".work")
    lap("align")
    links = symmetrize_chunk(task.aligner.symmetrize, fwd, rev)
    lap("symmetrize")

    arrays = dict(zip(_ALIGNED_FIELDS, (a for r in (src_spans, tgt_spans, links) for a in (r.values, r.lengths))))
    tmp = task.aligned.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(task.aligned)
    lap("save")
    return ChunkResult(task.pair, task.chunk, [], lap.seconds)


def _load_aligned(path: Path) -> tuple[Ragged, Ragged, Ragged]:
    with np.load(path, allow_pickle=False) as npz:
        a = [npz[name] for name in _ALIGNED_FIELDS]
    return Ragged(a[0], a[1]), Ragged(a[2], a[3]), Ragged(a[4], a[5])


def encode_chunk(task: ChunkTask) -> ChunkResult:
    lap = _Laps()
    tok = _tokenizer(task.tokenizer_dir)
    if task.parallel:
        src_text, tgt_text = read_spool(task.spool)
        src_spans, tgt_spans, word_links = _load_aligned(task.aligned)
        src_enc, tgt_enc = tok.encode_batch(src_text), tok.encode_batch(tgt_text)
        lap("tokenize")
        links = project_links(word_links, src_spans, Ragged.of(e.offsets for e in src_enc),
                              tgt_spans, Ragged.of(e.offsets for e in tgt_enc))
        lap("project")
        tgt_ids = [np.asarray(e.ids) for e in tgt_enc]
    else:  # monolingual text: no target side, no links
        (src_text,) = read_spool(task.spool)
        src_enc = tok.encode_batch(src_text)
        lap("tokenize")
        tgt_text, tgt_ids, links = [""] * len(src_text), [_NO_IDS] * len(src_text), [_NO_LINKS] * len(src_text)

    out = Path(task.out_dir)
    split = _splits(task, len(src_text))
    writers = {}
    for name in SPLITS:
        prefix = f"{task.pair}/{name}/{task.pair}-{name}-{task.chunk:05d}"
        # A chunk that was interrupted before may have left shards under its names: start clean.
        for stale in out.glob(f"{prefix}-*.tar*"):
            stale.unlink()
        writers[name] = ShardWriter(out, prefix, task.shards.max_samples, task.shards.max_bytes)
    tgt_lang = task.tgt_lang or ""  # meta.json holds strings: a monolingual sample's target language is ""
    for k, code in enumerate(split):
        src_ids = np.asarray(src_enc[k].ids)
        files = encode_sample(
            src_ids, tgt_ids[k], links[k],
            {"src_lang": task.src_lang, "tgt_lang": tgt_lang, "src_text": src_text[k], "tgt_text": tgt_text[k]})
        writers[SPLITS[code]].write(f"{task.pair}-{task.first + k:09d}", files,
                                    {"src_tokens": len(src_ids), "tgt_tokens": len(tgt_ids[k]), "links": len(links[k])})
    records = [{**r, "split": name, "chunk": task.chunk} for name, w in writers.items() for r in w.close()]
    lap("write")
    return ChunkResult(task.pair, task.chunk, records, lap.seconds)
