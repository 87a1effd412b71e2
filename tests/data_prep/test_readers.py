"""Every input format yields the same pairs for the same translations."""
from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path

import polib
import pytest

from conftest import write_moses, write_tmx, write_tsv
from data_prep import PrepError
from data_prep.config import PairConfig
from data_prep.demo_corpus import catalogs
from data_prep.readers import read_pairs
from data_prep.typed_config import ConfigError


def test_moses_tsv_and_tmx_agree(tmp_path, fr_pairs):
    src, tgt = write_moses(tmp_path, "c", fr_pairs)
    moses = list(read_pairs(PairConfig("fr", "en", "moses", src=str(src), tgt=str(tgt))))
    tsv = list(read_pairs(PairConfig("fr", "en", "tsv", path=str(write_tsv(tmp_path / "c.tsv", fr_pairs)))))
    tmx_file = write_tmx(tmp_path / "c.tmx", fr_pairs, "fr", "en")
    tmx = list(read_pairs(PairConfig("fr", "en", "tmx", path=str(tmx_file))))
    assert moses == tsv == tmx == fr_pairs


def test_tsv_counts_malformed_lines(tmp_path, fr_pairs):
    path = tmp_path / "c.tsv"
    path.write_text(f"{fr_pairs[0][0]}\t{fr_pairs[0][1]}\nno tab here\na\tb\tc\n", encoding="utf-8")
    assert list(read_pairs(PairConfig("fr", "en", "tsv", path=str(path)))) == [fr_pairs[0], "malformed", "malformed"]


def test_tmx_skips_markup_codes_and_units_missing_a_language(tmp_path):
    path = tmp_path / "m.tmx"
    path.write_text('<tmx version="1.4"><header/><body>'
                    '<tu><tuv xml:lang="de"><seg>Klicke <bpt i="1">&lt;b&gt;</bpt>hier'
                    '<ept i="1">&lt;/b&gt;</ept></seg></tuv>'
                    '<tuv xml:lang="en-GB"><seg>Click <hi>here</hi></seg></tuv></tu>'
                    '<tu><tuv xml:lang="de"><seg>Nur Deutsch</seg></tuv></tu></body></tmx>', encoding="utf-8")
    assert list(read_pairs(PairConfig("de", "en", "tmx", path=str(path)))) == [
        ("Klicke hier", "Click here"), "missing_language"]


def test_tmx_refuses_entity_expansion(tmp_path):
    path = tmp_path / "bomb.tmx"
    path.write_text('<?xml version="1.0"?><!DOCTYPE tmx [<!ENTITY a "aaaaaaaaaa">]>'
                    '<tmx><body><tu><tuv xml:lang="de"><seg>&a;</seg></tuv></tu></body></tmx>')
    with pytest.raises(PrepError, match="bomb.tmx: refused unsafe XML"):
        list(read_pairs(PairConfig("de", "en", "tmx", path=str(path))))


def test_po_and_compiled_mo_give_the_same_pairs(tmp_path):
    po_path = catalogs("ja")[0]
    mo_path = tmp_path / "django.mo"
    polib.pofile(po_path).save_as_mofile(str(mo_path))
    from_po = [r for r in read_pairs(PairConfig("ja", "en", "po", path=po_path)) if isinstance(r, tuple)]
    from_mo = [r for r in read_pairs(PairConfig("ja", "en", "mo", path=str(mo_path))) if isinstance(r, tuple)]
    assert len(from_po) > 100 and sorted(from_po) == sorted(from_mo)  # .mo files sort entries by msgid
    # msgid is English: with msgid_side tgt the Japanese msgstr is the source side.
    pair = next(r for r in from_po if isinstance(r, tuple))
    entry = polib.pofile(po_path).find(pair[1])
    assert entry is not None and pair[0] in (entry.msgstr, entry.msgstr_plural.get(0))
    flipped = next(r for r in read_pairs(PairConfig("en", "ja", "po", path=po_path, msgid_side="src"))
                   if isinstance(r, tuple))
    assert flipped == pair[::-1]


def test_broken_catalog_is_named(tmp_path):
    path = tmp_path / "broken.po"
    path.write_text('msgid "a"\nmsgstrx "b"\n', encoding="utf-8")
    with pytest.raises(PrepError, match="broken.po: cannot read gettext catalog"):
        list(read_pairs(PairConfig("de", "en", "po", path=str(path))))


def test_undecodable_lines_are_malformed_records_and_lines_stay_aligned(tmp_path, fr_pairs, caplog):
    src, tgt = write_moses(tmp_path, "c", fr_pairs[:40])
    bad = {"src": [3, 10, 11, 12, 20, 30, 31], "tgt": [10, 25]}  # 0-based line indices
    for path, indices in ((src, bad["src"]), (tgt, bad["tgt"])):
        lines = path.read_bytes().split(b"\n")
        for k in indices:
            lines[k] = "Père Noël, cœur".encode("cp1252")
        path.write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="data_prep.readers"):
        records = list(read_pairs(PairConfig("fr", "en", "moses", src=str(src), tgt=str(tgt))))
    malformed = set(bad["src"]) | set(bad["tgt"])
    assert records == ["malformed" if k in malformed else p for k, p in enumerate(fr_pairs[:40])]
    # Each file is named once, with its first five bad line numbers (1-based).
    assert [r.getMessage() for r in caplog.records] == [
        f"{src}: 7 lines are not valid UTF-8, dropped as malformed (lines 4, 11, 12, 13, 21, ...)",
        f"{tgt}: 2 lines are not valid UTF-8, dropped as malformed (lines 11, 26)"]

    tsv = write_tsv(tmp_path / "c.tsv", fr_pairs[:3])
    tsv.write_bytes(tsv.read_bytes().replace(fr_pairs[1][0].encode(), b"\xff" + fr_pairs[1][0].encode()))
    assert list(read_pairs(PairConfig("fr", "en", "tsv", path=str(tsv)))) == [fr_pairs[0], "malformed", fr_pairs[2]]


def test_files_in_utf16_or_utf32_are_refused_by_the_config(tmp_path, fr_pairs):
    text = "".join(f"{s}\t{t}\n" for s, t in fr_pairs[:20])
    cases = [  # Python's utf-16 and utf-32 codecs write a little-endian mark; the -be ones write none
        ("utf-16", b"", "UTF-16 (little-endian byte-order mark)"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16 (big-endian byte-order mark)"),
        ("utf-32", b"", "UTF-32 (little-endian byte-order mark)"),
        ("utf-32-be", codecs.BOM_UTF32_BE, "UTF-32 (big-endian byte-order mark)"),
        ("utf-16-le", b"", "NUL bytes")]  # no mark at all
    for encoding, mark, what in cases:
        path = tmp_path / f"{encoding}.tsv"
        path.write_bytes(mark + text.encode(encoding))
        with pytest.raises(ConfigError, match=re.escape(f"path: {path}: {what}")):
            PairConfig("fr", "en", "tsv", path=str(path))
    po = tmp_path / "utf16.po"
    po.write_bytes(Path(catalogs("fr")[0]).read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(ConfigError, match="utf16.po: UTF-16 .* convert it with iconv -f UTF-16 -t UTF-8"):
        PairConfig("fr", "en", "po", path=str(po))


def test_tmx_and_catalogs_with_bad_bytes_are_named(tmp_path, fr_pairs):
    good = write_tmx(tmp_path / "good.tmx", fr_pairs[:5], "fr", "en")
    # A TMX file declares its own encoding, so UTF-16 is fine there.
    utf16 = tmp_path / "utf16.tmx"
    text = good.read_text(encoding="utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    utf16.write_bytes(text.encode("utf-16"))
    assert list(read_pairs(PairConfig("fr", "en", "tmx", path=str(utf16)))) == fr_pairs[:5]
    bad = tmp_path / "bad.tmx"
    bad.write_bytes(good.read_bytes().replace(fr_pairs[2][0].encode(), b"\xe9" + fr_pairs[2][0].encode()))
    with pytest.raises(PrepError, match="bad.tmx: not valid TMX"):
        list(read_pairs(PairConfig("fr", "en", "tmx", path=str(bad))))

    mo = tmp_path / "django.mo"
    polib.pofile(catalogs("fr")[0]).save_as_mofile(str(mo))
    for fmt, path in (("po", Path(catalogs("fr")[0])), ("mo", mo)):
        broken = tmp_path / f"broken.{fmt}"
        broken.write_bytes(path.read_bytes().replace("é".encode(), b"\xc3(", 1))  # same length: offsets hold
        with pytest.raises(PrepError, match=f"broken.{fmt}: cannot read gettext catalog"):
            list(read_pairs(PairConfig("fr", "en", fmt, path=str(broken))))
