"""Tagging sentences longer than the model's input: split into pieces that fit, and join their tags back.

XTREME's preprocessing for UD-POS and PAN-X (``utils_preprocess.py``: ``panx_tokenize_preprocess``,
``udpos_tokenize_preprocess``) walks a sentence word by word, counting subwords, and starts a new piece
whenever the next word would push the count past ``max_length`` less the special tokens; its ``.idx`` file
records which sentence each piece came from, and ``run_tag.py``'s ``save_predictions`` writes the pieces'
tags back as one sentence. So no word is ever cut off by truncation: each gets a prediction from the model.

weam-ds follows that greedy rule, with two deliberate differences:

- The subwords are counted as the tagger encodes them (one ``is_split_into_words`` call per batch), and
  the reserve is what the tokenizer adds to a single sentence. The official code reserves 3 for XLM-R
  because its tagging features end in ``</s> </s>`` (``sep_token_extra``); weam-ds encodes a sentence
  as ``<s> … </s>``, so it reserves 2 for the same tokenizer.
- A word that is longer than the limit on its own is kept, in a piece of its own, where truncation keeps
  its first subword (the one its tag is read from); the official code replaces it by ``<unk>``.
"""
from __future__ import annotations

OFFICIAL_XLMR_TYPES = frozenset({"xlm-roberta", "xlm-roberta-xl"})
"""Model types the official preprocessing tokenizes with ``XLMRobertaTokenizer``, for which it reserves 3 tokens
(``special_tokens_count = 3 if isinstance(tokenizer, XLMRobertaTokenizer) else 2``); 2 for every other."""


def split_sentences(tokenizer, sentences: list[list[str]], max_length: int) -> tuple[list[list[str]], list[int]]:
    """Cut each sentence (a list of words) into consecutive pieces whose subwords, with the special tokens
    the tokenizer adds to one sentence, fit in ``max_length``. Returns the pieces and, per piece, the index
    of its sentence; the pieces of a sentence are consecutive and in order. An empty sentence has no piece."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a word beside the special tokens")
    pieces: list[list[str]] = []
    owners: list[int] = []
    for index, (words, counts) in enumerate(zip(sentences, _subword_counts(tokenizer, sentences))):
        used = budget + 1  # so that the first word opens a piece
        for word, count in zip(words, counts):
            if used + count > budget:
                pieces.append([])
                owners.append(index)
                used = 0
            pieces[-1].append(word)
            used += count
    return pieces, owners


def join_pieces(piece_tags: list[list[str]], owners: list[int], n_sentences: int) -> list[list[str]]:
    """The pieces' tags concatenated per sentence, in piece order (``owners`` as ``split_sentences``
    returned it); a sentence without pieces gets no tags."""
    if len(piece_tags) != len(owners):
        raise ValueError(f"{len(piece_tags)} tagged pieces for {len(owners)} owners")
    joined: list[list[str]] = [[] for _ in range(n_sentences)]
    for tags, owner in zip(piece_tags, owners):
        if not 0 <= owner < n_sentences:
            raise ValueError(f"piece owner {owner} is not one of the {n_sentences} sentences")
        joined[owner] += tags
    return joined


def _subword_counts(tokenizer, sentences: list[list[str]]) -> list[list[int]]:
    """Per sentence, the number of subwords of each word, as the tagger's own encoding splits them."""
    counts = [[0] * len(words) for words in sentences]
    filled = [i for i, words in enumerate(sentences) if words]
    if filled:
        enc = tokenizer([sentences[i] for i in filled], is_split_into_words=True, add_special_tokens=False)
        for row, i in enumerate(filled):
            for word in enc.word_ids(row):
                if word is not None:
                    counts[i][word] += 1
    return counts


def reserve_differences(tokenizer, model_type: str) -> list[str]:
    """The reserve as a protocol difference for result.json, where it is not the official one for ``model_type``."""
    ours, official = tokenizer.num_special_tokens_to_add(pair=False), 3 if model_type in OFFICIAL_XLMR_TYPES else 2
    if ours == official:
        return []
    return [f"tagging pieces: cut at max_length - {ours} subwords (the special tokens weam-ds adds to one sentence); "
            f"the official preprocessing (utils_preprocess.py) cuts at max_length - {official} for a {model_type} "
            f"model"]
