"""Long tagging sentences: split as XTREME's preprocessing splits them, every word tagged, tags joined back."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
from xtreme_fixtures import ner_rows

from weam_ds.presets import model_config
from weam_ds.xtreme_r.tag_pieces import join_pieces, split_sentences

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer(small_dataset):
    dataset, _, _ = small_dataset
    return AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))


def _words(lang: str) -> list[str]:
    return [word for sentence in ner_rows(lang) for word, _ in sentence]


def _specials(tokenizer) -> int:
    """What the tokenizer adds around one pre-split sentence, read off its own encoding."""
    return len(tokenizer(["x"], is_split_into_words=True)["input_ids"]) - len(
        tokenizer(["x"], is_split_into_words=True, add_special_tokens=False)["input_ids"])


def _long_sentence(tokenizer, times: int = 3) -> list[str]:
    """Fixture words until the sentence has ``times`` times MAX_LENGTH subwords."""
    words, pool = [], _words("en") + _words("de") + _words("fr")
    while sum(len(tokenizer.tokenize(w)) for w in words) < times * MAX_LENGTH:
        words.append(pool[len(words) % len(pool)])
    return words


def _official_pieces(tokenizer, words: list[str], max_length: int) -> list[list[str]]:
    """utils_preprocess.py's rule: count each word's subwords, open a new piece when the next word would
    pass max_length less the special tokens."""
    budget, pieces, used = max_length - _specials(tokenizer), [], None
    for word in words:
        count = len(tokenizer.tokenize(word))
        if used is None or used + count > budget:
            pieces.append([])
            used = 0
        pieces[-1].append(word)
        used += count
    return pieces


def _first_subword_tags(model, tokenizer, pieces: list[list[str]], labels: list[str]) -> list[list[str]]:
    """The tagger's prediction: each word's tag read at its first subword, pieces encoded as one batch."""
    enc = tokenizer(pieces, is_split_into_words=True, truncation=True, max_length=MAX_LENGTH, padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        guess = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
    tagged = []
    for i, piece in enumerate(pieces):
        tags: list[str | None] = [None] * len(piece)
        for pos, word in enumerate(enc.word_ids(i)):
            if word is not None and tags[word] is None:
                tags[word] = labels[int(guess[i, pos])]
        tagged.append(tags)
    return tagged


def test_a_long_sentence_is_split_by_the_official_rule(tokenizer):
    sentence = _long_sentence(tokenizer)
    pieces, owners = split_sentences(tokenizer, [sentence], MAX_LENGTH)
    assert pieces == _official_pieces(tokenizer, sentence, MAX_LENGTH)
    assert len(pieces) >= 3 and owners == [0] * len(pieces)
    assert [w for piece in pieces for w in piece] == sentence
    for piece in pieces:
        assert len(tokenizer(piece, is_split_into_words=True)["input_ids"]) <= MAX_LENGTH


def test_every_word_of_a_long_sentence_gets_the_prediction_of_its_piece(tokenizer):
    long = _long_sentence(tokenizer)
    sentences = [_words("en")[:5], long, _words("de")[:4]]
    truncated = tokenizer(long, is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
    assert len({w for w in truncated.word_ids() if w is not None}) < len(long) / 2  # what truncation lost

    labels = ["B-LOC", "B-PER", "O"]
    config = model_config("tiny", len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                          tokenizer.eos_token_id)
    config.num_labels = len(labels)
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(config).eval()

    pieces, owners = split_sentences(tokenizer, sentences, MAX_LENGTH)
    assert owners[0] == 0 and owners[-1] == 2 and owners.count(1) == len(pieces) - 2
    tagged = join_pieces(_first_subword_tags(model, tokenizer, pieces, labels), owners, len(sentences))
    assert [len(tags) for tags in tagged] == [len(s) for s in sentences]
    assert None not in tagged[1]
    alone = [tags for k in range(len(pieces)) if owners[k] == 1
             for tags in _first_subword_tags(model, tokenizer, [pieces[k]], labels)]
    assert tagged[1] == [tag for tags in alone for tag in tags]


def test_a_word_longer_than_the_limit_gets_a_piece_of_its_own(tokenizer):
    giant = "".join(_words("de")[:12])  # one word of many subwords
    assert len(tokenizer.tokenize(giant)) > MAX_LENGTH
    sentence = ["Maria", "wohnt", giant, "in", "Berlin"]
    pieces, owners = split_sentences(tokenizer, [sentence, []], MAX_LENGTH)
    assert pieces == [["Maria", "wohnt"], [giant], ["in", "Berlin"]] and owners == [0, 0, 0]
    kept = tokenizer([giant], is_split_into_words=True, truncation=True, max_length=MAX_LENGTH).word_ids()
    assert 0 in kept  # its first subword, the one its tag is read from, survives truncation
    assert join_pieces([["O", "O"], ["B-PER"], ["O", "B-LOC"]], owners, 2) == [
        ["O", "O", "B-PER", "O", "B-LOC"], []]


def test_bad_arguments_are_named(tokenizer):
    with pytest.raises(ValueError, match="max_length 2"):
        split_sentences(tokenizer, [["Maria"]], 2)
    with pytest.raises(ValueError, match="3 tagged pieces for 2 owners"):
        join_pieces([["O"], ["O"], ["O"]], [0, 0], 1)
