"""The dataset's subword tokenizer: trained on the corpus or copied from a local Hugging Face directory.

Either way it is saved in Hugging Face format under ``<output_dir>/tokenizer`` (loadable with
``AutoTokenizer.from_pretrained``) and must be a fast tokenizer: its character offsets are what maps
word alignments onto subword positions.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from data_prep import PrepError

log = logging.getLogger(__name__)

# XLM-R's special tokens and order, so that trained and downloaded tokenizers look alike downstream.
SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                  "mask_token": "<mask>"}


def train_tokenizer(texts: Iterable[str | list[str]], vocab_size: int, out_dir: Path) -> None:
    """A SentencePiece-style unigram model (as XLM-R uses), trained from a stream of sentences
    (or of lists of sentences, which crosses into the Rust trainer fewer times)."""
    specials = list(SPECIAL_TOKENS.values())
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      max_piece_length=16, show_progress=True)
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except Exception as exc:  # the Rust trainer raises a bare Exception; only this one is the user's to fix
        if "not large enough to contain all chars" not in str(exc):
            raise
        raise PrepError(f"tokenizer.train.vocab_size: {vocab_size} is too small: it must hold every distinct "
                        f"character of the corpus and the special tokens (the trainer: {exc})") from None
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    _save_hf(tok, out_dir)


def _save_hf(tok: Tokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="<s>", sep_token="</s>", **SPECIAL_TOKENS)
    hf.save_pretrained(str(out_dir))


def copy_tokenizer(source: str, out_dir: Path) -> None:
    """Load a local Hugging Face tokenizer (never from a hub) and save it into the dataset directory."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PrepError(f"tokenizer.path: cannot load a tokenizer from {source} ({str(exc).splitlines()[0]})") from None
    if not hf.is_fast:
        raise PrepError(f"tokenizer.path: {source} has no fast (tokenizers) version; its offsets are needed")
    hf.save_pretrained(str(out_dir))


def load_fast_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    """The raw tokenizers object, which workers use: light to import, batched, with offsets."""
    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenizer_sha256(tokenizer_dir: Path) -> str:
    """One hash over every file of the tokenizer directory (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(tokenizer_dir).rglob("*") if p.is_file()):
        h.update(f.relative_to(tokenizer_dir).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
