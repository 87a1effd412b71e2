"""Writing WebDataset shards bounded by sample count and bytes, each complete before it is named.

A WebDataset shard is a plain POSIX (ustar) tar whose members are named ``<key>.<field>``. Members
are written here directly, header by header: tarfile's generic writer (which webdataset's TarWriter
uses) spent more time per sample than everything else data_prep does around the aligner. Readers
are unaffected: the tests read these shards back with ``webdataset.WebDataset``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 512
_RECORD = 20 * _BLOCK  # archives end with two zero blocks, padded to a whole record as tar does
_FLUSH = 1 << 20  # samples are small: write and hash them a megabyte at a time
# A ustar header is constant but for name, size and checksum: mode 0444, uid/gid 0, mtime 0, regular file.
_OWNER = b"0000444\0" + b"0000000\0" * 2
_MTIME = b"00000000000\0"
_TAIL = b"0" + b"\0" * 100 + b"ustar\0" + b"00" + b"\0" * 64 + b"0000000\0" * 2 + b"\0" * 167
_CONSTANT_SUM = sum(_OWNER) + sum(_MTIME) + sum(_TAIL) + 8 * ord(" ")  # the checksum field counts as spaces
_PADDING = [b"\0" * k for k in range(_BLOCK)]
_SUFFIXES: dict[str, tuple[bytes, int]] = {}


def sample_members(key: str, files: dict[str, bytes]) -> bytes:
    """A sample's regular-file members ``<key>.<name>``: ustar header + data + padding to a whole
    block, each. Only name, size and checksum vary; the checksum is summed from precomputed parts."""
    raw_key = key.encode("utf-8")
    key_sum = _CONSTANT_SUM + sum(raw_key)
    parts = []
    for name, data in files.items():
        if name not in _SUFFIXES:
            raw = b"." + name.encode("utf-8")
            _SUFFIXES[name] = raw, sum(raw)
        suffix, suffix_sum = _SUFFIXES[name]
        raw_name = raw_key + suffix
        if len(raw_name) > 100:
            raise ValueError(f"tar member name longer than 100 bytes: {key}.{name}")
        size = b"%011o\0" % len(data)
        checksum = b"%06o\0 " % (key_sum + suffix_sum + sum(size))
        parts += (raw_name, _PADDING[100 - len(raw_name)], _OWNER, size, _MTIME, checksum, _TAIL,
                  data, _PADDING[-len(data) % _BLOCK])
    return b"".join(parts)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes ``<root>/<prefix>-NNNN.tar`` shards; ``close()`` returns one record per finished shard.

    Each shard is written as ``.tar.tmp`` and renamed when closed, so a listed or visible ``.tar``
    is always whole. Headers carry no time or owner, so the same samples give byte-identical shards.
    """

    def __init__(self, root: Path, prefix: str, max_samples: int, max_bytes: int):
        self.root, self.prefix = root, prefix
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.records: list[dict] = []
        self._file = None

    def write(self, key: str, files: dict[str, bytes], counts: dict[str, int]) -> None:
        data = sample_members(key, files)
        if self._file is not None and (self._current["samples"] >= self.max_samples
                                       or self._current["bytes"] + len(data) + _RECORD > self.max_bytes):
            self._finish()
        if self._file is None:
            self._open()
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= _FLUSH:
            self._flush()
        self._current["samples"] += 1
        self._current["bytes"] += len(data)
        for name, n in counts.items():
            self._current[name] = self._current.get(name, 0) + n

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish()
        return self.records

    def _open(self) -> None:
        rel = Path(f"{self.prefix}-{len(self.records):04d}.tar")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._buffer, self._buffered = [], 0
        self._current = {"path": rel.as_posix(), "samples": 0, "bytes": 0}

    def _flush(self) -> None:
        data = b"".join(self._buffer)
        self._file.write(data)
        self._hash.update(data)
        self._buffer, self._buffered = [], 0

    def _finish(self) -> None:
        end = b"\0" * (2 * _BLOCK)
        end += b"\0" * (-(self._current["bytes"] + len(end)) % _RECORD)
        self._buffer.append(end)
        self._flush()
        self._file.close()
        os.replace(self._tmp, self.root / self._current["path"])
        self._current["bytes"] += len(end)
        self._current["sha256"] = self._hash.hexdigest()
        self.records.append(self._current)
        self._file = None
