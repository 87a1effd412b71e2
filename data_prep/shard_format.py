"""The shard sample format: the contract between data_prep and everything that reads its shards.

A sample in a WebDataset tar is four files sharing one key (``<pair>-<index>``):

- ``src_ids.npy``, ``tgt_ids.npy``: int32 [L] token ids, special tokens included;
- ``align.npy``: int32 [K, 2] links, (position in src_ids, position in tgt_ids), sorted, unique;
- ``meta.json``: {"src_lang", "tgt_lang", "src_text", "tgt_text"}.

No pickles: arrays are .npy, read as ``np.load(..., allow_pickle=False)`` would read them but faster: each
distinct header is parsed once by numpy's own header reader, an array that is not int32 is refused there, and the
data is taken with ``np.frombuffer``. The shards themselves are read by ``data_prep.shards.read_samples``.
"""
from __future__ import annotations

import functools
import io
import json
import math

import numpy as np

SAMPLE_FILES = ("src_ids.npy", "tgt_ids.npy", "align.npy", "meta.json")
META_KEYS = ("src_lang", "tgt_lang", "src_text", "tgt_text")
_JSON_KEYS = {k: json.dumps(k) for k in META_KEYS}
_json_string = json.encoder.encode_basestring  # non-ASCII kept, as json.dumps(..., ensure_ascii=False)


class ShardFormatError(ValueError):
    """A sample does not follow the shard format; the message names the sample and the file."""


@functools.lru_cache(maxsize=1 << 12)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = "{'descr': '<i4', 'fortran_order': False, 'shape': %r, }" % (shape,)
    # Magic (6) + version (2) + header length (2) + header + '\n', padded to a multiple of 64 bytes.
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")


def npy_bytes(array: np.ndarray) -> bytes:
    """An int32 array as .npy (format version 1.0), without np.save's per-call overhead."""
    array = np.ascontiguousarray(array, dtype="<i4")
    return _npy_header(array.shape) + array.tobytes()


def meta_json(meta: dict[str, str]) -> bytes:
    """The bytes ``json.dumps({k: meta[k] for k in META_KEYS}, ensure_ascii=False)`` gives, at a third of the
    cost: the values are strings, quoted by json's C string encoder."""
    return ("{" + ", ".join(f"{_JSON_KEYS[k]}: {_json_string(meta[k])}" for k in META_KEYS) + "}").encode("utf-8")


def encode_sample(src_ids: np.ndarray, tgt_ids: np.ndarray, links: np.ndarray, meta: dict) -> dict[str, bytes]:
    return {
        "src_ids.npy": npy_bytes(src_ids),
        "tgt_ids.npy": npy_bytes(tgt_ids),
        "align.npy": npy_bytes(links.reshape(-1, 2)),
        "meta.json": meta_json(meta),
    }


_NPY_MAGIC = b"\x93NUMPY"
_NPY_VERSIONS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                 (3, 0): np.lib.format.read_array_header_2_0}  # 3.0 differs only by a UTF-8 header text
_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], int, str]] = {}
"""npy header bytes → (dtype, shape, item count, order), parsed once by numpy: a shard's arrays share a few
hundred distinct headers (one per length), and numpy's parser (ast.literal_eval) cost more than the rest of a
sample's decoding."""


def _npy_layout(header: bytes, sample: dict, name: str) -> tuple[np.dtype, tuple[int, ...], int, str]:
    layout = _NPY_LAYOUTS.get(header)
    if layout is None:
        where = _member(sample, name)
        try:
            stream = io.BytesIO(header)
            version = np.lib.format.read_magic(stream)
            if version not in _NPY_VERSIONS:
                raise ValueError(f"npy format version {version[0]}.{version[1]}")
            shape, fortran_order, dtype = _NPY_VERSIONS[version](stream)
        except ValueError as exc:
            raise ShardFormatError(f"{where}: not a plain .npy array ({exc})") from None
        if dtype != np.int32:
            raise ShardFormatError(f"{where}: dtype is {dtype}, expected int32")
        if len(_NPY_LAYOUTS) >= 1 << 14:
            _NPY_LAYOUTS.clear()
        layout = _NPY_LAYOUTS[header] = dtype, shape, math.prod(shape), "F" if fortran_order else "C"
    return layout


def _load_npy(sample: dict, name: str) -> np.ndarray:
    """What ``np.load(io.BytesIO(data), allow_pickle=False)`` gives for an int32 array (but read-only: a view of
    the member's bytes), or ShardFormatError; the data must be exactly as long as the header says."""
    data = sample[name]
    if data[:6] != _NPY_MAGIC:
        raise ShardFormatError(f"{_member(sample, name)}: not a plain .npy array (no npy magic)")
    # Version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one.
    start = (10 + int.from_bytes(data[8:10], "little") if data[6:7] == b"\x01"
             else 12 + int.from_bytes(data[8:12], "little"))
    dtype, shape, count, order = _npy_layout(data[:start], sample, name)
    if len(data) != start + 4 * count:
        raise ShardFormatError(f"{_member(sample, name)}: {len(data) - start} bytes of data for shape {shape}, "
                               f"expected {4 * count}")
    return np.frombuffer(data, dtype, count, start).reshape(shape, order=order)


def _member(sample: dict, name: str) -> str:
    return f"{sample.get('__key__', '<sample>')}.{name}"


def decode_sample(sample: dict, meta: bool = True) -> dict:
    """Check and decode one raw sample (file name → bytes, as webdataset yields it).

    Returns ``src_ids``, ``tgt_ids``, ``align`` arrays (read-only) and, with ``meta``, the parsed ``meta``;
    raises ShardFormatError naming the sample and its file. Training reads only the arrays, so it leaves
    ``meta.json`` unparsed (parsing it cost a fifth of the stream's time).
    """
    key = sample.get("__key__", "<sample>")
    missing = [f for f in SAMPLE_FILES if f not in sample]
    if missing:
        raise ShardFormatError(f"{key}: missing {', '.join(missing)}")
    src, tgt, align = _load_npy(sample, "src_ids.npy"), _load_npy(sample, "tgt_ids.npy"), _load_npy(sample, "align.npy")
    if src.ndim != 1 or tgt.ndim != 1:
        raise ShardFormatError(f"{key}: src_ids/tgt_ids must be 1-D")
    if align.ndim != 2 or align.shape[1] != 2:
        raise ShardFormatError(f"{key}.align.npy: shape {align.shape}, expected [K, 2]")
    if align.size:
        last_src, last_tgt = align.max(axis=0).tolist()
        if last_src >= len(src) or last_tgt >= len(tgt) or align.min() < 0:
            raise ShardFormatError(f"{key}.align.npy: a link points outside src_ids/tgt_ids")
    decoded = {"src_ids": src, "tgt_ids": tgt, "align": align}
    if meta:
        decoded["meta"] = _meta(sample["meta.json"], key)
    return decoded


def _meta(data: bytes, key: str) -> dict:
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardFormatError(f"{key}.meta.json: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or any(k not in meta for k in META_KEYS):
        raise ShardFormatError(f"{key}.meta.json: needs keys {', '.join(META_KEYS)}")
    return meta
