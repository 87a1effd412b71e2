"""Continued pre-training: the dataset's token ids must mean what the checkpoint learnt them as.

A dataset stores token ids, not text, so a checkpoint (mBERT, XLM-R, an earlier export) can only continue
on a dataset that data_prep built with the checkpoint's own tokenizer (``tokenizer.path: <checkpoint>``).
Another tokenizer of the same size would train silently on the wrong embeddings (every id pointing at
another token's row), so the two vocabularies (token → id, and the special tokens) are compared before
any process starts work, not only their sizes. ``model_vocab: resize`` is the explicit way out: the
embedding table (and the MLM head) takes the dataset's vocabulary size, new rows initialised, existing rows
kept by id, so a piece whose id moved starts from another piece's vector and training has to relearn it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from data_prep.typed_config import ConfigError

ModelVocab = Literal["match", "resize"]
"""``match``: the dataset's tokenizer must be the checkpoint's (refused otherwise); ``resize``: train the
checkpoint on the dataset's tokenizer, its embedding table resized to it."""
_SPECIAL = ("pad_token", "mask_token", "cls_token", "sep_token", "bos_token", "eos_token", "unk_token")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model")


def check_model_vocabulary(model: str, tokenizer_dir: Path, policy: str, where: str) -> None:
    """Refuse (ConfigError, one line naming both) a checkpoint ``model`` whose tokenizer differs from the
    dataset's ``tokenizer_dir`` under ``policy`` ``match``. Presets are built for the dataset's vocabulary."""
    from weam_ds.preset_table import PRESETS

    if model in PRESETS or policy == "resize":
        return
    resize = ("or set model_vocab: resize to train the checkpoint on this tokenizer anyway (its embedding rows "
              "kept by id, resized to the tokenizer's size)")
    if not any((Path(model) / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError(f"{where}: model: {model} holds no tokenizer, so the dataset's ({tokenizer_dir}) cannot be "
                          f"checked against it: save the checkpoint's own tokenizer into it (save_pretrained), "
                          f"{resize}")
    rebuild = f"rebuild the dataset with data_prep's tokenizer.path: {model}, {resize}"
    difference = vocabulary_difference(_load(Path(model), where), _load(tokenizer_dir, where))
    if difference:
        raise ConfigError(f"{where}: model: the checkpoint {model} and the dataset's tokenizer {tokenizer_dir} differ "
                          f"({difference}), so the dataset's token ids would point at the wrong embeddings: {rebuild}")


def vocabulary_difference(checkpoint, dataset) -> str | None:
    """How two Hugging Face tokenizers' vocabularies differ (the checkpoint's first), or None if they are one."""
    checkpoint_vocab, dataset_vocab = checkpoint.get_vocab(), dataset.get_vocab()
    if len(checkpoint_vocab) != len(dataset_vocab):
        return f"{len(checkpoint_vocab)} and {len(dataset_vocab)} tokens"
    moved = sum(dataset_vocab.get(token) != i for token, i in checkpoint_vocab.items())
    if moved:
        return f"{moved} of {len(checkpoint_vocab)} tokens have other ids"
    for name in _SPECIAL:
        if getattr(checkpoint, name, None) != getattr(dataset, name, None):
            return f"{name} {getattr(checkpoint, name, None)!r} and {getattr(dataset, name, None)!r}"
    return None


def _load(directory: Path, where: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{where}: model: cannot load the tokenizer in {directory} ({first})") from None
