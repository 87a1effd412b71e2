"""The training input: an infinite, resumable WebDataset stream of masked batches.

WebDataset iterators have no state to save, so the stream is built to be a pure function of where it
is. Each rank's batches come from W slots (W = DataLoader workers, at least 1; batch i from slot
i mod W). A slot draws each sample's language pair from the temperature mixture (p ∝ n^α) with an RNG
seeded by (seed, rank, slot, sample index), and takes the pair's next sample from that pair's
sub-stream: a sequence of shard visits (visit v picks a train shard, weighted by size, with an RNG
seeded by (seed, rank, slot, pair, v)), read through a seeded shuffle buffer. Where the draws stand is
therefore (samples drawn, {pair: (visit, samples taken from it)}).

Batches are length-bucketed, so that little of what the encoder processes is padding: a slot draws a
pool of ``bucket_pool`` batches' worth of samples (in the order above, so the mixture is unchanged),
sorts it by length (longer side, then shorter side; ties in an order seeded by (seed, rank, slot,
pool's first draw)), cuts it into batches of ``batch_size`` pairs or of at most ``batch_tokens``
positions as the objective encodes them (its ``Layout``, weam_ds.objectives), and yields them in a seeded order.
A batch also carries the plan that packs its rows' real tokens into fewer rows (``data.pack_rows``, weam_ds.packing):
for weam and mlm its 2B sentences, so that a pair's shorter side is not padded to its longer one; for tlm
its B [x; y] concatenations, so that no pair is padded to the widest source plus the widest target. Each
batch comes with its ``Position``: the draws' state where its pool began and how many of the pool's batches
are out (after a pool's last batch: where the next pool begins). The trainer stores the latest in the
checkpoint; a resumed slot draws the pool again (replaying at most the partly read shard of each pair) and
skips the batches already out. Masking is seeded by (seed, rank, slot, batch index), so
resumed batches are identical.

A shard that is missing, does not match its manifest sha256 (when ``verify_sha256``), or is not a readable
tar is logged, counted and skipped, as is a sample that breaks the shard format: the run goes on
(weam_ds.shard_reader). A training job checks each shard's sha256 once, before it reads any (``check_shards``:
every rank a share, the failures gathered), and hands the verdict to every stream; a stream without one checks
each shard the first time it opens it.

The dev batches are fixed (``eval_batches``): rank r of W evaluates dev samples r, r + W, r + 2W, ... (all of
them, in shard order), as many as its batches take; it reads the dev shards only as far as its last one, and
decodes only its own.
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
from torch.utils.data import IterableDataset, get_worker_info

from data_prep.manifest import is_monolingual, read_manifest, tokenizer_dir
from data_prep.typed_config import ConfigError
from weam_ds import packing
from weam_ds.batch import TokenInfo, collate, mask_batch
from weam_ds.config import DataConfig, MaskingConfig
from weam_ds.mixture import source_probabilities
from weam_ds.objectives import OBJECTIVES, Layout
from weam_ds.shard_reader import Shard, ShardReader, sha256_problem

log = logging.getLogger(__name__)

_MIX_BLOCK = 1024  # pair draws are made this many at a time


@dataclass(frozen=True)
class Corpus:
    """The shards of one split of the selected sources (language pairs and monolingual languages), across
    datasets."""

    pairs: list[str]
    """The sources' keys (``de-en``, or ``sw`` for monolingual text), sorted."""
    shards: dict[str, list[Shard]]
    probabilities: np.ndarray
    """Source sampling probabilities (weam_ds.mixture: ∝ train samples^α, monolingual text weighed apart
    when ``data.monolingual_weight`` is set)."""
    tokenizer_dir: Path

    @classmethod
    def open(cls, cfg: DataConfig, split: str = "train") -> Corpus:
        shards: dict[str, list[Shard]] = {}
        monolingual: set[str] = set()
        tokenizer, tokenizer_sha = None, None
        for directory in map(Path, cfg.datasets):
            manifest = read_manifest(directory)
            sha = manifest["tokenizer"]["sha256"]
            if tokenizer_sha not in (None, sha):
                raise ConfigError(f"data.datasets: {directory} has another tokenizer than {tokenizer}; "
                                  "datasets trained together must share one")
            tokenizer, tokenizer_sha = tokenizer_dir(directory, manifest), sha
            for key, entry in manifest["pairs"].items():
                if cfg.pairs is None or key in cfg.pairs:
                    if is_monolingual(entry):
                        monolingual.add(key)
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
        probabilities = source_probabilities(sizes, [p in monolingual for p in pairs], cfg.temperature,
                                             cfg.monolingual_weight, cfg.monolingual_temperature)
        return cls(pairs, {p: shards[p] for p in pairs}, probabilities, tokenizer)


def check_shards(cfg: DataConfig, rank: int, world: int) -> dict[str, str]:
    """This rank's share of a job's sha256 check: of the train and dev shards of ``cfg`` (dev when evaluated),
    sorted by path, those at rank, rank + W, rank + 2W, ...; returns the ones that fail and why. Gathered over the
    ranks, it is the ``sha256_failures`` of every stream, so that each shard is read for its hash once per job
    instead of once per rank and DataLoader worker."""
    splits = ("train", "dev") if cfg.eval_batches else ("train",)
    shards = {s.path: s for split in splits for s in _split_shards(cfg, split)}
    failures = {}
    for path in sorted(shards)[rank::world]:
        problem = sha256_problem(shards[path])
        if problem is not None:
            failures[path] = problem
    return failures


def _split_shards(cfg: DataConfig, split: str) -> list[Shard]:
    try:
        corpus = Corpus.open(cfg, split)
    except ConfigError:  # no such split: the training (train) or the evaluation (dev) says so
        return []
    return [s for pair in corpus.pairs for s in corpus.shards[pair]]


class NoData(RuntimeError):
    """Every shard of a language pair (or of all of them) is bad: training cannot draw from its mixture."""


class _PairStream:
    """One pair's samples: seeded shard visits through a seeded shuffle buffer; position (visit, taken)."""

    def __init__(self, pair: str, shards: list[Shard], seed: tuple, buffer: int, opener: ShardReader,
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


def padding_counts(batch: dict, objective: str) -> tuple[int, int]:
    """(positions the objective encodes for this batch, how many of them are padding)."""
    if "pack_sentence" in batch:  # packed rows: padding positions hold negative sentence numbers
        sentence = batch["pack_sentence"]
        return sentence.numel(), int((sentence < 0).sum())
    src, tgt = batch["src_attention_mask"], batch["tgt_attention_mask"]
    layout = OBJECTIVES[objective].layout
    encoded = layout.padded(np.full(len(src), src.shape[1]), np.full(len(tgt), tgt.shape[1]))
    return encoded, encoded - int(sum(side.sum() for side in layout.sides(batch)))


def _widths(sample: dict, max_length: int, layout: Layout) -> tuple[int, int]:
    """The sample's source and target lengths as the layout encodes them: truncated, and an empty target
    (monolingual text) as collate's two-token placeholder where the layout encodes it, else 0."""
    tgt = sample.get("tgt_ids")
    if tgt is not None and len(tgt):
        return min(max_length, len(sample["src_ids"])), min(max_length, len(tgt))
    return min(max_length, len(sample["src_ids"])), 2 * layout.monolingual_target


@dataclass(frozen=True)
class Position:
    """What the stream yields beside each batch: where the batch came from and where its slot stands after it."""

    slot: int
    index: int
    """The batch's index among this rank's batches (its masking seed)."""
    resume: dict
    """JSON, kept in the checkpoint: ``TrainStream(positions={slot: resume})`` continues after this batch.
    ``pool``: the stream state where the slot's current pool begins (samples drawn, {pair: (visit, taken)},
    shards known bad then); ``emitted``: batches of that pool already yielded; ``bad_shards``: every shard
    found bad so far."""
    stats: dict
    """The slot's counters (bad samples) since this process started it."""


class _Mixture:
    """One slot's samples in draw order: the pair from the temperature mixture (drawn ``_MIX_BLOCK`` at a
    time, seeded by block), the sample from that pair's own stream. ``state()`` is where it stands."""

    def __init__(self, corpus: Corpus, seed: tuple, buffer: int, opener: ShardReader, start: dict, stats: Counter):
        self.corpus, self.seed, self.buffer, self.opener, self.stats = corpus, seed, buffer, opener, stats
        self.drawn, self.start_pairs = start.get("drawn", 0), start.get("pairs", {})
        self.streams: dict[str, _PairStream] = {}
        self.block, self.draws = -1, None

    def next(self) -> tuple[int, dict]:
        """(pair index, sample)."""
        if self.drawn // _MIX_BLOCK != self.block:
            self.block = self.drawn // _MIX_BLOCK
            rng = np.random.default_rng((*self.seed, self.block))
            self.draws = rng.choice(len(self.corpus.pairs), _MIX_BLOCK, p=self.corpus.probabilities)
        index = int(self.draws[self.drawn % _MIX_BLOCK])
        sample = self._stream(index).next()
        self.drawn += 1
        return index, sample

    def _stream(self, index: int) -> _PairStream:
        pair = self.corpus.pairs[index]
        if pair not in self.streams:
            # A resumed pair stream re-reads what it had taken of its shard: counted before the checkpoint.
            counted = self.stats.copy()
            self.streams[pair] = _PairStream(pair, self.corpus.shards[pair], (*self.seed, index), self.buffer,
                                             self.opener, self.start_pairs.get(pair))
            self.stats.clear()
            self.stats.update(counted)
        return self.streams[pair]

    def state(self) -> dict:
        """JSON: the mixture's draws, each pair's (visit, taken), the shards known bad. Pairs not drawn since
        this slot (re)started keep the position they had."""
        pairs = {p: list(v) for p, v in self.start_pairs.items()}
        pairs.update({p: [s.visit, s.taken] for p, s in self.streams.items()})
        return {"drawn": self.drawn, "pairs": pairs, "bad_shards": sorted(self.opener.bad)}


class TrainStream(IterableDataset):
    """Masked training batches for one rank (see the module docstring), each yielded with its ``Position``;
    iterate it through a DataLoader with ``batch_size=None``. ``positions`` (slot → ``Position.resume``) and
    ``first_batch`` resume it; ``objective`` says how batches are encoded (its ``Layout``), which the
    ``batch_tokens`` budget and the length bucketing count in; ``sha256_failures``: the job's check of the shards
    (``check_shards``), if it made one."""

    def __init__(self, corpus: Corpus, cfg: DataConfig, masking: MaskingConfig, info: TokenInfo, seed: int,
                 rank: int, positions: dict[int, dict] | None = None, first_batch: int = 0,
                 objective: str = "weam", sha256_failures: dict[str, str] | None = None):
        self.corpus, self.cfg, self.masking, self.info = corpus, cfg, masking, info
        self.sha256_failures = sha256_failures
        self.seed, self.rank = seed, rank
        self.slots = max(1, cfg.workers)
        self.positions = positions or {}
        self.first_batch = first_batch
        self.layout = OBJECTIVES[objective].layout
        self.micro = cfg.micro_batch

    def __iter__(self) -> Iterator[tuple[dict, Position]]:
        worker = get_worker_info()
        if (worker.num_workers if worker else 1) != self.slots:
            raise RuntimeError(f"TrainStream expects {self.slots} DataLoader workers")
        # The DataLoader asks worker w for batches first_batch + w, first_batch + w + W, ...
        w = worker.id if worker else 0
        slot = (self.first_batch + w) % self.slots
        yield from self._slot(slot, self.first_batch + w)

    def _slot(self, slot: int, batch_index: int) -> Iterator[tuple[dict, Position]]:
        resume = self.positions.get(slot, {})
        start = resume.get("pool", resume)  # a position written before pools stands at a pool's start
        emitted = resume.get("emitted", 0)
        stats = Counter()
        opener = ShardReader(self.cfg.verify_sha256, stats, start.get("bad_shards"), self.sha256_failures)
        mixture = _Mixture(self.corpus, (self.seed, self.rank, slot), self.cfg.shuffle_buffer, opener, start, stats)
        while True:
            try:
                pool = self._pool(mixture)
            except NoData:
                raise NoData(self._no_data_message(opener)) from None
            end = mixture.state()
            batches = self._buckets(pool, _seed(self.seed, self.rank, slot, "pool", start.get("drawn", 0)))
            if emitted:  # resumed inside this pool: what drawing it counted is in the checkpoint already
                stats.clear()
            for j in range(emitted, len(batches)):
                members = [pool[i] for i in batches[j]]
                generator = torch.Generator().manual_seed(_seed(self.seed, self.rank, slot, batch_index))
                batch = _masked_batch([s for _, s in members], [i for i, _ in members], self.info,
                                      self.cfg.max_length, self.masking, generator)
                if self.cfg.pack_rows:
                    batch.update(packing.pack_batch(self.layout.segments(batch), self._row_capacity()))
                last = j + 1 == len(batches)
                resume = {"pool": end if last else start, "emitted": 0 if last else j + 1,
                          "bad_shards": end["bad_shards"]}
                yield batch, Position(slot, batch_index, resume, dict(stats))
                batch_index += self.slots
            start, emitted = end, 0

    def _pool(self, mixture: _Mixture) -> list[tuple[int, dict]]:
        """The next ``bucket_pool`` batches' worth of (pair index, sample), in draw order: that many batches
        of ``batch_size`` samples, or samples whose encoded positions add up to that many ``batch_tokens``."""
        if self.micro.pairs is not None:
            return [mixture.next() for _ in range(self.cfg.bucket_pool * self.micro.pairs)]
        pool, budget, filled = [], self.cfg.bucket_pool * self.micro.tokens, 0
        while filled < budget:
            pool.append(mixture.next())
            src, tgt = _widths(pool[-1][1], self.cfg.max_length, self.layout)
            filled += self._encoded(np.array([src]), np.array([tgt]))
        return pool

    def _row_capacity(self) -> int:
        """Positions a packed row holds at most."""
        return self.layout.row_capacity * self.cfg.max_length

    def _encoded(self, src: np.ndarray, tgt: np.ndarray) -> int:
        """Positions the objective encodes for samples whose sides are ``src`` and ``tgt`` tokens long
        (``_widths``): their packed rows' R × W with ``data.pack_rows``, else their padded rows."""
        if self.cfg.pack_rows:
            return packing.positions(self.layout.segment_widths(src, tgt), self._row_capacity())
        return self.layout.padded(src, tgt)

    def _buckets(self, pool: list[tuple[int, dict]], seed: int) -> list[list[int]]:
        """The pool cut into batches of near one width: sorted by length (ties in a seeded random order), cut
        every ``batch_size`` samples or where the next sample would take the batch past ``batch_tokens`` encoded
        positions (a lone sample wider than that makes a batch of its own); the batches in a seeded random
        order, each listing its samples in draw order."""
        rng = np.random.default_rng(seed)
        src, tgt = np.array([_widths(s, self.cfg.max_length, self.layout) for _, s in pool]).reshape(-1, 2).T
        order = rng.permutation(len(pool))
        # By the longer side (the width of weam's and mlm's rows), then by the shorter one (tlm's rows hold
        # both); this pads tlm less than sorting by source then target length unless pools are very large.
        longer, shorter = np.maximum(src[order], tgt[order]), np.minimum(src[order], tgt[order])
        order = order[np.lexsort((shorter, longer))]
        if self.micro.pairs is not None:
            batches = [order[k:k + self.micro.pairs] for k in range(0, len(order), self.micro.pairs)]
        else:
            batches = self._cut(order, src, tgt)
        return [sorted(int(i) for i in batches[k]) for k in rng.permutation(len(batches))]

    def _cut(self, order: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> list[np.ndarray]:
        """The sorted pool cut into batches of at most ``batch_tokens`` encoded positions: from each batch's first
        sample, the longest run that fits, found by doubling its length and then bisecting (a batch's encoded
        positions grow with every sample it takes). A lone sample over the budget makes a batch of its own."""
        def fits(start: int, end: int) -> bool:
            batch = order[start:end]
            return self._encoded(src[batch], tgt[batch]) <= self.micro.tokens

        batches, start = [], 0
        while start < len(order):
            end, step = start + 1, 1
            while end < len(order) and fits(start, min(end + step, len(order))):
                end, step = min(end + step, len(order)), 2 * step
            over = min(end + step, len(order))  # past end only when it does not fit
            while over - end > 1:
                middle = (end + over) // 2
                end, over = (middle, over) if fits(start, middle) else (end, middle)
            batches.append(order[start:end])
            start = end
        return batches

    def _no_data_message(self, opener: ShardReader) -> str:
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


def _seed(*parts: int | str) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def eval_batches(cfg: DataConfig, masking: MaskingConfig, info: TokenInfo, rank: int, world: int, seed: int,
                 sha256_failures: dict[str, str] | None = None) -> list[dict]:
    """A fixed set of masked dev batches for this rank (the same every evaluation). Every rank gets
    ``cfg.eval_batches`` batches, cycling through its share of the dev pairs if that is short, so that
    ZeRO-3's collective forward passes stay in step. ``sha256_failures``: the job's check (``check_shards``)."""
    if cfg.eval_batches == 0:
        return []
    try:
        corpus = Corpus.open(cfg, split="dev")
    except ConfigError as exc:
        log.warning("no evaluation: %s (data_prep's splits.dev makes a dev split)", exc)
        return []
    size = cfg.micro_batch.full_length_pairs(cfg.max_length)
    need = cfg.eval_batches * size
    # A rank's share; a rank whose share is empty (fewer dev samples than ranks) evaluates them all.
    mine = (_dev_share(corpus, cfg, sha256_failures, rank, world, need)
            or _dev_share(corpus, cfg, sha256_failures, 0, 1, need))
    if not mine:
        raise NoData(f"every dev shard is bad ({', '.join(corpus.pairs)}; see the log): rebuild the dataset, "
                     "or set data.eval_batches: 0")
    batches = []
    for b in range(cfg.eval_batches):
        picked = [mine[(b * size + k) % len(mine)] for k in range(size)]
        batches.append(_masked_batch([s for _, s in picked], [i for i, _ in picked], info, cfg.max_length, masking,
                                     torch.Generator().manual_seed(_seed(seed, rank, b, 99))))
    return batches


def _dev_share(corpus: Corpus, cfg: DataConfig, sha256_failures: dict[str, str] | None, rank: int, world: int,
               need: int) -> list[tuple[int, dict]]:
    """(pair index, sample) of dev samples rank, rank + W, rank + 2W, ... in shard order (pairs sorted, each
    pair's shards in manifest order; a bad shard's samples not counted), the first ``need`` of them: the shards
    are read only as far as the last, and only this rank's samples are decoded. One that breaks the shard
    format leaves a gap in the share (it is counted where it lies, to keep the others' samples the same)."""
    opener = ShardReader(cfg.verify_sha256, Counter(), sha256_failures=sha256_failures)
    share, index = [], 0
    for pair_index, pair in enumerate(corpus.pairs):
        for shard in corpus.shards[pair]:
            for raw in opener.raw(shard):
                if index % world == rank and (sample := opener.decode(raw, shard)) is not None:
                    share.append((pair_index, sample))
                    if len(share) == need:
                        return share
                index += 1
    return share
