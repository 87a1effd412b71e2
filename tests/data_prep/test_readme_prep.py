"""The documentation's prep.yaml examples are valid configs: every file they name is made here in the format its
source says (compressed as its name says, globs matched by several files), and each source reads as many records
as it was given."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from conftest import write_tmx
from documentation import yaml_blocks
from data_prep.config import config_from_dict
from data_prep.demo_corpus import catalogs
from data_prep.readers import read_pairs
from test_compressed_inputs import opus_zip
from test_tabular_inputs import save_to_disk

COMPRESSORS = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress,
               ".zst": zstandard.ZstdCompressor().compress}
ROWS = 40


def readme_prep_configs() -> list[dict]:
    """The documentation's YAML blocks that are data_prep configs training their tokenizer (those continuing a
    model's tokenizer are loaded by tests/weam_ds/test_continued_pretraining.py)."""
    configs = [yaml.safe_load(b) for b in yaml_blocks()]
    return [c for c in configs if isinstance(c, dict) and "train" in (c.get("tokenizer") or {})
            and ("pairs" in c or "monolingual" in c)]


def write_bytes(path: Path, text: str) -> None:
    """``text`` into ``path``, compressed as its name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(COMPRESSORS.get(path.suffix, lambda d: d)(data))


def nested(dotted: str, value) -> dict:
    """``{"a": {"b": value}}`` for ``"a.b"``."""
    *parents, leaf = dotted.split(".")
    row = {leaf: value}
    for name in reversed(parents):
        row = {name: row}
    return row


def merged(*rows: dict) -> dict:
    out: dict = {}
    for row in rows:
        for key, value in row.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def hub_rows(source: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """Rows with the source's text columns (nested as their dotted names say) and its score column."""
    rows = []
    for i, (src, tgt) in enumerate(pairs):
        parts = ([nested(source["text_column"], src)] if "text_column" in source
                 else [nested(source["src_column"], src), nested(source["tgt_column"], tgt)])
        if "score_column" in source:
            parts.append(nested(source["score_column"], 0.5 + i / len(pairs)))
        rows.append(merged(*parts))
    return rows


def matches(pattern: str) -> list[Path]:
    """Two files for a glob, one for a plain name."""
    if not any(c in pattern for c in "*?["):
        return [Path(pattern)]
    return [Path(re.sub(r"\*+|\?|\[[^]]*\]", f"part{i}", pattern)) for i in range(2)]


def write_source(source: dict, pairs: list[tuple[str, str]]) -> int:
    """The files ``source`` names, holding ``pairs``; how many records it must read."""
    fmt = source["format"]
    paths = source.get("path", [])
    files = [f for p in ([paths] if isinstance(paths, str) else paths) for f in matches(p)]
    per_file = len(pairs) // max(len(files), 1)
    if fmt == "moses":
        write_bytes(Path(source["src"]), "".join(f"{s}\n" for s, _ in pairs))
        write_bytes(Path(source["tgt"]), "".join(f"{t}\n" for _, t in pairs))
        return len(pairs)
    if fmt == "po":
        for f, catalog in zip(files, catalogs("fr"), strict=False):
            shutil.copy(catalog, f)
        return -1  # the catalogs' entries, not these pairs
    for k, f in enumerate(files):
        part = pairs[k * per_file:(k + 1) * per_file]
        f.parent.mkdir(parents=True, exist_ok=True)  # a glob's folder, an Arrow folder's parent
        if fmt == "text":
            write_bytes(f, "".join(f"{s}\n" for s, _ in part))
        elif fmt == "tsv":
            score = source.get("score_column")
            lines = [[s, t] if score is None else [s, t][:score] + [str(1 + i / ROWS)] + [s, t][score:]
                     for i, (s, t) in enumerate(part)]
            write_bytes(f, "".join("\t".join(line) + "\n" for line in lines))
        elif fmt == "tmx":
            write_tmx(f, part, source["src_lang"], source["tgt_lang"])
        elif fmt == "opus_moses":
            corpus = f"Corpus.{source['src_lang']}-{source['tgt_lang']}"
            opus_zip(f, {f"{corpus}.{source['src_lang']}": "".join(f"{s}\n" for s, _ in part),
                         f"{corpus}.{source['tgt_lang']}": "".join(f"{t}\n" for _, t in part),
                         "README": "a corpus", "LICENSE": "CC-BY"})
        elif fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(hub_rows(source, part)), f)
        elif fmt == "jsonl":
            write_bytes(f, "".join(json.dumps(row) + "\n" for row in hub_rows(source, part)))
        elif fmt == "arrow":
            save_to_disk(f, hub_rows(source, part), n_files=2, make_table=pa.Table.from_pylist)
        else:
            raise AssertionError(f"the README shows a format this test cannot make: {fmt}")
    return -1 if source.get("documents") else per_file * len(files)  # documents: split into sentences


@pytest.mark.parametrize("example", readme_prep_configs(), ids=lambda c: c["output_dir"])
def test_readme_prep_examples_are_valid_and_read(example, tmp_path, monkeypatch, fr_pairs):
    monkeypatch.chdir(tmp_path)
    pairs = fr_pairs[:ROWS]
    expected = {}
    for section in ("pairs", "monolingual"):
        for source in example.get(section, []):
            key = source.get("lang") or f"{source['src_lang']}-{source['tgt_lang']}"
            expected[key] = write_source(source, pairs)
    cfg = config_from_dict(example, where="README prep.yaml")
    assert {s.key for s in cfg.sources} == set(expected)
    for source in cfg.sources:
        records = list(read_pairs(source))
        assert records and all(isinstance(r, tuple) or r == "low_score" for r in records), (source.key, records[:3])
        if expected[source.key] >= 0:
            assert len(records) == expected[source.key], source.key
        if getattr(source, "min_score", None) is not None:
            assert "low_score" in records, source.key
