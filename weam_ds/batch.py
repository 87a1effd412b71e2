"""From shard samples to model batches: truncation, padding, alignment links, and MLM masking.

A batch is a dict of tensors, one row per sentence pair (a monolingual sample has an empty target):

- ``src_ids``, ``tgt_ids``: [B, L] token ids, padded; ``src_attention_mask``, ``tgt_attention_mask``;
- ``links``: [B, K, 2] (src position, tgt position), padded with -1;
- ``parallel``: [B] bool, the sample has a target side;
- after masking: ``src_input_ids``/``tgt_input_ids`` (the corrupted ids the encoder sees) and
  ``src_labels``/``tgt_labels`` (the original id at selected positions, -100 elsewhere).

Masking is vectorised over the whole batch (no loop over samples), so it can run in the training step
or in dataloader workers alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from weam_ds.config import MaskingConfig

IGNORE = -100
"""Label of positions that are not predicted (PyTorch's cross-entropy ignore_index)."""


@dataclass(frozen=True)
class TokenInfo:
    """What batching needs to know about the tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    mask_id: int
    special: torch.Tensor
    """[V] bool: never selected, never drawn as a random replacement."""
    word_start: torch.Tensor
    """[V] bool: the token begins a word (SentencePiece '▁' prefix; WordPiece: no '##' prefix)."""

    @classmethod
    def from_tokenizer(cls, tok) -> TokenInfo:
        """From a Hugging Face tokenizer (the dataset's ``tokenizer/`` loaded with AutoTokenizer)."""
        vocab_size = len(tok)
        pieces = tok.convert_ids_to_tokens(list(range(vocab_size)))
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[tok.all_special_ids] = True
        wordpiece = any(p.startswith("##") for p in pieces)
        word_start = torch.tensor([not p.startswith("##") if wordpiece else p.startswith("▁") for p in pieces])
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        return cls(vocab_size, tok.pad_token_id, bos, eos, tok.mask_token_id, special, word_start)


def _truncate(ids: np.ndarray, max_length: int) -> np.ndarray:
    """Keep the first ``max_length - 1`` tokens and the closing special token."""
    if len(ids) <= max_length:
        return ids
    return np.concatenate([ids[:max_length - 1], ids[-1:]])


def collate(samples: list[dict], info: TokenInfo, max_length: int) -> dict[str, torch.Tensor]:
    """Decoded samples (``src_ids``, ``tgt_ids``, ``align`` arrays; ``tgt_ids`` empty or None for
    monolingual text) → a padded batch. Links into truncated-away tokens are dropped."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3, got {max_length}")
    empty_target = np.array([info.bos_id, info.eos_id])  # a two-token placeholder keeps attention well-defined
    src, tgt, links, parallel = [], [], [], []
    for s in samples:
        has_tgt = s.get("tgt_ids") is not None and len(s["tgt_ids"]) > 0
        src.append(_truncate(s["src_ids"], max_length))
        tgt.append(_truncate(s["tgt_ids"], max_length) if has_tgt else empty_target)
        a = s.get("align")
        a = np.zeros((0, 2), np.int64) if a is None or not has_tgt else a
        # Positions at or past the last kept ordinary token were cut (the closing token never links).
        keep = (a[:, 0] < len(src[-1]) - 1) & (a[:, 1] < len(tgt[-1]) - 1) if len(a) else np.zeros(0, bool)
        links.append(a[keep])
        parallel.append(has_tgt)
    batch = {}
    for side, rows in (("src", src), ("tgt", tgt)):
        ids = np.full((len(rows), max(map(len, rows))), info.pad_id, dtype=np.int64)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = r
        batch[f"{side}_ids"] = torch.from_numpy(ids)
        batch[f"{side}_attention_mask"] = torch.from_numpy((np.arange(ids.shape[1]) < np.array(
            [len(r) for r in rows])[:, None]).astype(np.int64))
    padded = np.full((len(links), max(1, max(map(len, links))), 2), -1, dtype=np.int64)
    for k, a in enumerate(links):
        padded[k, :len(a)] = a
    batch["links"] = torch.from_numpy(padded)
    batch["parallel"] = torch.tensor(parallel)
    return batch


def mask_tokens(ids: torch.Tensor, attention_mask: torch.Tensor, info: TokenInfo, cfg: MaskingConfig,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption of a padded batch: select ``cfg.rate`` of the ordinary tokens (or of the
    words, with whole-word masking), replace ``cfg.mask`` of them by <mask> and ``cfg.random`` by a
    random ordinary token, keep the rest. Returns (input ids, labels)."""
    device = ids.device
    special = info.special.to(device)
    candidate = attention_mask.bool() & ~special[ids]

    def uniform(shape) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    if cfg.whole_word:
        # Number the words of each row; every subword of a word shares its draw. A continuation piece
        # right after a special token starts a word of its own.
        starts = candidate & (info.word_start.to(device)[ids] | ~torch.roll(candidate, 1, dims=1))
        word = torch.cumsum(starts.long(), dim=1)
        selected = candidate & (torch.gather(uniform(ids.shape[:1] + (ids.shape[1] + 1,)), 1, word) < cfg.rate)
    else:
        selected = candidate & (uniform(ids.shape) < cfg.rate)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    action = uniform(ids.shape)
    to_mask = selected & (action < cfg.mask)
    to_random = selected & (action >= cfg.mask) & (action < cfg.mask + cfg.random)
    random_ids = torch.randint(info.vocab_size, ids.shape, generator=generator, device=device)
    random_ids = torch.where(special[random_ids], ids, random_ids)  # a drawn special token: keep the original
    inputs = torch.where(to_mask, torch.full_like(ids, info.mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def mask_batch(batch: dict[str, torch.Tensor], info: TokenInfo, cfg: MaskingConfig,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Adds ``<side>_input_ids`` and ``<side>_labels`` for both sides."""
    out = dict(batch)
    for side in ("src", "tgt"):
        out[f"{side}_input_ids"], out[f"{side}_labels"] = mask_tokens(
            batch[f"{side}_ids"], batch[f"{side}_attention_mask"], info, cfg, generator)
    return out
