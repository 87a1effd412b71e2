"""Word splitting and cleaning."""
from __future__ import annotations

from data_prep.cleaning import Cleaner
from data_prep.config import CleaningConfig
from data_prep.words import split_words, word_spans


def test_unspaced_scripts_fall_back_to_characters():
    assert split_words("パスワードを変更") == ["パ", "ス", "ワ", "ー", "ド", "を", "変", "更"]
    assert split_words("密码 OK") == ["密", "码", "OK"]
    assert split_words("ยินดี") == ["ยิ", "น", "ดี"]  # Thai vowel marks stay on their consonant


def test_spaced_scripts_split_words_and_punctuation():
    assert split_words("Hello, world! (e-mail)") == ["Hello", ",", "world", "!", "(", "e", "-", "mail", ")"]
    assert split_words("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # combining marks are part of the word
    assert split_words("Пароль изменён.") == ["Пароль", "изменён", "."]


def test_spans_index_the_text():
    text = "Ça va ? 日本語 ok"
    assert [text[a:b] for a, b in word_spans(text)] == split_words(text)


def test_cleaning_normalises_and_counts_every_drop():
    cleaner = Cleaner(CleaningConfig(max_words=10, max_length_ratio=3))
    records = [
        ("  Ｈｅｌｌｏ\tworld ", "Bonjour\u00a0le  monde"),  # kept, normalised
        ("Hello world", "Bonjour le monde"),                 # same after normalisation: duplicate
        ("", "vide"),                                        # empty
        ("OK", "OK"),                                        # identical
        ("one two three four five six seven eight nine ten eleven", "onze"),  # too_long
        ("a b c d", "x"),                                    # length_ratio (4 > 3 × 1)
        "malformed",                                         # counted as the reader said
    ]
    assert list(cleaner.clean(records)) == [("Hello world", "Bonjour le monde")]
    assert cleaner.dropped == {"duplicate": 1, "empty": 1, "identical": 1, "too_long": 1, "length_ratio": 1,
                               "malformed": 1}


def test_dedup_and_identical_can_be_switched_off():
    cleaner = Cleaner(CleaningConfig(dedup=False, drop_identical=False))
    assert len(list(cleaner.clean([("OK", "OK"), ("OK", "OK")]))) == 2
