"""The shard writer: bounds, atomic naming, reproducible bytes, and webdataset/npy compatibility."""
from __future__ import annotations

import json

import numpy as np
import webdataset as wds

from data_prep.shard_format import decode_sample, encode_sample, meta_json
from data_prep.shards import ShardWriter, file_sha256


def _write(root, pairs, max_samples, max_bytes):
    writer = ShardWriter(root, "fr-en/train/fr-en-train-00000", max_samples, max_bytes)
    for k, (src, tgt) in enumerate(pairs):
        src_ids = np.frombuffer(src.encode(), dtype=np.uint8).astype(np.int32)
        tgt_ids = np.frombuffer(tgt.encode(), dtype=np.uint8).astype(np.int32)
        links = np.array([[i, i] for i in range(min(len(src_ids), len(tgt_ids)))], dtype=np.int32)
        meta = {"src_lang": "fr", "tgt_lang": "en", "src_text": src, "tgt_text": tgt}
        writer.write(f"fr-en-{k:09d}", encode_sample(src_ids, tgt_ids, links, meta), {"links": len(links)})
    return writer.close()


def test_byte_bound_splits_shards_and_every_sample_reads_back(tmp_path, fr_pairs):
    records = _write(tmp_path, fr_pairs[:200], max_samples=10_000, max_bytes=64 * 1024)
    assert len(records) > 1 and sum(r["samples"] for r in records) == 200
    assert not list(tmp_path.rglob("*.tmp"))
    decoded = []
    for r in records:
        path = tmp_path / r["path"]
        assert path.stat().st_size == r["bytes"] <= 64 * 1024
        assert file_sha256(path) == r["sha256"]
        decoded += [decode_sample(s) for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert [(d["meta"]["src_text"], d["meta"]["tgt_text"]) for d in decoded] == fr_pairs[:200]
    first = decoded[0]
    assert first["src_ids"].tolist() == list(fr_pairs[0][0].encode())
    assert first["align"].shape == (min(len(first["src_ids"]), len(first["tgt_ids"])), 2)
    assert sum(r["links"] for r in records) == sum(len(d["align"]) for d in decoded)


def test_count_bound_and_identical_bytes_for_identical_samples(tmp_path, fr_pairs):
    first = _write(tmp_path / "a", fr_pairs[:50], max_samples=20, max_bytes=1 << 30)
    second = _write(tmp_path / "b", fr_pairs[:50], max_samples=20, max_bytes=1 << 30)
    assert [r["samples"] for r in first] == [20, 20, 10]
    assert [r["sha256"] for r in first] == [r["sha256"] for r in second]


def test_meta_json_is_what_json_dumps_writes(fr_pairs, ja_pairs):
    tricky = ['quote " backslash \\ tab \t', "control \x01 \x7f line\u2028sep", "日本語 é", ""]
    for src, tgt in fr_pairs[:50] + ja_pairs[:50] + list(zip(tricky, reversed(tricky))):
        meta = {"src_lang": "xx", "tgt_lang": "en", "src_text": src, "tgt_text": tgt}
        assert meta_json(meta) == json.dumps(meta, ensure_ascii=False).encode("utf-8")
        assert json.loads(meta_json(meta)) == meta
