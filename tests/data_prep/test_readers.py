"""Every input format yields the same pairs for the same translations."""
from __future__ import annotations

import polib
import pytest

from conftest import write_moses, write_tmx, write_tsv
from data_prep import PrepError
from data_prep.config import PairConfig
from data_prep.demo_corpus import catalogs
from data_prep.readers import read_pairs


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
