"""The shard sample format: the contract between data_prep and everything that reads its shards.

A sample in a WebDataset tar is four files sharing one key (``<pair>-<index>``):

- ``src_ids.npy``, ``tgt_ids.npy``: int32 [L] token ids, special tokens included;
- ``align.npy``: int32 [K, 2] links, (position in src_ids, position in tgt_ids), sorted, unique;
- ``meta.json``: {"src_lang", "tgt_lang", "src_text", "tgt_text"}.

No pickles: arrays are .npy and are loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import functools
import io
import json

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


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ShardFormatError(f"{where}: not a plain .npy array ({exc})") from None
    if array.dtype != np.int32:
        raise ShardFormatError(f"{where}: dtype is {array.dtype}, expected int32")
    return array


def decode_sample(sample: dict) -> dict:
    """Check and decode one raw sample (file name → bytes, as webdataset yields it).

    Returns ``src_ids``, ``tgt_ids``, ``align`` arrays and ``meta``; raises ShardFormatError.
    """
    key = sample.get("__key__", "<sample>")
    missing = [f for f in SAMPLE_FILES if f not in sample]
    if missing:
        raise ShardFormatError(f"{key}: missing {', '.join(missing)}")
    src = _load_npy(sample["src_ids.npy"], f"{key}.src_ids.npy")
    tgt = _load_npy(sample["tgt_ids.npy"], f"{key}.tgt_ids.npy")
    align = _load_npy(sample["align.npy"], f"{key}.align.npy")
    if src.ndim != 1 or tgt.ndim != 1:
        raise ShardFormatError(f"{key}: src_ids/tgt_ids must be 1-D")
    if align.ndim != 2 or align.shape[1] != 2:
        raise ShardFormatError(f"{key}.align.npy: shape {align.shape}, expected [K, 2]")
    if align.size and (align.min() < 0 or align[:, 0].max() >= len(src) or align[:, 1].max() >= len(tgt)):
        raise ShardFormatError(f"{key}.align.npy: a link points outside src_ids/tgt_ids")
    try:
        meta = json.loads(sample["meta.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardFormatError(f"{key}.meta.json: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or any(k not in meta for k in META_KEYS):
        raise ShardFormatError(f"{key}.meta.json: needs keys {', '.join(META_KEYS)}")
    return {"src_ids": src, "tgt_ids": tgt, "align": align, "meta": meta}
