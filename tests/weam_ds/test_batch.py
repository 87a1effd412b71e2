"""Collation on whole batches: every row is its sample truncated and padded as weam_ds.batch documents, with the
links that survive the truncation, for parallel and monolingual samples alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shard_samples
from transformers import AutoTokenizer

from weam_ds.batch import TokenInfo, collate


def _kept(ids: list[int], max_length: int) -> list[int]:
    return ids if len(ids) <= max_length else ids[:max_length - 1] + ids[-1:]


@pytest.mark.parametrize("max_length", [6, 16, 128])
def test_each_row_is_its_sample_truncated_padded_and_linked(small_dataset, max_length):
    dataset, _, _ = small_dataset
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(dataset / "tokenizer")))
    samples = shard_samples(dataset, per_pair=24)
    # Every fifth sample monolingual: no target (None, or an empty array) and no links.
    samples = [dict(s, tgt_ids=None if k % 10 == 0 else np.zeros(0, np.int32), align=None) if k % 5 == 0 else s
               for k, s in enumerate(samples)]
    batch = collate(samples, info, max_length)
    rows = {"src": [], "tgt": []}
    for k, s in enumerate(samples):
        parallel = s["tgt_ids"] is not None and len(s["tgt_ids"]) > 0
        assert batch["parallel"][k] == parallel
        src = _kept(s["src_ids"].tolist(), max_length)
        tgt = _kept(s["tgt_ids"].tolist(), max_length) if parallel else [info.bos_id, info.eos_id]
        for side, ids in (("src", src), ("tgt", tgt)):
            rows[side].append(len(ids))
            width = batch[f"{side}_ids"].shape[1]
            assert batch[f"{side}_ids"][k].tolist() == ids + [info.pad_id] * (width - len(ids))
            assert batch[f"{side}_attention_mask"][k].tolist() == [1] * len(ids) + [0] * (width - len(ids))
        links = [(i, j) for i, j in (s["align"].tolist() if parallel else []) if i < len(src) - 1 and j < len(tgt) - 1]
        row = batch["links"][k].tolist()
        assert [tuple(link) for link in row[:len(links)]] == links and all(l == [-1, -1] for l in row[len(links):])
    assert batch["src_ids"].shape[1] == max(rows["src"]) and batch["tgt_ids"].shape[1] == max(rows["tgt"])
    assert (batch["links"][:, -1] >= 0).any() or batch["links"].shape[1] == 1  # as wide as the most links kept
    assert all(batch[k].dtype == torch.int64 for k in batch if k != "parallel")
    if max_length == 6:
        assert sum(len(s["src_ids"]) > 6 for s in samples) > 0, "no row was truncated"
