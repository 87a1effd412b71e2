"""Bad input: one clear line on stderr, exit code 2, and no shard listed or left looking complete."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import small_config, write_moses
from data_prep.manifest import read_manifest


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


def test_undecodable_lines_are_dropped_and_named(tmp_path, ja_pairs):
    src, tgt = write_moses(tmp_path, "latin1", ja_pairs[:150])
    lines = src.read_bytes().split(b"\n")
    for k in (6, 9):
        lines[k] = "Père Noël".encode("latin-1")
    src.write_bytes(b"\n".join(lines))
    cfg = small_config(tmp_path, ja_pairs, splits={"dev": 10, "test": 10}, workers=1)
    cfg["pairs"] = [{**cfg["pairs"][1], "src": str(src), "tgt": str(tgt)}]
    result = run_prep(tmp_path, cfg)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "not valid UTF-8" in line]
    assert len(warnings) == 1 and str(src) in warnings[0] and "lines 7, 10" in warnings[0]
    entry = read_manifest(tmp_path / "dataset")["pairs"]["ja-en"]
    assert entry["input_records"] == 150 and entry["dropped"] == {"malformed": 2}


def test_utf16_file_is_refused_with_what_it_is(tmp_path, ja_pairs):
    src, tgt = write_moses(tmp_path, "utf16", ja_pairs[:150])
    src.write_bytes(src.read_text(encoding="utf-8").encode("utf-16"))  # little-endian with its BOM
    cfg = small_config(tmp_path, ja_pairs)
    cfg["pairs"][1].update(src=str(src), tgt=str(tgt))
    result = run_prep(tmp_path, cfg)
    assert_one_line_error(result, f"pairs[1].src: {src}: UTF-16 (little-endian byte-order mark), not UTF-8", "iconv")
    assert "Traceback" not in result.stderr
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


def test_vocab_size_too_small_for_the_characters(tmp_path, ja_pairs):
    cfg = small_config(tmp_path, ja_pairs[:200], tokenizer={"train": {"vocab_size": 64}},
                       splits={"dev": 10, "test": 10}, workers=1)
    cfg["pairs"] = cfg["pairs"][1:]  # ja-en only
    assert len(set("".join(s for s, _ in ja_pairs[:200]))) > 64  # kana and kanji alone need more pieces
    result = run_prep(tmp_path, cfg)
    assert_one_line_error(result, "tokenizer.train.vocab_size: 64", "every distinct character")
    assert "Traceback" not in result.stderr
    assert_nothing_listed(tmp_path)


def test_output_dir_that_is_a_file(tmp_path, ja_pairs):
    blocker = tmp_path / "dataset"
    blocker.write_text("not a directory")
    for output_dir in (blocker, blocker / "inside"):
        result = run_prep(tmp_path, small_config(tmp_path, ja_pairs, output_dir=str(output_dir)))
        assert_one_line_error(result, "output_dir:", str(output_dir))
        assert "Errno" not in result.stderr
    assert blocker.read_text() == "not a directory"
