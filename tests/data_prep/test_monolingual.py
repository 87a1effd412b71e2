"""Monolingual text (``format: text``): the sentence splitter, the reader, the config's checks, and a dataset
built with fr-en pairs beside Spanish text (monolingual samples: no target side, no links)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from transformers import AutoTokenizer

from conftest import shard_samples
from data_prep.cli import main as data_prep_main
from data_prep.cli import summarize
from data_prep.config import MonolingualConfig, config_from_dict
from data_prep.manifest import ManifestError, is_monolingual, read_manifest
from data_prep.readers import read_pairs
from data_prep.sentences import split_sentences
from data_prep.typed_config import ConfigError
from monolingual_fixtures import bert_checkpoint_and_dataset


@pytest.fixture(scope="module")
def bert_dataset(tmp_path_factory):
    return bert_checkpoint_and_dataset(tmp_path_factory)


def test_sentence_splitter_follows_its_documented_rule():
    assert split_sentences("Hello there. How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]
    # A terminator followed by a lowercase word ends nothing; closing quotes stay with their sentence.
    assert split_sentences('Apples, pears etc. are fruit. He said "Stop." Then he left.') == [
        "Apples, pears etc. are fruit.", 'He said "Stop."', "Then he left."]
    # Scripts written without spaces end a sentence at a full-width terminator; other scripts' marks count.
    assert split_sentences("今日は晴れ。明日は雨！") == ["今日は晴れ。", "明日は雨！"]
    assert split_sentences("¿Qué hora es? Son las tres.") == ["¿Qué hora es?", "Son las tres."]
    assert split_sentences("क्या हाल है? ठीक है।") == ["क्या हाल है?", "ठीक है।"]
    assert split_sentences("  ") == []


def test_text_reader_reads_lines_or_documents(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_bytes("Une phrase.\n\nDeux phrases. Ici.\n".encode() + b"\xff bad\n")
    source = MonolingualConfig(lang="fr", format="text", path=str(lines))
    # One record per line: a blank line is an empty record (cleaning drops it), bad UTF-8 a malformed one.
    assert list(read_pairs(source)) == [("Une phrase.",), ("",), ("Deux phrases. Ici.",), "malformed"]

    docs = tmp_path / "docs.txt"
    docs.write_bytes("First document. Its second sentence\nruns over a line end.\nLast one\n\n\n".encode()
                     + b"\xff\n" + "Second document, one sentence!\n".encode())
    source = MonolingualConfig(lang="en", format="text", path=[str(docs)], documents=True)
    assert list(read_pairs(source)) == [
        ("First document.",), ("Its second sentence runs over a line end.",), ("Last one",), "malformed",
        ("Second document, one sentence!",)]


def test_monolingual_config_mistakes_are_one_line_errors_naming_the_key(tmp_path):
    text = tmp_path / "sw.txt"
    text.write_text("Habari ya asubuhi.\n", encoding="utf-8")
    src = tmp_path / "a.txt"
    src.write_text("a\n", encoding="utf-8")
    base = {"output_dir": str(tmp_path / "out"), "tokenizer": {"train": {"vocab_size": 100}}}
    cases = [
        ({"monolingual": [{"lang": "sw", "format": "moses", "path": str(text)}]},
         "monolingual[0].format: 'moses' is a parallel format: list this source under pairs "
         "(formats here: text, parquet, jsonl, arrow)"),
        ({"pairs": [{"src_lang": "sw", "tgt_lang": "en", "format": "text", "path": str(text)}]},
         "pairs[0].format: 'text' is a monolingual format: list this source under monolingual"),
        ({"monolingual": [{"lang": "sw", "format": "text", "path": str(tmp_path / "missing.txt")}]},
         f"monolingual[0].path: file not found: {tmp_path / 'missing.txt'}"),
        ({"monolingual": [{"lang": "sw", "format": "text", "path": str(text)},
                          {"lang": "sw", "format": "text", "path": str(text)}]},
         "monolingual[1]: language sw is listed twice (also as monolingual[0])"),
        ({"monolingual": [{"lang": "s w", "format": "text", "path": str(text)}]},
         "monolingual[0].lang: not a language"),
        ({}, "pairs: at least one language pair (or a monolingual source) is needed"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError) as error:
            config_from_dict({**base, **extra}, where="prep.yaml")
        assert str(error.value).startswith(f"prep.yaml: {message}") and "\n" not in str(error.value)
    # A monolingual-only dataset is fine (an MLM corpus); the command line refuses a bad one with exit 2.
    assert config_from_dict({**base, "monolingual": [{"lang": "sw", "format": "text", "path": str(text)}]})
    bad = tmp_path / "prep.yaml"
    bad.write_text(json.dumps({**base, "monolingual": [{"lang": "sw", "format": "tsv", "path": str(text)}]}))
    assert data_prep_main(["--config", str(bad)]) == 2


def test_monolingual_text_is_written_as_samples_without_target_or_links(bert_dataset):
    checkpoint, dataset = bert_dataset
    manifest = read_manifest(dataset)
    pairs, spanish = manifest["pairs"]["fr-en"], manifest["pairs"]["es"]
    assert (spanish["src_lang"], spanish["tgt_lang"]) == ("es", None) and is_monolingual(spanish)
    assert not is_monolingual(pairs)
    assert set(spanish) == set(pairs)  # the same fields: tools reading the manifest read both kinds
    assert spanish["splits"]["dev"]["samples"] == spanish["splits"]["test"]["samples"] == 20
    assert all(s["tgt_tokens"] == 0 and s["links"] == 0 for s in spanish["shards"])
    assert all(s["path"].startswith("es/") for s in spanish["shards"])
    assert pairs["splits"]["train"]["links"] > 0

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    lines = set((dataset.parent / "es.txt").read_text(encoding="utf-8").splitlines())
    samples = shard_samples(dataset, ("es",))
    assert len(samples) == spanish["splits"]["train"]["samples"]
    for sample in samples:
        assert sample["tgt_ids"].shape == (0,) and sample["align"].shape == (0, 2)
        assert sample["meta"]["src_lang"] == "es" and sample["meta"]["tgt_text"] == ""
        assert sample["meta"]["src_text"] in lines
        # The checkpoint's own tokenizer, mBERT's specials: [CLS] ... [SEP].
        assert sample["src_ids"].tolist() == tok(sample["meta"]["src_text"])["input_ids"]
        assert sample["src_ids"][0] == tok.cls_token_id and sample["src_ids"][-1] == tok.sep_token_id
    table = summarize(manifest).splitlines()
    assert table[2].split()[0] == "es" and table[2].split()[8:10] == ["-", "-"]


def test_manifest_reader_checks_monolingual_entries(bert_dataset, tmp_path):
    _, dataset = bert_dataset
    manifest = json.loads((dataset / "manifest.json").read_text())
    copy = tmp_path / "copy"
    for change, message in (
            (lambda m: m["pairs"]["es"]["shards"][0].update(tgt_tokens=3), "pairs.es.shards[0]: target tokens"),
            (lambda m: m["pairs"]["es"].pop("tgt_lang"), "pairs.es: needs src_lang"),
            (lambda m: m["pairs"]["fr-en"].update(src_lang=None), "pairs.fr-en: needs src_lang")):
        edited = json.loads(json.dumps(manifest))
        change(edited)
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        (copy / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ManifestError, match=re.escape(message)):
            read_manifest(copy)
