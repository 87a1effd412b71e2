"""Row packing: the segments of a batch share R rows of W positions instead of one padded row each.

WEAM and MLM encode both sides of every pair in one encoder call, stacked as 2B rows: every sentence is padded to
the batch's widest one, and length bucketing cannot help with a pair whose two sides differ in length. TLM
encodes B rows [x; y], each padded to the widest source plus the widest target, which pads every pair whose
sides are not both the widest. Packed, each stacked row's real tokens are a segment of a packed row: a sentence
(weam, mlm) or a pair's [x; y] (tlm; a monolingual sample's x only, as tlm encodes it), as the objective's
``Layout.segments`` lists them (weam_ds.objectives). A segment attends only to itself (a block-diagonal
attention mask) and keeps the position ids of its stacked row (restarting at its first token, and at y for
tlm), so the encoder computes for it what it computes in a row of its own.

The plan is made on the data side (``pack_batch``, numpy, in the DataLoader workers) and travels in the batch:

- ``pack_row``, ``pack_offset``: [N] int64, where each stacked row's segment starts (weam, mlm: N = 2B, sources
  are sentences 0..B-1, targets B..2B-1, a monolingual sample's two-token target placeholder included; tlm:
  N = B, pair b's [x; y]);
- ``pack_sentence``: [R, W] int64, the stacked row whose segment each packed position holds; a padding position
  holds -1 - (its index in the flattened rows), a segment of its own, so that it attends to itself only and no
  attention row is empty (an empty row's softmax is NaN, which would reach the gradients).

The rule. Segments longest first, each into the row holding the fewest tokens so far (longest-processing-time
scheduling), over the fewest rows R, starting from max(⌈T / C⌉, the segments longer than C / 2), for which no
row holds more than C tokens; W is the fullest row. C is the widest row the objective encodes unpacked
(``Layout.row_capacity`` × ``data.max_length``): a sentence for weam and mlm, twice that for tlm's pair.
Balanced rows trimmed to the fullest one leave little padding. Where that plan has more positions than one
segment per row (N rows of the longest segment: a few segments of similar lengths), the plan is one segment per
row. So a packed batch never has more positions than the stacked one, and since W ≤ C a step's memory is
bounded as an unpacked batch's is (its R × W positions are what ``batch_tokens`` counts). Attention spans W
positions instead of the widest segment: about W / (6 × hidden size) more FLOPs per token, 3% for a base model at
W = 128.

The model side (``packed_inputs``, ``unpack``) is index operations only: no host synchronisation.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np
import torch

KEYS = ("pack_row", "pack_offset", "pack_sentence")
"""What a packed batch carries beside the usual keys (weam_ds.batch)."""


def plan(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(row [N], offset [N], rows R, width W) for segments of these lengths, none longer than ``capacity``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable").tolist()
    sizes, longest = lengths.tolist(), int(lengths.max())
    # Two segments longer than half a row never share one: there are at least that many rows.
    rows = max(1, -(-int(lengths.sum()) // capacity), int((2 * lengths > capacity).sum()))
    while rows < len(sizes):
        row, offset, width = _longest_first(sizes, order, rows)
        if width <= capacity:
            if rows * width < len(sizes) * longest:
                return row, offset, rows, width
            break
        rows += 1
    # One segment per row, as stacked: what few segments of similar lengths pack no better than.
    return np.arange(len(sizes)), np.zeros(len(sizes), np.int64), len(sizes), longest


def _longest_first(sizes: list[int], order: list[int], rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Longest-processing-time scheduling: (row [N], offset [N], the fullest row's tokens)."""
    row, offset = np.zeros(len(sizes), np.int64), np.zeros(len(sizes), np.int64)
    loads = [(0, r) for r in range(rows)]  # (tokens so far, row): ties go to the lower row
    for i in order:
        load, r = heapq.heappop(loads)
        row[i], offset[i] = r, load
        heapq.heappush(loads, (load + sizes[i], r))
    return row, offset, max(load for load, _ in loads)


def positions(lengths: np.ndarray, capacity: int) -> int:
    """R × W: the positions the encoder processes for segments of these lengths packed."""
    _, _, rows, width = plan(lengths, capacity)
    return rows * width


def pack_batch(lengths: np.ndarray, capacity: int) -> dict[str, torch.Tensor]:
    """The plan (``KEYS``) of a batch's stacked rows whose segments are this long, in rows of at most ``capacity``
    positions."""
    row, offset, rows, width = plan(lengths, capacity)
    sentence = -1 - np.arange(rows * width, dtype=np.int64)
    starts = np.repeat(row * width + offset - np.cumsum(lengths) + lengths, lengths)
    sentence[starts + np.arange(int(lengths.sum()))] = np.repeat(np.arange(len(lengths)), lengths)
    return {"pack_row": torch.from_numpy(row), "pack_offset": torch.from_numpy(offset),
            "pack_sentence": torch.from_numpy(sentence.reshape(rows, width))}


def packed_inputs(ids: torch.Tensor, positions: torch.Tensor, batch: dict[str, torch.Tensor],
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stacked [N, L] ids and position ids as packed rows: ([R, W] ids, [R, W] position ids, [R, W, W] bool:
    the two positions belong to one segment). Each segment is its stacked row's first tokens."""
    sentence = batch["pack_sentence"]
    real = sentence >= 0
    k = sentence.clamp_min(0)
    within = torch.arange(sentence.shape[1], device=sentence.device)[None] - batch["pack_offset"][k]
    within = torch.where(real, within, 0)
    packed = torch.where(real, ids[k, within], pad_id)
    return packed, torch.where(real, positions[k, within], 0), sentence[:, :, None] == sentence[:, None, :]


def unpack(h: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The packed encoder output [R, W, d] back in the stacked layout [N, L, d] of ``mask`` (zeros at padding)."""
    rows, width, hidden = h.shape
    flat = (batch["pack_row"][:, None] * width + batch["pack_offset"][:, None]
            + torch.arange(mask.shape[1], device=mask.device)[None])
    flat = torch.where(mask.bool(), flat, rows * width)  # padding reads the zero state appended below
    return torch.cat([h.reshape(rows * width, hidden), h.new_zeros(1, hidden)])[flat]


ATTENTION_MASKS: dict[str, Callable[[torch.Tensor, torch.dtype], torch.Tensor]] = {
    # SDPA takes a bool mask, True = attend (its efficient CUDA kernel included).
    "sdpa": lambda same, dtype: same[:, None],
    # Eager attention adds the mask to the scores.
    "eager": lambda same, dtype: torch.zeros(same.shape, dtype=dtype, device=same.device)
    .masked_fill(~same, torch.finfo(dtype).min)[:, None],
}
"""The [R, 1, W, W] mask as each attention implementation of Hugging Face encoders takes a 4D mask: as it is,
without building one of its own (transformers.masking_utils)."""
