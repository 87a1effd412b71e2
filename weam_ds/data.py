"""The training input: an infinite, resumable WebDataset stream of masked batches.

WebDataset iterators have no state to save, so the stream is built to be a pure function of where it
is. Each rank's batches come from W slots (W = DataLoader workers, at least 1; batch i from slot
i mod W). A slot draws each sample's language pair from the temperature mixture (p ∝ n^α) with an RNG
seeded by (seed, rank, slot, sample index), and takes the pair's next sample from that pair's
sub-stream: a sequence of shard visits (visit v picks a train shard, weighted by size, with an RNG
seeded by (seed, rank, slot, pair, v)), read through a seeded shuffle buffer. A slot's position is
therefore (samples drawn, {pair: (visit, samples taken from it)}); every batch carries its slot's
position, the trainer stores the latest in the checkpoint, and a resumed stream replays at most the
partly read shard of each pair to stand exactly where it stopped. Masking is seeded by (seed, rank,
slot, batch index), so resumed batches are identical.

A shard that is missing, does not match its manifest sha256 (checked the first time a process opens
it, when ``verify_sha256``), or is not a readable tar is logged, counted and skipped, as is a sample
that breaks the shard format: the run goes on.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from data_prep.manifest import read_manifest
from data_prep.shard_format import ShardFormatError, decode_sample
from data_prep.shards import file_sha256
from data_prep.typed_config import ConfigError
from weam_ds.batch import TokenInfo, collate, mask_batch
from weam_ds.config import DataConfig, MaskingConfig

log = logging.getLogger(__name__)

_MIX_BLOCK = 1024  # pair draws are made this many at a time


@dataclass(frozen=True)
class Shard:
    path: str
    samples: int
    sha256: str


@dataclass(frozen=True)
class Corpus:
    """The shards of one split of the selected language pairs, across datasets."""

    pairs: list[str]
    shards: dict[str, list[Shard]]
    probabilities: np.ndarray
    """Pair sampling probabilities, ∝ train samples^α."""
    tokenizer_dir: Path

    @classmethod
    def open(cls, cfg: DataConfig, split: str = "train") -> Corpus:
        shards: dict[str, list[Shard]] = {}
        tokenizer, tokenizer_sha = None, None
        for directory in map(Path, cfg.datasets):
            manifest = read_manifest(directory)
            sha = manifest["tokenizer"]["sha256"]
            if tokenizer_sha not in (None, sha):
                raise ConfigError(f"data.datasets: {directory} has another tokenizer than {tokenizer}; "
                                  "datasets trained together must share one")
            tokenizer, tokenizer_sha = directory / manifest["tokenizer"]["path"], sha
            for key, entry in manifest["pairs"].items():
                if cfg.pairs is None or key in cfg.pairs:
                    shards.setdefault(key, []).extend(
                        Shard(str(directory / s["path"]), s["samples"], s["sha256"])
                        for s in entry["shards"] if s["split"] == split and s["samples"] > 0)
        missing = [p for p in (cfg.pairs or []) if p not in shards]
        if missing:
            raise ConfigError(f"data.pairs: {', '.join(missing)} not in any of {', '.join(cfg.datasets)}")
        pairs = sorted(k for k, v in shards.items() if v)
        if not pairs:
            raise ConfigError(f"data: no {split} shards in {', '.join(cfg.datasets)}")
        sizes = np.array([sum(s.samples for s in shards[p]) for p in pairs], dtype=np.float64)
        weights = sizes ** cfg.temperature
        return cls(pairs, {p: shards[p] for p in pairs}, weights / weights.sum(), tokenizer)


def _every(urls):
    return urls


class _Shards:
    """Opens shards for one process: checks each against its sha256 once, skips and counts the bad."""

    def __init__(self, verify: bool, stats: Counter):
        self.verify, self.stats = verify, stats
        self.bad: set[str] = set()
        self.checked: set[str] = set()

    def samples(self, shard: Shard) -> Iterator[dict]:
        if shard.path in self.bad:
            return
        if self.verify and shard.path not in self.checked:
            try:
                ok = file_sha256(Path(shard.path)) == shard.sha256
            except OSError as exc:
                return self._skip(shard, f"cannot read it ({exc.strerror})")
            if not ok:
                return self._skip(shard, "sha256 differs from the manifest")
            self.checked.add(shard.path)
        errors = []

        def handler(exc: Exception) -> bool:
            errors.append(exc)
            return False  # stop reading this shard

        # This process reads exactly this shard: the stream, not webdataset, decides who reads what.
        for raw in wds.WebDataset([shard.path], shardshuffle=False, empty_check=False, handler=handler,
                                  nodesplitter=_every, workersplitter=_every):
            try:
                yield decode_sample(raw)
            except ShardFormatError as exc:
                self.stats["bad_samples"] += 1
                log.warning("skipping a sample: %s", exc)
        if errors:
            self._skip(shard, f"unreadable ({errors[0]})")

    def _skip(self, shard: Shard, why: str) -> None:
        self.bad.add(shard.path)
        self.stats["bad_shards"] += 1
        log.warning("skipping shard %s: %s", shard.path, why)


class _PairStream:
    """One pair's samples: seeded shard visits through a seeded shuffle buffer; position (visit, taken)."""

    def __init__(self, pair: str, shards: list[Shard], seed: tuple, buffer: int, opener: _Shards,
                 visit: int = 0, taken: int = 0):
        self.pair, self.shards, self.seed, self.buffer, self.opener = pair, shards, seed, buffer, opener
        self.weights = np.array([s.samples for s in shards], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.visit, self.taken = visit, 0
        self._items = self._open(visit)
        for _ in range(taken):  # replay the partly read shard
            self.next()

    def _open(self, visit: int) -> Iterator[dict]:
        rng = np.random.default_rng((*self.seed, visit))
        shard = self.shards[rng.choice(len(self.shards), p=self.weights)]
        shuffle = random.Random(int(rng.integers(1 << 62)))
        pool = []
        for sample in self.opener.samples(shard):
            pool.append(sample)
            if len(pool) >= self.buffer:
                yield pool.pop(shuffle.randrange(len(pool)))
        shuffle.shuffle(pool)
        yield from pool

    def next(self) -> dict:
        for _ in range(1000):  # a visit to a bad shard yields nothing: go on to the next visit
            sample = next(self._items, None)
            if sample is not None:
                self.taken += 1
                return sample
            self.visit, self.taken = self.visit + 1, 0
            self._items = self._open(self.visit)
        raise RuntimeError(f"{self.pair}: 1000 shard visits in a row gave no sample; are all its shards bad?")


class TrainStream(IterableDataset):
    """Masked training batches for one rank (see the module docstring); iterate it through a DataLoader
    with ``batch_size=None``. ``positions`` (slot → position) and ``first_batch`` resume it."""

    def __init__(self, corpus: Corpus, cfg: DataConfig, masking: MaskingConfig, info: TokenInfo, seed: int,
                 rank: int, positions: dict[int, dict] | None = None, first_batch: int = 0):
        self.corpus, self.cfg, self.masking, self.info = corpus, cfg, masking, info
        self.seed, self.rank = seed, rank
        self.slots = max(1, cfg.workers)
        self.positions = positions or {}
        self.first_batch = first_batch

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        if (worker.num_workers if worker else 1) != self.slots:
            raise RuntimeError(f"TrainStream expects {self.slots} DataLoader workers")
        # The DataLoader asks worker w for batches first_batch + w, first_batch + w + W, ...
        w = worker.id if worker else 0
        slot = (self.first_batch + w) % self.slots
        yield from self._slot(slot, self.first_batch + w)

    def _slot(self, slot: int, batch_index: int) -> Iterator[dict]:
        position = self.positions.get(slot, {"drawn": 0, "pairs": {}})
        stats = Counter()
        opener = _Shards(self.cfg.verify_sha256, stats)
        streams = {}

        def stream(index: int) -> _PairStream:
            pair = self.corpus.pairs[index]
            if pair not in streams:
                visit, taken = position["pairs"].get(pair, (0, 0))
                streams[pair] = _PairStream(pair, self.corpus.shards[pair], (self.seed, self.rank, slot, index),
                                            self.cfg.shuffle_buffer, opener, visit, taken)
            return streams[pair]

        def width(sample: dict) -> int:
            """Tokens the sample adds to each row of its batch (both sides, after truncation)."""
            return min(self.cfg.max_length, len(sample["src_ids"])) + min(self.cfg.max_length, len(sample["tgt_ids"]))

        drawn = position["drawn"]
        block, draws = -1, None
        pending = None  # (pair index, sample) drawn but not yet in a batch
        while True:
            samples, indices, widest = [], [], 0
            while True:
                if pending is None:
                    if drawn // _MIX_BLOCK != block:
                        block = drawn // _MIX_BLOCK
                        rng = np.random.default_rng((self.seed, self.rank, slot, block))
                        draws = rng.choice(len(self.corpus.pairs), _MIX_BLOCK, p=self.corpus.probabilities)
                    index = int(draws[drawn % _MIX_BLOCK])
                    pending = (index, stream(index).next())
                    drawn += 1
                index, sample = pending
                if (self.cfg.batch_tokens is not None and samples
                        and max(widest, width(sample)) * (len(samples) + 1) > self.cfg.batch_tokens):
                    break  # the pending sample opens the next batch
                samples.append(sample)
                indices.append(index)
                widest = max(widest, width(sample))
                pending = None
                if self.cfg.batch_size is not None and len(samples) == self.cfg.batch_size:
                    break
            generator = torch.Generator().manual_seed(_seed(self.seed, self.rank, slot, batch_index))
            batch = _masked_batch(samples, indices, self.info, self.cfg.max_length, self.masking, generator)
            # The position after this batch; a pending sample is drawn again on resume. Pairs not drawn
            # since this slot (re)started keep the position they had.
            pairs_pos = {p: list(v) for p, v in position["pairs"].items()}
            pairs_pos.update({p: [s.visit, s.taken] for p, s in streams.items()})
            if pending is not None:
                pairs_pos[self.corpus.pairs[pending[0]]][1] -= 1
            batch["stream"] = {"slot": slot, "batch": batch_index, "stats": dict(stats),
                               "position": {"drawn": drawn - (pending is not None), "pairs": pairs_pos}}
            yield batch
            batch_index += self.slots


def _masked_batch(samples: list[dict], pair_indices: list[int], info: TokenInfo, max_length: int,
                  masking: MaskingConfig, generator: torch.Generator) -> dict:
    """Collated, masked, and each row's language pair (an index into Corpus.pairs)."""
    batch = mask_batch(collate(samples, info, max_length), info, masking, generator)
    batch["pair_index"] = torch.tensor(pair_indices)
    return batch


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def eval_batches(cfg: DataConfig, masking: MaskingConfig, info: TokenInfo, rank: int, world: int,
                 seed: int) -> list[dict]:
    """A fixed set of masked dev batches for this rank (the same every evaluation). Every rank gets
    ``cfg.eval_batches`` batches, cycling through its share of the dev pairs if that is short, so that
    ZeRO-3's collective forward passes stay in step."""
    if cfg.eval_batches == 0:
        return []
    try:
        corpus = Corpus.open(cfg, split="dev")
    except ConfigError:
        return []
    opener = _Shards(cfg.verify_sha256, Counter())
    every = [(index, sample) for index, pair in enumerate(corpus.pairs) for shard in corpus.shards[pair]
             for sample in opener.samples(shard)]
    if not every:
        return []  # the same on every rank: none evaluates
    # A rank's share; a rank whose share is empty (fewer dev samples than ranks) evaluates them all.
    mine = every[rank::world] or every
    size = cfg.batch_size or max(1, cfg.batch_tokens // (2 * cfg.max_length))
    batches = []
    for b in range(cfg.eval_batches):
        picked = [mine[(b * size + k) % len(mine)] for k in range(size)]
        batches.append(_masked_batch([s for _, s in picked], [i for i, _ in picked], info, cfg.max_length, masking,
                                     torch.Generator().manual_seed(_seed(seed, rank, b, 99))))
    return batches
