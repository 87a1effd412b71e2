"""Bad input: one clear line on stderr, exit code 2, and no shard listed or left looking complete."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import small_config, write_moses


def run_prep(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess:
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return subprocess.run([sys.executable, "-m", "data_prep", "--config", str(config)],
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("data_prep: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


def assert_nothing_listed(tmp_path: Path) -> None:
    assert not list(tmp_path.rglob("*.tar"))
    manifest = tmp_path / "dataset" / "manifest.json"
    if manifest.exists():
        assert '"complete": false' in manifest.read_text()
        assert '"sha256": "' not in manifest.read_text().split('"pairs"')[1]


def test_moses_line_count_mismatch_names_both_files(tmp_path, ja_pairs):
    src, tgt = write_moses(tmp_path, "bad", ja_pairs[:50])
    tgt.write_text("".join(f"{t}\n" for _, t in ja_pairs[:49]), encoding="utf-8")
    cfg = small_config(tmp_path, ja_pairs)
    cfg["pairs"][1].update(src=str(src), tgt=str(tgt))
    result = run_prep(tmp_path, cfg)
    assert_one_line_error(result, str(src), "50 lines", str(tgt), "49")
    assert_nothing_listed(tmp_path)


def test_undecodable_file_names_file_and_line(tmp_path, ja_pairs):
    src, tgt = write_moses(tmp_path, "latin1", ja_pairs[:20])
    lines = src.read_bytes().split(b"\n")
    lines[6] = "Père Noël".encode("latin-1")
    src.write_bytes(b"\n".join(lines))
    cfg = small_config(tmp_path, ja_pairs)
    cfg["pairs"][1].update(src=str(src), tgt=str(tgt))
    assert_one_line_error(run_prep(tmp_path, cfg), f"{src}:7", "UTF-8")
    assert_nothing_listed(tmp_path)


def test_corpus_empty_after_cleaning(tmp_path, ja_pairs):
    same = [(s, s) for s, _ in ja_pairs[:30]]  # every pair is an untranslated copy
    src, tgt = write_moses(tmp_path, "same", same)
    cfg = small_config(tmp_path, ja_pairs)
    cfg["pairs"][1].update(src=str(src), tgt=str(tgt))
    assert_one_line_error(run_prep(tmp_path, cfg), "ja-en", "no sentence pairs left", "identical=30")
    assert_nothing_listed(tmp_path)


def test_config_errors_name_the_key(tmp_path, ja_pairs):
    cases = [
        ({"aligner": {"method": "eflomal", "symetrize": "union"}}, "aligner.symetrize: unknown key"),
        ({"chunk_size": "big"}, "chunk_size: expected int"),
        ({"shards": {"max_samples": True}}, "shards.max_samples: expected int"),
        ({"tokenizer": {}}, "tokenizer.train/path"),
    ]
    for override, message in cases:
        assert_one_line_error(run_prep(tmp_path, small_config(tmp_path, ja_pairs, **override)), message)
    cfg = small_config(tmp_path, ja_pairs)
    cfg["pairs"][0]["format"] = "xliff"
    assert_one_line_error(run_prep(tmp_path, cfg), "pairs[0].format: unknown input format 'xliff'")
    cfg = small_config(tmp_path, ja_pairs)
    cfg["pairs"][1]["src"] = str(tmp_path / "missing.ja")
    assert_one_line_error(run_prep(tmp_path, cfg), "pairs[1].src: file not found", "missing.ja")
    del cfg["pairs"][1]["src_lang"]
    assert_one_line_error(run_prep(tmp_path, cfg), "pairs[1].src_lang: required key is missing")
    assert_nothing_listed(tmp_path)


def test_held_out_larger_than_corpus(tmp_path, ja_pairs):
    cfg = small_config(tmp_path, ja_pairs[:80], splits={"dev": 50, "test": 50})
    assert_one_line_error(run_prep(tmp_path, cfg), "splits:", "only 80 clean pairs")
    assert_nothing_listed(tmp_path)
