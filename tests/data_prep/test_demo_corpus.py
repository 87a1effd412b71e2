"""The embedded demo corpus: enough real translations, several scripts, no download."""
from __future__ import annotations

import regex

from data_prep.cleaning import Cleaner
from data_prep.config import config_from_dict
from data_prep.demo_corpus import demo_config
from data_prep.readers import read_pairs


def test_demo_corpus_has_four_pairs_of_a_thousand_clean_translations(tmp_path):
    cfg = config_from_dict(demo_config(tmp_path))
    assert len(cfg.pairs) >= 4 and all(p.tgt_lang == "en" for p in cfg.pairs)
    scripts = set()
    for pair in cfg.pairs:
        clean = list(Cleaner(cfg.cleaning).clean(read_pairs(pair)))
        assert len(clean) >= 1000, pair.key
        sample = "".join(src for src, _ in clean[:200])
        scripts |= {s for s in ("Latin", "Cyrillic", "Han", "Hangul", "Katakana")
                    if len(regex.findall(rf"\p{{{s}}}", sample)) > 100}
    assert scripts - {"Latin"}, "the demo corpus needs a non-Latin script"
