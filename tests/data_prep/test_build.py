"""The whole build on real translations: manifest, shards, splits, tokenizer, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from transformers import AutoTokenizer

from conftest import small_config
from data_prep import PrepError
from data_prep.build import build
from data_prep.config import config_from_dict
from data_prep.manifest import read_manifest, shard_paths
from data_prep.shard_format import SAMPLE_FILES, decode_sample
from data_prep.shards import file_sha256


def _samples(dataset: Path, manifest: dict, pair: str, split: str) -> list[dict]:
    urls = [str(p) for p in shard_paths(manifest, dataset, pair, split)]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_manifest_counts_add_up(small_dataset):
    dataset, cfg, _ = small_dataset
    manifest = read_manifest(dataset)
    assert set(manifest["pairs"]) == {"fr-en", "ja-en"}
    for key, entry in manifest["pairs"].items():
        splits = entry["splits"]
        assert splits["dev"]["samples"] == cfg.splits.dev
        assert splits["test"]["samples"] == cfg.splits.test
        assert sum(s["samples"] for s in splits.values()) == entry["clean_pairs"]
        assert entry["input_records"] == entry["clean_pairs"] + sum(entry["dropped"].values())
        assert entry["chunks_done"] == list(range(entry["chunks"]))
    # ja-en came from 600 already-clean pairs; fr-en from the whole catalogs, which need cleaning.
    assert manifest["pairs"]["ja-en"]["clean_pairs"] == 600
    assert manifest["pairs"]["fr-en"]["dropped"]["identical"] > 0


def test_shards_are_complete_and_match_manifest(small_dataset):
    dataset, cfg, _ = small_dataset
    manifest = read_manifest(dataset)
    for key, entry in manifest["pairs"].items():
        for shard in entry["shards"]:
            path = dataset / shard["path"]
            assert file_sha256(path) == shard["sha256"]
            assert path.stat().st_size == shard["bytes"] <= cfg.shards.max_bytes
            assert 0 < shard["samples"] <= cfg.shards.max_samples
            assert len(list(wds.WebDataset(str(path), shardshuffle=False))) == shard["samples"]
    # fr-en has more train pairs than one shard holds, so the count bound split it.
    assert len([s for s in manifest["pairs"]["fr-en"]["shards"] if s["split"] == "train"]) > 1
    assert not list(dataset.rglob("*.tmp")) and not (dataset / ".work").exists()


def test_samples_follow_the_shard_format(small_dataset):
    dataset, _, _ = small_dataset
    manifest = read_manifest(dataset)
    tokenizer = AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))
    for key in manifest["pairs"]:
        samples = _samples(dataset, manifest, key, "train")
        with_links = 0
        for raw in samples:
            assert set(raw) - {"__key__", "__url__", "__local_path__"} == set(SAMPLE_FILES)
            sample = decode_sample(raw)
            meta = sample["meta"]
            assert (meta["src_lang"], meta["tgt_lang"]) == tuple(key.split("-"))
            # The ids are exactly what the saved Hugging Face tokenizer gives for the text.
            assert sample["src_ids"].tolist() == tokenizer(meta["src_text"])["input_ids"]
            assert sample["tgt_ids"].tolist() == tokenizer(meta["tgt_text"])["input_ids"]
            align = sample["align"]
            specials = {tokenizer.bos_token_id, tokenizer.eos_token_id}
            assert not specials & set(sample["src_ids"][align[:, 0]].tolist())
            assert not specials & set(sample["tgt_ids"][align[:, 1]].tolist())
            assert np.array_equal(align, np.unique(align, axis=0))
            with_links += len(align) > 0
        assert with_links > 0.95 * len(samples)


def test_held_out_pairs_are_disjoint_from_train(small_dataset):
    dataset, _, _ = small_dataset
    manifest = read_manifest(dataset)
    for key in manifest["pairs"]:
        texts = {split: {(decode_sample(s)["meta"]["src_text"], decode_sample(s)["meta"]["tgt_text"])
                         for s in _samples(dataset, manifest, key, split)} for split in ("train", "dev", "test")}
        assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
        assert not texts["dev"] & texts["test"]


def test_rerun_of_complete_dataset_does_nothing(small_dataset):
    dataset, cfg, _ = small_dataset
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    report = build(cfg)
    assert report.wall == {} and report.manifest["complete"]
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_changed_config_refuses_to_reuse_output(small_dataset):
    dataset, cfg, _ = small_dataset
    changed = config_from_dict({**_as_dict(cfg), "splits": {"dev": 41, "test": 60}})
    with pytest.raises(PrepError, match="another config"):
        build(changed)


def _as_dict(cfg):
    from data_prep.typed_config import to_dict
    return to_dict(cfg)


def test_existing_tokenizer_is_copied_and_used(small_dataset, tmp_path, ja_pairs):
    dataset, _, _ = small_dataset
    cfg = small_config(tmp_path, ja_pairs[:300], tokenizer={"path": str(dataset / "tokenizer")}, workers=1,
                       pairs=small_config(tmp_path, ja_pairs[:300])["pairs"][1:])
    report = build(config_from_dict(cfg))
    tok = report.manifest["tokenizer"]
    assert tok["source"] == str((dataset / "tokenizer").resolve())
    assert tok["vocab_size"] == read_manifest(dataset)["tokenizer"]["vocab_size"]
    ours, theirs = (AutoTokenizer.from_pretrained(str(d / "tokenizer")) for d in (tmp_path / "dataset", dataset))
    text = ja_pairs[0][0]
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]


def test_killed_build_resumes_without_redoing_finished_chunks(tmp_path, ja_pairs):
    cfg = small_config(tmp_path, ja_pairs, chunk_size=100, workers=1, splits={"dev": 20, "test": 20})
    cfg["pairs"] = cfg["pairs"][1:]  # ja-en only: 6 chunks
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    dataset = Path(cfg["output_dir"])
    cmd = [sys.executable, "-m", "data_prep", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    done_before = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done_before = json.loads((dataset / "manifest.json").read_text())["pairs"]["ja-en"]["chunks_done"]
        except (FileNotFoundError, KeyError, ValueError):
            done_before = []
        if len(done_before) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert 2 <= len(done_before) < 6, "the build finished before it could be interrupted"
    killed = read_manifest(dataset, require_complete=False)
    assert not killed["complete"]
    kept = {s["path"]: (dataset / s["path"]).stat().st_mtime_ns for s in killed["pairs"]["ja-en"]["shards"]}

    assert subprocess.run(cmd, capture_output=True).returncode == 0
    manifest = read_manifest(dataset)
    entry = manifest["pairs"]["ja-en"]
    assert entry["chunks_done"] == list(range(6))
    assert sum(s["samples"] for s in entry["shards"]) == 600
    for path, mtime in kept.items():  # chunks finished before the kill were not redone
        assert (dataset / path).stat().st_mtime_ns == mtime
    listed = {s["path"] for s in entry["shards"]}
    assert {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.tar")} == listed


def test_tokenizer_changed_under_written_shards_is_refused(tmp_path, ja_pairs):
    cfg = small_config(tmp_path, ja_pairs[:300], workers=1)
    cfg["pairs"] = cfg["pairs"][1:]
    build(config_from_dict(cfg))
    dataset = Path(cfg["output_dir"])
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["complete"] = False  # as if the build had been interrupted after its chunks
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    (dataset / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(PrepError, match="shards were already written with it"):
        build(config_from_dict(cfg))
