"""Corpora from dataset hubs: Parquet with a ``translation`` struct column and a score column, JSON Lines, and
Hugging Face ``save_to_disk`` folders of Arrow streams (made here with pyarrow), WikiMatrix-shaped TSV with
``score_column: 0``; paths as globs; columns checked when the config is read; reading batch by batch."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_tsv
from data_prep.build import build
from data_prep.config import MonolingualConfig, PairConfig, config_from_dict
from data_prep.manifest import read_manifest
from data_prep.readers import read_pairs
from data_prep.tabular import BATCH_ROWS
from data_prep.typed_config import ConfigError

TRANSLATION = pa.struct([("fr", pa.string()), ("en", pa.string())])


def hub_rows(fr_pairs, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows as OPUS-100 or NLLB ship them: a translation struct and a margin score; one row in 20 has
    its struct or one side null."""
    rng = random.Random(seed)
    rows = []
    for i, (fr, en) in enumerate(fr_pairs[:n]):
        translation = None if i % 20 == 7 else {"fr": fr, "en": None if i % 20 == 13 else en}
        rows.append({"translation": translation, "score": round(rng.uniform(0.9, 1.3), 3)})
    return rows


def expected_records(rows: list[dict], min_score: float | None) -> list:
    """What a reader must make of ``rows``: the pair, ``malformed`` for a null side, ``low_score`` under the bar."""
    records = []
    for row in rows:
        t = row["translation"]
        if t is None or t["fr"] is None or t["en"] is None:
            records.append("malformed")
        elif min_score is not None and row["score"] < min_score:
            records.append("low_score")
        else:
            records.append((t["fr"], t["en"]))
    return records


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([("translation", TRANSLATION), ("score", pa.float64())]))


def hub_pair(path, fmt: str = "parquet", **keys) -> PairConfig:
    return PairConfig("fr", "en", fmt, path=path, src_column="translation.fr", tgt_column="translation.en", **keys)


def save_to_disk(folder: Path, rows: list[dict], n_files: int, make_table=table) -> list[Path]:
    """A ``Dataset.save_to_disk`` folder as the datasets library writes it: ``state.json`` naming its data files,
    each an Arrow IPC stream of record batches."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{n_files:05d}.arrow" for i in range(n_files)]
    whole = make_table(rows)
    per_file = -(-len(rows) // n_files)
    for i, name in enumerate(names):
        with pa.ipc.new_stream(str(folder / name), whole.schema) as writer:
            writer.write_table(whole.slice(i * per_file, per_file), max_chunksize=100)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0123", "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}))
    return [folder / n for n in names]


def test_parquet_with_a_struct_and_a_score_column_read_whole_by_name_and_by_glob(tmp_path, fr_pairs):
    rows = hub_rows(fr_pairs, 300)
    path = tmp_path / "opus100.parquet"
    pq.write_table(table(rows), path, row_group_size=64)
    records = list(read_pairs(hub_pair(str(path), score_column="score", min_score=1.0)))
    # Every row is read, and each comes out as the data says: kept, malformed, or low_score.
    assert records == expected_records(rows, 1.0)
    assert records.count("low_score") > 0 and records.count("malformed") > 0  # the data has both
    # score_column alone keeps every scored pair.
    assert list(read_pairs(hub_pair(str(path), score_column="score"))) == expected_records(rows, None)

    # A glob over several files reads them in sorted order; files (and the fingerprint) list what was read.
    parts = [tmp_path / "parts" / f"train-{i:05d}.parquet" for i in range(3)]
    parts[0].parent.mkdir()
    for i in (2, 0, 1):  # written out of order
        pq.write_table(table(rows[i * 100:(i + 1) * 100]), parts[i])
    pattern = str(tmp_path / "parts" / "train-*.parquet")
    pair = hub_pair(pattern, score_column="score", min_score=1.0)
    assert pair.files == [str(p) for p in parts] == pair.path
    assert list(read_pairs(pair)) == expected_records(rows, 1.0)
    cfg = {"output_dir": str(tmp_path / "out"), "tokenizer": {"train": {"vocab_size": 100}},
           "pairs": [{"src_lang": "fr", "tgt_lang": "en", "format": "parquet", "path": pattern,
                      "src_column": "translation.fr", "tgt_column": "translation.en"}]}
    before = config_from_dict(cfg).fingerprint()
    os.utime(parts[1], ns=(0, 0))
    assert config_from_dict(cfg).fingerprint() != before


def test_parquet_is_read_batch_by_batch_and_only_the_named_columns(tmp_path):
    # Row groups larger than a batch, and a wide column that the pair does not name.
    n_groups, group = 6, 2 * BATCH_ROWS
    rows = pa.table({"en": [f"sentence {i}" for i in range(n_groups * group)],
                     "de": [f"Satz {i}" for i in range(n_groups * group)],
                     "url": [f"https://example.org/page/{i}?q=" + "x" * 40 for i in range(n_groups * group)]})
    path = tmp_path / "wide.parquet"
    pq.write_table(rows, path, row_group_size=group, compression="none")
    metadata = pq.ParquetFile(path).metadata
    named_bytes = sum(metadata.row_group(g).column(c).total_compressed_size
                      for g in range(n_groups) for c in (0, 1))

    def bytes_read() -> int:  # by this process, from any file: this test reads nothing else meanwhile
        return int(next(line for line in open("/proc/self/io") if line.startswith("rchar")).split()[1])

    start = bytes_read()
    records = read_pairs(PairConfig("en", "de", "parquet", path=str(path), src_column="en", tgt_column="de"))
    assert next(records) == ("sentence 0", "Satz 0")
    first = bytes_read() - start
    assert sum(1 for _ in records) == n_groups * group - 1
    total = bytes_read() - start
    # The first record came after reading about one row group, not the file; the url column was never read.
    assert first < 2 * named_bytes / n_groups
    assert named_bytes <= total < named_bytes + metadata.row_group(0).column(2).total_compressed_size


def test_json_lines_monolingual_by_text_column_plain_and_gzipped(tmp_path, fr_pairs):
    sentences = [fr for fr, _ in fr_pairs[:40]]
    lines = [json.dumps({"doc": {"text": s, "lang_score": 0.5 + (i % 5) / 10}}, ensure_ascii=False)
             for i, s in enumerate(sentences)]
    # A line that is no JSON, a null text, a number, a missing field, a score that is no number.
    lines += ['{"doc": {"text": "cut off', '{"doc": {"text": null, "lang_score": 1}}',
              '{"doc": {"text": 7, "lang_score": 1}}', '{"other": 1}', '{"doc": {"text": "Bonjour.", "lang_score": "?"}}']
    plain = tmp_path / "cc100.fr.jsonl"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packed = tmp_path / "cc100.fr.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    expected = [(s,) if 0.5 + (i % 5) / 10 >= 0.7 else "low_score" for i, s in enumerate(sentences)]
    expected += ["malformed"] * 5
    for path in (plain, packed):
        source = MonolingualConfig("fr", "jsonl", path=str(path), text_column="doc.text",
                                   score_column="doc.lang_score", min_score=0.7)
        assert list(read_pairs(source)) == expected
    # The same file as pairs would need two columns; its first line names the fields it has.
    with pytest.raises(ConfigError, match=rf"^tgt_column: {plain} has no column 'doc.en' "
                                          r"\(its columns: doc.text, doc.lang_score\)$"):
        PairConfig("fr", "en", "jsonl", path=str(plain), src_column="doc.text", tgt_column="doc.en")


def test_hugging_face_save_to_disk_folder_in_two_files_and_a_dataset_dict_refused(tmp_path, fr_pairs):
    rows = hub_rows(fr_pairs, 250, seed=1)
    folder = tmp_path / "opus100-fr-en"
    data_files = save_to_disk(folder, rows, n_files=2)
    pair = hub_pair(str(folder), "arrow", score_column="score", min_score=1.1)
    assert pair.files == [str(f) for f in data_files]
    assert list(read_pairs(pair)) == expected_records(rows, 1.1)
    # The cache files of load_dataset are Arrow streams too, and a format serves monolingual sources as well.
    mono = MonolingualConfig("en", "arrow", path=str(folder / "data-*.arrow"), text_column="translation.en")
    assert list(read_pairs(mono)) == [r if isinstance(r, str) else (r[1],) for r in expected_records(rows, None)]

    splits = tmp_path / "dict"
    for split in ("train", "validation"):
        save_to_disk(splits / split, rows[:10], n_files=1)
    (splits / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    with pytest.raises(ConfigError, match=rf"^path: {splits}: a DatasetDict folder .*give one split's folder as "
                                          rf"path: {splits / 'train'}, {splits / 'validation'}$"):
        hub_pair(str(splits), "arrow")
    # A state.json may name only files inside its folder.
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../dict/train/data.arrow"}]}))
    with pytest.raises(ConfigError, match=r"state.json: _data_files must list the folder's .arrow files by name$"):
        hub_pair(str(folder), "arrow")


def test_wikimatrix_tsv_with_the_score_first(tmp_path, fr_pairs):
    rng = random.Random(2)
    scored = [(round(rng.uniform(1.0, 1.2), 4), fr, en) for fr, en in fr_pairs[:100]]
    path = tmp_path / "WikiMatrix.en-fr.tsv"
    text = "".join(f"{score}\t{fr}\t{en}\n" for score, fr, en in scored)
    path.write_text(text + "n/a\tUn.\tOne.\nDeux.\tTwo.\n", encoding="utf-8")  # a score that is no number; 2 fields
    pair = PairConfig("fr", "en", "tsv", path=str(path), score_column=0, min_score=1.04)
    expected = [(fr, en) if score >= 1.04 else "low_score" for score, fr, en in scored] + ["malformed"] * 2
    assert list(read_pairs(pair)) == expected


@pytest.mark.parametrize("source, message", [
    ({"format": "parquet", "path": "{tmp}/nothing-*.parquet", "src_column": "a", "tgt_column": "b"},
     "pairs[0].path: no file matches '{tmp}/nothing-*.parquet'"),
    ({"format": "parquet", "path": "{tmp}/c.parquet", "src_column": "translation.fr", "tgt_column": "translation.ko"},
     "pairs[0].tgt_column: {tmp}/c.parquet has no column 'translation.ko' (its columns: translation.fr, "
     "translation.en, score)"),
    ({"format": "parquet", "path": "{tmp}/c.parquet", "src_column": "translation", "tgt_column": "translation.en"},
     "pairs[0].src_column: {tmp}/c.parquet: column 'translation' is struct<fr: string, en: string>, not text"),
    ({"format": "parquet", "path": "{tmp}/c.parquet", "src_column": "translation.fr",
      "tgt_column": "translation.en", "min_score": 1.0},
     "pairs[0].min_score: needs score_column, the column that holds the scores"),
    ({"format": "parquet", "path": "{tmp}/c.parquet", "src_column": "translation.fr"},
     "pairs[0].tgt_column: format 'parquet' needs src_column and tgt_column"),
    ({"format": "tsv", "path": "{tmp}/c.tsv", "src_column": "0"},
     "pairs[0].src_column: format 'tsv' has no columns to name (formats with columns: parquet, jsonl, arrow)"),
    ({"format": "tsv", "path": "{tmp}/c.tsv", "score_column": "score"},
     "pairs[0].score_column: format 'tsv' takes the score's field index: 0, 1 or 2, not 'score'"),
    ({"format": "tmx", "path": "{tmp}/c.tsv", "score_column": 0},
     "pairs[0].score_column: format 'tmx' has no scores"),
    ({"lang": "fr", "format": "parquet", "path": "{tmp}/c.parquet", "text_column": "translation.fr",
      "documents": True},
     "monolingual[0].documents: format 'parquet' reads one sentence per row"),
    ({"lang": "fr", "format": "tsv", "path": "{tmp}/c.tsv"},
     "monolingual[0].format: 'tsv' is a parallel format: list this source under pairs "
     "(formats here: text, parquet, jsonl, arrow)"),
])
def test_column_and_path_mistakes_are_one_line_errors_naming_key_and_file(tmp_path, fr_pairs, source, message):
    pq.write_table(table(hub_rows(fr_pairs, 5)), tmp_path / "c.parquet")
    write_tsv(tmp_path / "c.tsv", fr_pairs[:5])
    filled = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in source.items()}
    section = "monolingual" if "lang" in source else "pairs"
    entry = filled if section == "monolingual" else {"src_lang": "fr", "tgt_lang": "en", **filled}
    with pytest.raises(ConfigError) as error:
        config_from_dict({"output_dir": str(tmp_path / "out"), "tokenizer": {"train": {"vocab_size": 100}},
                          section: [entry]}, where="prep.yaml")
    assert str(error.value).startswith(f"prep.yaml: {message.format(tmp=tmp_path)}")
    assert "\n" not in str(error.value)


def test_a_build_from_parquet_counts_low_score_pairs_in_the_manifest(tmp_path, fr_pairs):
    rows = hub_rows(fr_pairs, 400, seed=3)
    pq.write_table(table(rows), tmp_path / "train.parquet", row_group_size=100)
    cfg = {"output_dir": str(tmp_path / "dataset"), "tokenizer": {"train": {"vocab_size": 300}},
           "aligner": {"samplers": 1}, "splits": {"dev": 10, "test": 10}, "workers": 1,
           "pairs": [{"src_lang": "fr", "tgt_lang": "en", "format": "parquet", "path": str(tmp_path / "*.parquet"),
                      "src_column": "translation.fr", "tgt_column": "translation.en",
                      "score_column": "score", "min_score": 1.0}]}
    build(config_from_dict(cfg))
    entry = read_manifest(tmp_path / "dataset")["pairs"]["fr-en"]
    expected = expected_records(rows, 1.0)
    assert entry["input_records"] == len(rows)
    assert entry["dropped"]["low_score"] == expected.count("low_score")
    assert entry["dropped"]["malformed"] == expected.count("malformed")
    assert entry["clean_pairs"] + sum(entry["dropped"].values()) == len(rows)
