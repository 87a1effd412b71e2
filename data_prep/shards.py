"""Writing WebDataset shards bounded by sample count and bytes, each complete before it is named."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import webdataset as wds

_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK  # tarfile pads the archive's end to whole records


def _member_bytes(size: int) -> int:
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes ``<root>/<prefix>-NNNN.tar`` shards; ``close()`` returns one record per finished shard.

    Each shard is written as ``.tar.tmp`` and renamed when closed, so a listed or visible ``.tar``
    is always whole. Member mtimes are fixed, so the same samples give byte-identical shards.
    """

    def __init__(self, root: Path, prefix: str, max_samples: int, max_bytes: int):
        self.root, self.prefix = root, prefix
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.records: list[dict] = []
        self._tar = None

    def write(self, key: str, files: dict[str, bytes], counts: dict[str, int]) -> None:
        size = sum(_member_bytes(len(v)) for v in files.values())
        if self._tar is not None and (self._current["samples"] >= self.max_samples
                                      or self._current["bytes"] + size + _TAR_RECORD > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._open()
        self._tar.write({"__key__": key, **files})
        self._current["samples"] += 1
        self._current["bytes"] += size
        for name, n in counts.items():
            self._current[name] = self._current.get(name, 0) + n

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.records

    def _open(self) -> None:
        rel = Path(f"{self.prefix}-{len(self.records):04d}.tar")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._stream = open(self._tmp, "wb")
        self._tar = wds.TarWriter(self._stream, encoder=False, mtime=0)
        self._current = {"path": rel.as_posix(), "samples": 0, "bytes": 0}

    def _finish(self) -> None:
        self._tar.close()
        self._stream.close()
        final = self.root / self._current["path"]
        os.replace(self._tmp, final)
        self._current["bytes"] = final.stat().st_size
        self._current["sha256"] = file_sha256(final)
        self.records.append(self._current)
        self._tar = None
