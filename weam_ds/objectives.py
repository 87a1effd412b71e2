r"""The objectives' registry: how each pre-training objective lays out a batch and what it predicts.

One entry per objective (``OBJECTIVES``); the stream (weam_ds.data: batch cuts, length bucketing, row packing),
the loss (weam_ds.objective), the config check (weam_ds.config), the memory planner's worst-case batch
(launcher.planner), the study's budget and the report read it here. A new objective is one entry and its loss.

A batch of B pairs, side b's source and target s_b, t_b tokens long (truncated to max_length; a monolingual
sample's target is collate's two-token placeholder, weam_ds.batch), reaches the encoder in one of two layouts:

    stacked (weam, mlm):      2B rows, every sentence a row:   2B · max_b max(s_b, t_b)            positions
    concatenated (tlm):        B rows [x; y]:                   B · (max_b s_b + max_b max(t_b, 2))  positions

Packed (``data.pack_rows``, weam_ds.packing), the rows' real tokens are segments in R rows of at most
C · max_length positions, C the layout's row capacity (the widest row it encodes unpacked):

    stacked:       2B segments s_1 … s_B, t_1 … t_B (a monolingual placeholder included),  C = 1
    concatenated:   B segments s_b + t_b (a monolingual sample's s_b alone),                C = 2

and encode R · W positions, W the fullest row. A monolingual sample's placeholder target is encoded as real
tokens by the stacked layout (and not predicted); the concatenated layout leaves it out.

What the MLM head predicts, for rate r of the ordinary tokens selected: MLM(x) + MLM(y) for every objective
(about r of the real positions); a cross-lingual objective (weam) also predicts each side's masked words from
the other side's states, XPRED(x←y) + XPRED(y←x): as many positions again, and an alignment exchange.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Layout:
    """How an objective hands a batch of pairs to the encoder (the module docstring's table). Widths are arrays
    with one entry per sample: ``src`` and ``tgt`` tokens, ``tgt`` as ``sides`` counts it."""

    rows_per_pair: int
    """Rows a pair takes unpacked: 2 stacked (x and y), 1 concatenated ([x; y])."""
    row_capacity: int
    """The widest row encoded unpacked, in max_lengths: packed rows hold at most this × max_length positions."""
    monolingual_target: bool
    """A monolingual sample's placeholder target is encoded as real tokens (the concatenated layout leaves it
    out)."""
    padded: Callable[[np.ndarray, np.ndarray], int]
    """Positions of these samples' rows, each padded to the batch's widest row."""
    segment_widths: Callable[[np.ndarray, np.ndarray], np.ndarray]
    """The lengths of these samples' packed segments, in the stacked rows' order (weam_ds.packing)."""

    def sides(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """A collated batch's [B] source and target lengths in real tokens as the layout encodes them: a
        monolingual sample's placeholder target counted where the layout encodes it, else 0."""
        src, tgt = batch["src_attention_mask"].sum(1).numpy(), batch["tgt_attention_mask"].sum(1).numpy()
        return src, tgt if self.monolingual_target else tgt * batch["parallel"].numpy()

    def segments(self, batch: dict) -> np.ndarray:
        """The lengths of a collated batch's packed segments (the stream plans them, weam_ds.packing)."""
        return self.segment_widths(*self.sides(batch))


STACKED = Layout(rows_per_pair=2, row_capacity=1, monolingual_target=True,
                 padded=lambda src, tgt: 2 * len(src) * int(max(src.max(), tgt.max())),
                 segment_widths=lambda src, tgt: np.concatenate([src, tgt]))
# collate pads the target side to at least a monolingual sample's two-token placeholder, which TLM leaves out.
CONCATENATED = Layout(rows_per_pair=1, row_capacity=2, monolingual_target=False,
                      padded=lambda src, tgt: len(src) * int(src.max() + max(tgt.max(), 2)),
                      segment_widths=np.add)


@dataclass(frozen=True)
class Objective:
    """One pre-training objective: its batch layout and what it predicts; its loss is weam_ds.objective's."""

    layout: Layout
    cross_lingual: bool
    """It predicts masked words from the other side's states too (XPRED): twice the MLM head's positions, and
    the exchange (``objective.exchange``) between aligned words."""
    colour: str
    """Its colour in the report's plots (a matplotlib colour name)."""


OBJECTIVES: dict[str, Objective] = {
    "weam": Objective(STACKED, cross_lingual=True, colour="tab:blue"),
    "mlm": Objective(STACKED, cross_lingual=False, colour="tab:orange"),
    "tlm": Objective(CONCATENATED, cross_lingual=False, colour="tab:green"),
}
"""weam: MLM on both sides plus cross-lingual prediction; mlm: MLM on both sides; tlm: MLM on the concatenated
pair (XLM's translation LM). The order is the config error's and the report's."""

ObjectiveName = Literal[tuple(OBJECTIVES)]
"""The run config's ``objective.name``: one of the registry's keys (data_prep.typed_config checks it)."""
