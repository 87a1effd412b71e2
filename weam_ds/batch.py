"""From shard samples to model batches: truncation, padding, alignment links, and MLM masking.

A batch is a dict of tensors, one row per sentence pair (a monolingual sample has an empty target). Every key
it carries:

- ``src_ids``, ``tgt_ids``: [B, L] int64 token ids, padded with the tokenizer's pad id; a sentence longer than
  max_length keeps its first max_length - 1 tokens and its closing token; an empty target is the two-token
  placeholder <s> </s>;
- ``src_attention_mask``, ``tgt_attention_mask``: [B, L] int64, 1 at real tokens;
- ``links``: [B, K, 2] int64 (src position, tgt position), padded with -1; links into truncated-away tokens
  are dropped;
- ``parallel``: [B] bool, the sample has a target side;
- after masking (``mask_batch``): ``src_input_ids``, ``tgt_input_ids`` ([B, L] int64, the corrupted ids the
  encoder sees) and ``src_labels``, ``tgt_labels`` ([B, L] int64, the original id at selected positions,
  ``IGNORE`` elsewhere);
- from the training stream (``weam_ds.data``): ``pair_index``, [B] int64, each row's language pair as an index
  into ``Corpus.pairs``; with ``data.pack_rows``, the packing plan of the N stacked rows (weam_ds.packing;
  weam and mlm: the 2B sentences, tlm: the B pairs [x; y]): ``pack_row``, ``pack_offset`` ([N] int64, where
  each row's segment starts in the packed rows) and ``pack_sentence`` ([R, W] int64, the stacked row each
  packed position holds, negative at padding). Where the batch came from travels beside it (the stream
  yields (batch, position)), not in it.

Collation and masking work on the whole batch at once (numpy gathers and torch ops, no loop over samples
but for listing their arrays): in a DataLoader worker they are part of what one process must deliver per
second to keep a GPU busy (``bench/bench_stream.py``).
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


def _pad(rows: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids → ([B, L] int64 ids padded with ``pad_id``, [B, L] bool real-token mask), L the longest
    row. One scatter of the concatenated rows: the mask's True cells, in row-major order, are their tokens."""
    real = np.arange(max(map(len, rows), default=0)) < np.fromiter(map(len, rows), np.int64, len(rows))[:, None]
    ids = np.full(real.shape, pad_id, dtype=np.int64)
    ids[real] = np.concatenate(rows) if rows else []
    return ids, real


def _pad_links(links: list[np.ndarray], src_last: np.ndarray, tgt_last: np.ndarray) -> np.ndarray:
    """[B, K, 2] int64 links padded with -1 (K >= 1), keeping each row's links before its ``src_last`` and
    ``tgt_last`` positions (the closing tokens; past them the tokens were truncated away)."""
    counts = np.fromiter(map(len, links), np.int64, len(links))
    slots = np.arange(max(1, counts.max(initial=0))) < counts[:, None]
    padded = np.full(slots.shape + (2,), -1, dtype=np.int64)
    if counts.any():
        padded[slots] = np.concatenate(links)
    keep = ~slots | ((padded[..., 0] < src_last[:, None]) & (padded[..., 1] < tgt_last[:, None]))
    if keep.all():
        return padded
    # Truncation cut some links' tokens (rare at usual lengths): drop those links and pad again.
    return _pad_links([a[k[:len(a)]] for a, k in zip(links, keep)], src_last, tgt_last)


def collate(samples: list[dict], info: TokenInfo, max_length: int) -> dict[str, torch.Tensor]:
    """Decoded samples (``src_ids``, ``tgt_ids``, ``align`` arrays; ``tgt_ids`` empty or None for
    monolingual text) → a padded batch. Links into truncated-away tokens are dropped."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3, got {max_length}")
    empty_target = np.array([info.bos_id, info.eos_id])  # a two-token placeholder keeps attention well-defined
    no_links = np.zeros((0, 2), np.int64)
    parallel = [s.get("tgt_ids") is not None and len(s["tgt_ids"]) > 0 for s in samples]
    sides = {"src": [s["src_ids"] for s in samples],
             "tgt": [s["tgt_ids"] if p else empty_target for s, p in zip(samples, parallel)]}
    batch, kept = {}, {}
    for side, rows in sides.items():
        ids, real = _pad([_truncate(r, max_length) for r in rows], info.pad_id)
        batch[f"{side}_ids"] = torch.from_numpy(ids)
        batch[f"{side}_attention_mask"] = torch.from_numpy(real.astype(np.int64))
        kept[side] = real.sum(axis=1)
    links = [s["align"] if p and s.get("align") is not None else no_links for s, p in zip(samples, parallel)]
    batch["links"] = torch.from_numpy(_pad_links(links, kept["src"] - 1, kept["tgt"] - 1))
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
