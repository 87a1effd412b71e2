"""Corpora as they are downloaded: gzip, xz, bzip2 and zstd files (told apart by their magic bytes) and OPUS
Moses zips read as the plain files do; a cut-off or corrupt archive is one line naming the file and where."""
from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zipfile
import zlib
from pathlib import Path

import polib
import pytest
import zstandard

from conftest import shard_samples, small_config, write_moses, write_tmx, write_tsv
from data_prep import PrepError
from data_prep.build import build
from data_prep.cleaning import Cleaner
from data_prep.config import CleaningConfig, MonolingualConfig, PairConfig, config_from_dict
from data_prep.demo_corpus import catalogs
from data_prep.manifest import read_manifest
from data_prep.readers import read_pairs
from data_prep.typed_config import ConfigError
from test_errors import assert_nothing_listed, assert_one_line_error, run_prep



def in_two_parts(compress):
    """Two streams back to back, as bgzip, pigz and zstd -T write them."""
    return lambda data: compress(data[:len(data) // 2]) + compress(data[len(data) // 2:])


COMPRESSORS = {"gzip": in_two_parts(gzip.compress), "xz": lzma.compress, "bzip2": bz2.compress,
               "zstd": in_two_parts(zstandard.ZstdCompressor().compress)}


def compressed(path: Path | str, kind: str, target: Path) -> str:
    target.write_bytes(COMPRESSORS[kind](Path(path).read_bytes()))
    return str(target)


def cleaned(records) -> tuple[list, dict]:
    """A source's records and what cleaning keeps and drops of them."""
    records = list(records)
    cleaner = Cleaner(CleaningConfig())
    return records, list(cleaner.clean(iter(records))), dict(cleaner.dropped)


def plain_sources(tmp: Path, fr_pairs) -> dict[str, dict]:
    """One source per text format, as PairConfig/MonolingualConfig keyword arguments naming its files."""
    src, tgt = write_moses(tmp, "c", fr_pairs)
    mo = tmp / "django.mo"
    polib.pofile(catalogs("fr")[0]).save_as_mofile(str(mo))
    return {"moses": {"src": str(src), "tgt": str(tgt)},
            "tsv": {"path": [str(write_tsv(tmp / "c.tsv", fr_pairs))]},
            "tmx": {"path": [str(write_tmx(tmp / "c.tmx", fr_pairs, "fr", "en"))]},
            "po": {"path": catalogs("fr")[:2]},
            "mo": {"path": [str(mo)]},
            "text": {"path": [str(src)]}}


def source(fmt: str, files: dict):
    if fmt == "text":
        return MonolingualConfig("fr", "text", **files)
    return PairConfig("fr", "en", fmt, **files)


def test_every_format_reads_its_compressed_copies_as_the_plain_files(tmp_path, fr_pairs):
    plain = plain_sources(tmp_path, fr_pairs)
    expected = {fmt: cleaned(read_pairs(source(fmt, files))) for fmt, files in plain.items()}
    assert expected["moses"][0] == fr_pairs and expected["po"][2]  # the catalogs have entries to drop
    for kind in COMPRESSORS:
        directory = tmp_path / kind
        directory.mkdir()
        for fmt, files in plain.items():
            # zstd copies keep the plain name: the magic bytes, not a suffix, say what a file is.
            suffix = "" if kind == "zstd" else f".{kind}"
            copies = {key: (compressed(value, kind, directory / f"{fmt}-{key}{suffix}") if isinstance(value, str)
                            else [compressed(p, kind, directory / f"{fmt}-{key}{i}{suffix}")
                                  for i, p in enumerate(value)])
                      for key, value in files.items()}
            # Building the config checks each file's encoding: on the decompressed text, not on its NUL-rich bytes.
            assert cleaned(read_pairs(source(fmt, copies))) == expected[fmt], (kind, fmt)
    misnamed = tmp_path / "plain.tsv.gz"
    misnamed.write_bytes(Path(plain["tsv"]["path"][0]).read_bytes())
    assert cleaned(read_pairs(source("tsv", {"path": str(misnamed)}))) == expected["tsv"]


def test_the_encoding_check_reads_the_decompressed_head(tmp_path, fr_pairs):
    text = "".join(f"{s}\n" for s, _ in fr_pairs[:50])
    utf16 = tmp_path / "utf16.src.gz"
    utf16.write_bytes(gzip.compress(text.encode("utf-16-le")))
    utf8 = compressed(write_moses(tmp_path, "c", fr_pairs[:50])[1], "gzip", tmp_path / "c.tgt.gz")
    with pytest.raises(ConfigError, match=r"utf16\.src\.gz: NUL bytes.*UTF-16"):
        PairConfig("fr", "en", "moses", src=str(utf16), tgt=utf8)
    for kind, compress in COMPRESSORS.items():
        cut = tmp_path / f"cut-{kind}"
        cut.write_bytes(compress(text.encode())[:-20])
        with pytest.raises(ConfigError, match=rf"cut-{kind}: truncated {kind} data after line \d+ \(at compressed byte"):
            PairConfig("fr", "en", "moses", src=str(cut), tgt=utf8)


def opus_zip(path: Path, members: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return str(path)


def test_opus_moses_zip_reads_its_two_language_files(tmp_path, fr_pairs):
    src, tgt = (tmp_path / f"c.{lang}" for lang in ("fr", "en"))
    write_moses(tmp_path, "c", fr_pairs)
    moses = list(read_pairs(PairConfig("fr", "en", "moses", src=str(tmp_path / "c.src"), tgt=str(tmp_path / "c.tgt"))))
    texts = {"fr": (tmp_path / "c.src").read_text(), "en": (tmp_path / "c.tgt").read_text()}
    download = opus_zip(tmp_path / "fr-en.txt.zip", {"README": "OPUS\n", "LICENSE": "CC-BY\n",
                                                     "Tiny.en-fr.en": texts["en"], "Tiny.en-fr.fr": texts["fr"],
                                                     "Tiny.en-fr.ids": "a\tb\n"})
    assert list(read_pairs(PairConfig("fr", "en", "opus_moses", path=download))) == moses == fr_pairs

    one_side = opus_zip(tmp_path / "one.zip", {"README": "", "Tiny.en-fr.en": texts["en"]})
    with pytest.raises(PrepError, match=r"one\.zip: expected one file ending in \.fr, found 0 among README, "
                                        r"Tiny\.en-fr\.en$"):
        list(read_pairs(PairConfig("fr", "en", "opus_moses", path=one_side)))
    two_fr = opus_zip(tmp_path / "two.zip", {"A.en-fr.fr": texts["fr"], "B.en-fr.fr": texts["fr"],
                                             "A.en-fr.en": texts["en"]})
    with pytest.raises(PrepError, match=r"two\.zip: expected one file ending in \.fr, found 2 among "
                                        r"A\.en-fr\.fr, B\.en-fr\.fr, A\.en-fr\.en$"):
        list(read_pairs(PairConfig("fr", "en", "opus_moses", path=two_fr)))
    short = opus_zip(tmp_path / "short.zip", {"T.en-fr.fr": texts["fr"], "T.en-fr.en": "".join(
        f"{t}\n" for _, t in fr_pairs[:-3])})
    with pytest.raises(PrepError, match=rf"line counts differ: .*short\.zip: T\.en-fr\.fr has {len(fr_pairs)} lines, "
                                        rf".*short\.zip: T\.en-fr\.en has {len(fr_pairs) - 3}$"):
        list(read_pairs(PairConfig("fr", "en", "opus_moses", path=short)))


def test_a_cut_off_or_corrupt_archive_stops_the_build_in_one_line_with_nothing_complete(tmp_path, ja_pairs):
    # Long enough that the damage lies past the head the config's encoding check reads (64 KiB).
    src, tgt = write_moses(tmp_path, "ja", [(f"{i}: {s}", f"{i}: {t}") for i in range(8) for s, t in ja_pairs])
    plain = src.read_bytes()
    assert len(plain) > 2 * (1 << 16)
    cut = tmp_path / "ja.src.gz"
    cut.write_bytes(gzip.compress(plain)[:-len(gzip.compress(plain)) // 4])
    damaged = bytearray(lzma.compress(plain))
    damaged[-200:-190] = bytes(b ^ 0xFF for b in damaged[-200:-190])
    corrupt = tmp_path / "ja.src.xz"
    corrupt.write_bytes(damaged)
    # The lines the damaged data still holds whole: the error may name fewer (a decoder gives up on its last
    # block), never more, and never the compressed byte past the file's end.
    whole_lines = {cut: zlib.decompressobj(31).decompress(cut.read_bytes()).count(b"\n"),
                   corrupt: lzma.LZMADecompressor().decompress(bytes(damaged[:-200])).count(b"\n")}
    for broken, state in ((cut, "truncated gzip"), (corrupt, "corrupt xz")):
        case = tmp_path / state.split()[1]
        case.mkdir()
        cfg = small_config(case, ja_pairs, splits={"dev": 10, "test": 10}, workers=1)
        cfg["pairs"] = [{**cfg["pairs"][1], "src": str(broken), "tgt": str(tgt)}]
        result = run_prep(case, cfg)
        assert_one_line_error(result, f"{broken}: {state} data after line ")
        line, offset = map(int, re.search(r"after line (\d+) \(at compressed byte (\d+): ", result.stderr).groups())
        assert 0 < line <= whole_lines[broken] and offset <= broken.stat().st_size
        assert (case / "dataset" / ".work" / "ja-en").is_dir()  # the clean stage ran, and stopped
        assert not list(case.rglob("clean.json"))
        assert_nothing_listed(case)


@pytest.mark.slow  # a whole build
def test_a_build_from_compressed_files_equals_the_plain_build(tmp_path, ja_pairs, small_dataset):
    plain_dir, plain_cfg, _ = small_dataset
    cfg = small_config(tmp_path, ja_pairs, workers=1)  # workers decide speed only; one spares starting a pool
    fr, ja = cfg["pairs"]
    fr["path"] = [compressed(p, "gzip", tmp_path / f"fr{i}.po.gz") for i, p in enumerate(fr["path"])]
    ja.update(src=compressed(ja["src"], "xz", tmp_path / "ja.xz"), tgt=compressed(ja["tgt"], "gzip", tmp_path / "en.gz"))
    build(config_from_dict(cfg))
    dataset = Path(cfg["output_dir"])
    got, want = read_manifest(dataset), read_manifest(plain_dir)
    assert got["complete"]
    # Two builds of the same files differ in their tokenizer (its trainer runs threads) and in eflomal's links,
    # so in every id; what they agree on is every count of samples and every sample's text, in order.
    for key, entry in want["pairs"].items():
        for field in ("input_records", "clean_pairs", "dropped"):
            assert got["pairs"][key][field] == entry[field], (key, field)
        assert samples_per_split(got["pairs"][key]) == samples_per_split(entry)
    for split in ("train", "dev", "test"):
        assert texts(dataset, split) == texts(plain_dir, split)


def samples_per_split(entry: dict) -> dict:
    return {split: counts["samples"] for split, counts in entry["splits"].items()}


def texts(dataset: Path, split: str) -> list[dict]:
    return [s["meta"] for s in shard_samples(dataset, split=split)]
