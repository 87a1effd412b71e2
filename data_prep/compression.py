"""Compressed corpora: gzip, xz, bzip2 and zstd, told apart by their magic bytes (not by the file name) and
read as streams, so that a 100 GB ``.xz`` is never decompressed to disk. A cut-off or corrupt archive stops
the read with a one-line ``PrepError`` naming the file, the last line read whole and the compressed byte
where the decoder gave up.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from data_prep import PrepError

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"))
# What each decoder raises on bad data (gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors
# without an errno; EOFError is the end of the file before the end of the compressed stream).
_DECODE_ERRORS = (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, zipfile.BadZipFile, OSError)
_READ_SIZE = 1 << 16


class CorruptInput(PrepError):
    """An input whose compressed data broke off or is damaged; ``problem`` says where, without the path."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.problem = problem


def compression(path: str) -> str | None:
    """The compression of the file at ``path`` by its magic bytes (gzip, xz, bzip2, zstd), or None."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def open_input(path: str) -> BinaryIO:
    """``path`` as a binary stream of its content, decompressed on the fly if it is compressed."""
    kind = compression(path)
    raw = open(path, "rb")
    if kind is None:
        return raw
    decoded = {"gzip": lambda: gzip.GzipFile(fileobj=raw), "xz": lambda: lzma.LZMAFile(raw),
               "bzip2": lambda: bz2.BZ2File(raw), "zstd": lambda: _ZstdFrames(raw)}[kind]()
    return _checked(decoded, path, kind, raw.tell, close=raw.close)


def open_member(archive: zipfile.ZipFile, member: str) -> BinaryIO:
    """One member of an open zip archive, streamed, with the same one-line errors as ``open_input``."""
    try:
        stream = archive.open(member)
    except (NotImplementedError, zipfile.BadZipFile) as exc:  # e.g. deflate64, which zipfile cannot read
        raise PrepError(f"{archive.filename}: {member}: cannot read ({exc})") from None
    return _checked(stream, f"{archive.filename}: {member}", "zip", None)


def _checked(stream, name: str, kind: str, position: Callable[[], int] | None,
             close: Callable[[], None] | None = None) -> BinaryIO:
    return io.BufferedReader(_CheckedStream(stream, name, kind, position, close), _READ_SIZE)


class _CheckedStream(io.RawIOBase):
    """A decoder's output, counting the lines it has handed on, so that a decoding failure can say after
    which line the data broke (every line before it came out whole)."""

    def __init__(self, stream, name: str, kind: str, position: Callable[[], int] | None,
                 close: Callable[[], None] | None):
        self._stream, self._name, self._kind, self._position, self._close = stream, name, kind, position, close
        self._lines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._stream.read(len(buffer))
        except _DECODE_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a failing disk, not bad data: the readers name it as such
            raise self._failure(exc) from None
        buffer[:len(data)] = data
        self._lines += data.count(b"\n")
        return len(data)

    def _failure(self, exc: Exception) -> CorruptInput:
        state = "truncated" if isinstance(exc, EOFError) else "corrupt"
        where = "" if self._position is None else f"at compressed byte {self._position()}: "
        return CorruptInput(self._name, f"{state} {self._kind} data after line {self._lines} "
                                        f"({where}{str(exc) or type(exc).__name__})")

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            if self._close:
                self._close()
        super().close()


class _ZstdFrames:
    """The frames of a zstd file one after another. zstandard's stream_reader ends quietly where a file was
    cut off in mid-frame; this says so with an EOFError, as gzip, xz and bzip2 do."""

    def __init__(self, raw: io.BufferedReader):
        self._raw, self._frame = raw, zstandard.ZstdDecompressor().decompressobj()
        self._out, self._pos = b"", 0

    def read(self, size: int) -> bytes:
        while self._pos == len(self._out):
            if self._frame.eof:  # another frame may follow, in what the last read left or in the file
                data = self._frame.unused_data
                if not data and not self._raw.peek(1):
                    return b""
                self._frame = zstandard.ZstdDecompressor().decompressobj()
            else:
                data = self._raw.read(_READ_SIZE)
                if not data:
                    raise EOFError("the file ends inside a zstd frame")
            self._out, self._pos = self._frame.decompress(data), 0
        out = self._out[self._pos:self._pos + size]
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._raw.close()
