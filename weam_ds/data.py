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
    """Opens shards for one slot: checks each against its sha256 once, skips the bad ones and remembers them.

    A shard is bad when it is missing, differs from its manifest sha256, cannot be read as a tar, or ends
    before the number of samples the manifest lists (a truncated or damaged file read without the sha256
    check). Its good samples before the damage are still used; later visits skip it. ``bad`` travels in the
    stream's position, so a resumed stream skips the same shards and the run counts each file once.
    """

    def __init__(self, verify: bool, stats: Counter, bad: set[str] | None = None):
        self.verify, self.stats = verify, stats
        self.bad: set[str] = set(bad or ())
        self.checked: set[str] = set()

    def samples(self, shard: Shard, replay: bool = False) -> Iterator[dict]:
        """The shard's decodable samples; a shard known to be bad yields none, unless ``replay`` (a resumed
        stream re-reading the visit it stopped in, which may have found the damage after its position)."""
        if shard.path in self.bad and not replay:
            return
        if self.verify and shard.path not in self.checked:
            try:
                ok = file_sha256(Path(shard.path)) == shard.sha256
            except OSError as exc:
                return self._skip(shard, f"cannot read it ({exc.strerror})")
            if not ok:
                return self._skip(shard, "sha256 differs from the manifest")
            self.checked.add(shard.path)
        errors, read = [], 0

        def handler(exc: Exception) -> bool:
            errors.append(exc)
            return False  # stop reading this shard

        # This process reads exactly this shard: the stream, not webdataset, decides who reads what.
        for raw in wds.WebDataset([shard.path], shardshuffle=False, empty_check=False, handler=handler,
                                  nodesplitter=_every, workersplitter=_every):
            read += 1
            try:
                yield decode_sample(raw)
            except ShardFormatError as exc:
                self.stats["bad_samples"] += 1
                log.warning("skipping a sample: %s", exc)
        if errors:
            self._skip(shard, f"unreadable after {read} samples ({errors[0]})")
        elif read < shard.samples:
            self._skip(shard, f"ends after {read} of its {shard.samples} samples (truncated or damaged)")

    def _skip(self, shard: Shard, why: str) -> None:
        if shard.path not in self.bad:
            self.bad.add(shard.path)
            log.warning("skipping shard %s: %s", shard.path, why)

    def all_bad(self, shards: list[Shard]) -> bool:
        return all(s.path in self.bad for s in shards)


class NoData(RuntimeError):
    """Every shard of a language pair (or of all of them) is bad: training cannot draw from its mixture."""


class _PairStream:
    """One pair's samples: seeded shard visits through a seeded shuffle buffer; position (visit, taken)."""

    def __init__(self, pair: str, shards: list[Shard], seed: tuple, buffer: int, opener: _Shards,
                 position: tuple[int, int] | None = None):
        self.pair, self.shards, self.seed, self.buffer, self.opener = pair, shards, seed, buffer, opener
        self.weights = np.array([s.samples for s in shards], dtype=np.float64)
        self.weights /= self.weights.sum()
        visit, taken = position or (0, 0)
        self.visit, self.taken = visit, 0
        # A resumed visit is read again even if its shard was found bad meanwhile (at its end, maybe after
        # the position was taken): the samples it gave before must come again.
        self._items = self._open(visit, replay=position is not None)
        for _ in range(taken):  # replay the partly read shard
            self.next()

    def _open(self, visit: int, replay: bool = False) -> Iterator[dict]:
        rng = np.random.default_rng((*self.seed, visit))
        shard = self.shards[rng.choice(len(self.shards), p=self.weights)]
        shuffle = random.Random(int(rng.integers(1 << 62)))
        pool = []
        for sample in self.opener.samples(shard, replay):
            pool.append(sample)
            if len(pool) >= self.buffer:
                yield pool.pop(shuffle.randrange(len(pool)))
        shuffle.shuffle(pool)
        yield from pool

    def next(self) -> dict:
        while True:  # a visit to a bad shard yields nothing: go on to the next visit
            sample = next(self._items, None)
            if sample is not None:
                self.taken += 1
                return sample
            if self.opener.all_bad(self.shards):
                raise NoData(self.pair)
            self.visit, self.taken = self.visit + 1, 0
            self._items = self._open(self.visit)


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
        opener = _Shards(self.cfg.verify_sha256, stats, position.get("bad_shards"))
        streams = {}

        def stream(index: int) -> _PairStream:
            pair = self.corpus.pairs[index]
            if pair not in streams:
                streams[pair] = _PairStream(pair, self.corpus.shards[pair], (self.seed, self.rank, slot, index),
                                            self.cfg.shuffle_buffer, opener, position["pairs"].get(pair))
            return streams[pair]

        def draw(index: int) -> dict:
            try:
                return stream(index).next()
            except NoData:
                raise NoData(self._no_data_message(opener)) from None

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
                    pending = (index, draw(index))
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
                               "position": {"drawn": drawn - (pending is not None), "pairs": pairs_pos,
                                            "bad_shards": sorted(opener.bad)}}
            yield batch
            batch_index += self.slots

    def _no_data_message(self, opener: _Shards) -> str:
        """Which pairs have no readable train shard; the others' shards are checked now to say so."""
        dead = []
        for pair in self.corpus.pairs:
            shards = self.corpus.shards[pair]
            if not opener.all_bad(shards):
                for shard in shards:  # read each until one gives a sample
                    if shard.path not in opener.bad and next(opener.samples(shard), None) is not None:
                        break
            if opener.all_bad(shards):
                dead.append(f"{pair} ({len(shards)} shard{'s' * (len(shards) > 1)})")
        if len(dead) == len(self.corpus.pairs):
            return (f"every train shard of every pair is bad: {', '.join(dead)} (missing, damaged or not "
                    "matching the manifest; see the log): rebuild the dataset with data_prep")
        return (f"every train shard of {', '.join(dead)} is bad (see the log): rebuild it, or leave it out of "
                "data.pairs")


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
    except ConfigError as exc:
        log.warning("no evaluation: %s (data_prep's splits.dev makes a dev split)", exc)
        return []
    opener = _Shards(cfg.verify_sha256, Counter())
    every = [(index, sample) for index, pair in enumerate(corpus.pairs) for shard in corpus.shards[pair]
             for sample in opener.samples(shard)]
    if not every:
        raise NoData(f"every dev shard is bad ({', '.join(corpus.pairs)}; see the log): rebuild the dataset, "
                     "or set data.eval_batches: 0")
    # A rank's share; a rank whose share is empty (fewer dev samples than ranks) evaluates them all.
    mine = every[rank::world] or every
    size = cfg.batch_size or max(1, cfg.batch_tokens // (2 * cfg.max_length))
    batches = []
    for b in range(cfg.eval_batches):
        picked = [mine[(b * size + k) % len(mine)] for k in range(size)]
        batches.append(_masked_batch([s for _, s in picked], [i for i, _ in picked], info, cfg.max_length, masking,
                                     torch.Generator().manual_seed(_seed(seed, rank, b, 99))))
    return batches
