"""Writing WebDataset shards bounded by sample count and bytes, each complete before it is named, and reading them back.

A WebDataset shard is a plain POSIX (ustar) tar whose members are named ``<key>.<field>``. Members
are written here directly, header by header: tarfile's generic writer (which webdataset's TarWriter
uses) spent more time per sample than everything else data_prep does around the aligner. Any tar
reader reads them (the tests read them back with ``webdataset.WebDataset``); training reads them with
:func:`read_samples`, which parses exactly the headers written here (and by tarfile for short ASCII
names) at a few microseconds each, and hands anything else to tarfile: tarfile's stream reader, under
webdataset, took most of the training stream's time.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator
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


class ShardReadError(ValueError):
    """A shard cannot be read on as a tar of samples; the message names the file and what is wrong."""


_READ = 1 << 20  # read a megabyte at a time: members are small and a shard may be hundreds of megabytes
_POSIX_MAGIC = b"ustar\x0000"


def read_samples(path: str | os.PathLike) -> Iterator[dict[str, bytes]]:
    """A shard's samples as webdataset groups them: consecutive regular-file members sharing a key (the
    name up to the first dot of its last component) make one ``{"__key__": key, field: bytes, ...}``.

    Ends quietly where tar readers do (the end-of-archive block, or the end of the file at a member
    boundary), so a shard cut short reads as fewer samples than its manifest lists; raises ShardReadError
    where tarfile raises (a damaged header, a member cut inside its data) and for a field repeated in one
    sample, after the sample being read, and OSError when the file cannot be read.
    """
    sample: dict[str, bytes] = {}
    error = None
    try:
        for name, data in _members(path):
            slash = name.rfind("/")
            dot = name.find(".", slash + 1)
            if dot < 0:
                continue  # no field: not part of a sample (webdataset skips it too)
            key, field = name[:dot], name[dot + 1:]
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            if field in sample:
                raise ShardReadError(f"{path}: sample {key} has two {field} members")
            sample["__key__"] = key
            sample[field] = data
    except ShardReadError as exc:
        error = exc
    # What was read of the last sample comes out also before an error (it is whole if the damage starts at its
    # end), as webdataset gives it; one whose files are missing is then the shard format's to report.
    if sample:
        yield sample
    if error is not None:
        raise error


def _members(path) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file. A header is taken here only when it is exactly what ShardWriter
    (or tarfile, for a short ASCII name) writes: POSIX ustar magic, a regular file, no name prefix, octal
    size, a checksum that matches, and its data whole in the file. From the first header that is not,
    tarfile reads the rest, so pax or GNU extensions read as any tar reader reads them and damage is
    judged as tarfile judges it."""
    with open(path, "rb") as f:
        buf, pos, start = b"", 0, 0  # start: the file offset of buf[0]
        while True:
            if len(buf) - pos < _BLOCK:
                buf, start, pos = buf[pos:] + f.read(_READ), start + pos, 0
                if not buf:
                    return  # the file ends at a member boundary: what tar readers also accept
            size = _plain_member_size(buf, pos)
            if size == _END:
                return
            end = pos + _BLOCK + size
            while size >= 0 and len(buf) < end:  # the member's data runs past the buffer
                more = f.read(max(_READ, end - len(buf)))
                if not more:
                    break
                buf += more
            if size < 0 or len(buf) < end:
                yield from _tarfile_members(f, path, start + pos)
                return
            name = buf[pos:pos + 100].partition(b"\0")[0]
            yield name.decode("utf-8", "surrogateescape"), buf[pos + _BLOCK:end]
            pos = end + (-size % _BLOCK)


# The fields a plain member is recognised by: size, checksum, type flag, magic, the name prefix's first byte.
_USTAR = struct.Struct("124x12s12x8sc100x8s80xc166x")
_END, _OTHER = -2, -1


def _plain_member_size(buf: bytes, pos: int) -> int:
    """The data size of the plain ustar regular-file header at ``buf[pos:]``; ``_END`` for an end-of-archive
    (all-zero) block, ``_OTHER`` for anything else (a short or damaged header, another member type)."""
    if len(buf) - pos < _BLOCK:
        return _OTHER
    size, checksum, kind, magic, prefix = _USTAR.unpack_from(buf, pos)
    if magic != _POSIX_MAGIC or kind != b"0" or prefix != b"\0":
        return _END if buf.count(0, pos, pos + _BLOCK) == _BLOCK else _OTHER
    try:
        size, checksum = int(size.partition(b"\0")[0], 8), int(checksum.partition(b"\0")[0], 8)
    except ValueError:
        return _OTHER
    # The unsigned sum of the header with its checksum field read as spaces; adler32's low half is 1 + the
    # byte sum, exact for 256 bytes (at most 65,280 < its modulus 65,521).
    total = (zlib.adler32(buf[pos:pos + 256]) & 0xFFFF) + (zlib.adler32(buf[pos + 256:pos + _BLOCK]) & 0xFFFF) - 2
    if size < 0 or checksum != total - sum(buf[pos + 148:pos + 156]) + 8 * ord(" "):
        return _OTHER
    return size


def _tarfile_members(f, path, offset: int) -> Iterator[tuple[str, bytes]]:
    f.seek(offset)
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                if info.isreg():
                    yield info.name, tar.extractfile(info).read()
    except tarfile.TarError as exc:
        raise ShardReadError(f"{path}: {exc} (tar member at byte {offset} or after)") from None
