"""The whole build on real translations: manifest, shards, splits, tokenizer, resume."""
from __future__ import annotations

import logging
import os
import re
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
from data_prep.output_dirs import claim
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


@pytest.mark.xdist_group("small_dataset_build")  # both take its build lock: one at a time
def test_rerun_of_complete_dataset_does_nothing(small_dataset):
    dataset, cfg, _ = small_dataset
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    report = build(cfg)
    assert report.wall == {} and report.manifest["complete"]
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


@pytest.mark.xdist_group("small_dataset_build")  # both take its build lock: one at a time
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


def _ja_six_chunks(tmp_path, ja_pairs, workers):
    cfg = small_config(tmp_path, ja_pairs, chunk_size=100, workers=workers, splits={"dev": 20, "test": 20})
    cfg["pairs"] = cfg["pairs"][1:]  # ja-en only: 6 chunks
    return cfg, Path(cfg["output_dir"])


def _mtimes(paths) -> dict:
    return {p: p.stat().st_mtime_ns for p in paths}


def _check_complete(dataset: Path) -> dict:
    entry = read_manifest(dataset)["pairs"]["ja-en"]
    assert entry["chunks_done"] == list(range(6))
    assert sum(s["samples"] for s in entry["shards"]) == 600
    listed = {s["path"] for s in entry["shards"]}
    assert {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.tar")} == listed
    assert not list(dataset.rglob("*.tmp"))
    return entry


@pytest.mark.slow
def test_build_killed_while_aligning_keeps_finished_alignments(tmp_path, ja_pairs):
    cfg, dataset = _ja_six_chunks(tmp_path, ja_pairs, workers=1)
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "data_prep", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    aligned = []
    while time.monotonic() < deadline and proc.poll() is None:
        aligned = sorted((dataset / ".work" / "ja-en").glob("*.aligned.npz"))
        if len(aligned) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert 2 <= len(aligned) < 6, "the build finished aligning before it could be interrupted"
    assert not read_manifest(dataset, require_complete=False)["complete"]

    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _check_complete(dataset)
    assert not (dataset / ".work").exists()  # the work files went once the dataset was complete
    # Alignments finished before the kill were reused (their files are gone now; the log says so).
    reused = re.search(r"(\d+) chunks were aligned by an earlier run", resumed.stderr)
    assert reused and int(reused[1]) >= len(aligned)


@pytest.mark.slow
def test_build_stopped_while_encoding_does_not_redo_finished_chunks(tmp_path, ja_pairs):
    cfg, dataset = _ja_six_chunks(tmp_path, ja_pairs, workers=1)
    # Chunk 3 cannot write its first shard: a directory is in the way.
    claim(dataset, "data_prep")  # data_prep's directory (as a build marks it first), the blocker in it
    blocker = dataset / "ja-en" / "train" / "ja-en-train-00003-0000.tar"
    blocker.mkdir(parents=True)
    with pytest.raises(OSError, match="ja-en-train-00003-0000.tar"):
        build(config_from_dict(cfg))
    stopped = read_manifest(dataset, require_complete=False)["pairs"]["ja-en"]
    assert 1 <= len(stopped["chunks_done"]) < 6 and 3 not in stopped["chunks_done"]
    kept = _mtimes(dataset / s["path"] for s in stopped["shards"])
    aligned = _mtimes((dataset / ".work" / "ja-en").glob("*.aligned.npz"))
    assert len(aligned) == 6

    blocker.rmdir()
    report = build(config_from_dict(cfg))
    _check_complete(dataset)
    assert _mtimes(kept) == kept  # finished chunks were not redone
    assert report.worker["align"] == 0  # nor was any alignment


@pytest.mark.slow
def test_failed_build_does_not_lock_its_config(tmp_path, ja_pairs, caplog):
    cfg, dataset = _ja_six_chunks(tmp_path, ja_pairs, workers=1)
    with pytest.raises(PrepError, match="tokenizer.train.vocab_size"):
        build(config_from_dict({**cfg, "tokenizer": {"train": {"vocab_size": 64}}}))
    (dataset / "notes.txt").write_text("the user's own file")  # added to data_prep's directory since
    assert not read_manifest(dataset, require_complete=False)["complete"]

    with caplog.at_level(logging.WARNING, logger="data_prep.build"):
        build(config_from_dict(cfg))  # the fixed config, into the same directory
    assert "unfinished build" in caplog.text and "another config" in caplog.text
    for shard in _check_complete(dataset)["shards"]:
        assert file_sha256(dataset / shard["path"]) == shard["sha256"]
    assert (dataset / "notes.txt").read_text() == "the user's own file"


@pytest.mark.slow
def test_unfinished_build_from_another_config_leaves_no_stale_shards(tmp_path, ja_pairs):
    cfg, dataset = _ja_six_chunks(tmp_path, ja_pairs, workers=1)
    claim(dataset, "data_prep")  # data_prep's directory (as a build marks it first), the blocker in it
    blocker = dataset / "ja-en" / "train" / "ja-en-train-00003-0000.tar"
    blocker.mkdir(parents=True)
    with pytest.raises(OSError):
        build(config_from_dict(cfg))
    # Written but unlisted by the stopped build; with 200 pairs per chunk there is no chunk 5.
    assert list(dataset.rglob("ja-en-train-00005-*.tar"))

    build(config_from_dict({**cfg, "chunk_size": 200}))
    entry = read_manifest(dataset)["pairs"]["ja-en"]
    assert entry["chunks"] == 3 and sum(s["samples"] for s in entry["shards"]) == 600
    assert {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.tar")} == {s["path"] for s in entry["shards"]}


@pytest.mark.slow
def test_eflomal_writes_its_files_under_the_dataset_not_tmp(tmp_path, ja_pairs):
    cfg, dataset = _ja_six_chunks(tmp_path, ja_pairs, workers=2)
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    temp = tmp_path / "system-temp"
    temp.mkdir()
    created = temp.stat().st_mtime_ns
    result = subprocess.run([sys.executable, "-m", "data_prep", "--config", str(config)], capture_output=True,
                            text=True, env={**os.environ, "TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    # Nothing is left there, and nothing was made there even for a while (that would change the mtime),
    # so a killed build leaves its files only in .work/, which a later run cleans up.
    assert not list(temp.iterdir()) and temp.stat().st_mtime_ns == created
    _check_complete(dataset)


def test_a_second_build_into_the_same_directory_is_refused_while_one_runs(tmp_path, ja_pairs):
    import fcntl

    cfg, dataset = _ja_six_chunks(tmp_path, ja_pairs, workers=1)
    claim(dataset, "data_prep")  # what a running build marked and holds
    with open(dataset / ".build.lock", "w") as running:
        fcntl.flock(running, fcntl.LOCK_EX)
        with pytest.raises(PrepError, match="another data_prep build is running there"):
            build(config_from_dict(cfg))
    assert not (dataset / "manifest.json").exists()
