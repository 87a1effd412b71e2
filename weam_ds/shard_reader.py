"""Reading a corpus's shards for training: a shard that is missing, does not match its manifest sha256, is not a
readable tar or ends early is logged, skipped and remembered; a sample that breaks the shard format is counted and
skipped. The run goes on (weam_ds.data)."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.shard_format import ShardFormatError, decode_sample
from data_prep.shards import ShardReadError, file_sha256, read_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One shard as its manifest lists it (the path joined to its dataset directory)."""

    path: str
    samples: int
    sha256: str


def sha256_problem(shard: Shard) -> str | None:
    """Why ``shard`` fails its manifest's sha256, or None when it matches."""
    try:
        return None if file_sha256(Path(shard.path)) == shard.sha256 else "sha256 differs from the manifest"
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"


class ShardReader:
    """Opens shards for one slot: skips those that fail the sha256 check and remembers them.

    A shard is bad when it is missing, differs from its manifest sha256, cannot be read as a tar, or ends
    before the number of samples the manifest lists (a truncated or damaged file read without the sha256
    check). Its good samples before the damage are still used; later visits skip it. ``bad`` travels in the
    stream's position, so a resumed stream skips the same shards and the run counts each file once.
    ``sha256_failures`` is the job's check (weam_ds.data.check_shards): the shards that failed it, every other one
    passed; without it (None) each shard is checked here the first time it is opened.
    """

    def __init__(self, verify: bool, stats: Counter, bad: set[str] | None = None,
                 sha256_failures: dict[str, str] | None = None):
        self.verify, self.stats, self.sha256_failures = verify, stats, sha256_failures
        self.bad: set[str] = set(bad or ())
        self.checked: set[str] = set()

    def samples(self, shard: Shard, replay: bool = False) -> Iterator[dict]:
        """The shard's decodable samples; a shard known to be bad yields none, unless ``replay`` (a resumed
        stream re-reading the visit it stopped in, which may have found the damage after its position)."""
        for raw in self.raw(shard, replay):
            sample = self.decode(raw, shard)
            if sample is not None:
                yield sample

    def raw(self, shard: Shard, replay: bool = False) -> Iterator[dict]:
        """The shard's samples as read, not decoded (``samples``)."""
        if shard.path in self.bad and not replay:
            return
        problem = self._sha256_failure(shard)
        if problem is not None:
            return self._skip(shard, problem)
        read, error = 0, None
        try:
            for raw in read_samples(shard.path):
                read += 1
                yield raw
        except (ShardReadError, OSError) as exc:
            error = exc
        if error is not None or read < shard.samples:
            self._skip(shard, f"ends after {read} of its {shard.samples} samples ({error or 'truncated or damaged'})")

    def decode(self, raw: dict, shard: Shard) -> dict | None:
        """The sample's arrays (training reads nothing else), or None, counted, when it breaks the format."""
        try:
            return decode_sample(raw, meta=False)
        except ShardFormatError as exc:
            self.stats["bad_samples"] += 1
            log.warning("skipping a sample of %s: %s", shard.path, exc)
            return None

    def _sha256_failure(self, shard: Shard) -> str | None:
        if not self.verify:
            return None
        if self.sha256_failures is not None:
            return self.sha256_failures.get(shard.path)
        if shard.path in self.checked:
            return None
        problem = sha256_problem(shard)
        if problem is None:
            self.checked.add(shard.path)
        return problem

    def _skip(self, shard: Shard, why: str) -> None:
        if shard.path not in self.bad:
            self.bad.add(shard.path)
            log.warning("skipping shard %s: %s", shard.path, why)

    def all_bad(self, shards: list[Shard]) -> bool:
        return all(s.path in self.bad for s in shards)
