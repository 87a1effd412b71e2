"""Length-bucketed batches: less padding, the same mixture, exact resume, and batch_tokens as a bound on
the positions the objective encodes; rows packed (data.pack_rows: weam's and mlm's sentences, tlm's pairs) pad
less still."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from data_prep.typed_config import ConfigError, from_dict
from weam_ds.batch import TokenInfo, collate
from weam_ds.config import DataConfig, MaskingConfig, TrainConfig
from weam_ds.data import Corpus, TrainStream, padding_counts
from weam_ds.objectives import OBJECTIVES

from runs import metric_rows, run_config, train

GOAL = 0.10  # the project's padding goal, as a share of encoded positions


def _stream(dataset: Path, objective: str = "weam", seed: int = 7, **data) -> TrainStream:
    cfg = from_dict(DataConfig, {"datasets": [str(dataset)], "max_length": 48, "batch_size": 8, "workers": 0,
                                 "shuffle_buffer": 32, **data})
    corpus = Corpus.open(cfg)
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(corpus.tokenizer_dir)))
    return TrainStream(corpus, cfg, MaskingConfig(), info, seed=seed, rank=0, objective=objective)


def _take(stream: TrainStream, n: int) -> list:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _padding(items: list, objective: str) -> tuple[float, float]:
    """(padding share of the encoded positions, the share no batching avoids: weam and mlm pad each pair's
    shorter side to its longer one, |s - t| of 2·max(s, t) positions; tlm's rows hold both sides)."""
    encoded = padded = mismatch = tight = 0
    for batch, _ in items:
        positions, padding = padding_counts(batch, objective)
        encoded, padded = encoded + positions, padded + padding
        src, tgt = batch["src_attention_mask"].sum(1), batch["tgt_attention_mask"].sum(1)
        mismatch, tight = mismatch + int((src - tgt).abs().sum()), tight + int(2 * src.maximum(tgt).sum())
    return padded / encoded, (mismatch / tight if objective != "tlm" else 0.0)


@pytest.mark.parametrize("objective", ["weam", "tlm"])
def test_bucketing_leaves_little_padding_beyond_what_the_objective_must_pad(small_dataset, objective):
    dataset, _, _ = small_dataset
    bucketed = _stream(dataset, objective, pack_rows=False)
    batches = 2 * bucketed.cfg.bucket_pool  # two pools at the default settings
    padding, floor = _padding(_take(bucketed, batches), objective)
    in_draw_order, _ = _padding(_take(_stream(dataset, objective, bucket_pool=1, pack_rows=False), batches),
                                objective)
    assert padding - floor < GOAL, (padding, floor)
    assert padding < in_draw_order / 3, (padding, in_draw_order)


@pytest.mark.parametrize("objective", ["weam", "tlm"])
def test_packed_rows_pad_less_than_any_stacked_batching_and_hold_each_segment_once(small_dataset, objective):
    """weam's 2B sentences, or tlm's B pairs [x; y], packed: under the goal, and below what stacking leaves
    (for weam, below what no stacked batching avoids)."""
    dataset, _, _ = small_dataset
    batches = 2 * DataConfig(datasets=["-"]).bucket_pool
    packed = _take(_stream(dataset, objective), batches)
    padding, floor = _padding(packed, objective)
    stacked, _ = _padding(_take(_stream(dataset, objective, pack_rows=False), batches), objective)
    bounds = [GOAL, stacked] + ([floor] if objective == "weam" else [])  # tlm's rows have no such floor
    assert padding < min(bounds), (padding, stacked, floor)
    layout = OBJECTIVES[objective].layout
    for batch, _ in packed:
        sentence = batch["pack_sentence"]
        lengths = torch.from_numpy(layout.segments(batch))
        assert sentence.shape[1] <= layout.row_capacity * 48  # rows no wider than the unpacked objective's widest
        assert torch.equal(torch.bincount(sentence[sentence >= 0], minlength=len(lengths)), lengths)
        starts = sentence[batch["pack_row"], batch["pack_offset"]]
        assert torch.equal(starts[lengths > 0], torch.arange(len(lengths))[lengths > 0])


@pytest.mark.parametrize("objective", ["weam", "tlm"])
@pytest.mark.parametrize("data", [{"bucket_pool": 4}, {"bucket_pool": 3, "batch_size": None, "batch_tokens": 400}])
def test_bucketed_stream_resumes_exactly_inside_and_between_pools(small_dataset, data, objective):
    dataset, _, _ = small_dataset
    stream = _stream(dataset, objective, **data)
    items = _take(stream, 16)
    inside = [k for k, (_, where) in enumerate(items) if where.resume["emitted"] > 0]
    between = [k for k, (_, where) in enumerate(items) if where.resume["emitted"] == 0]
    assert inside and between
    for k in [k for k in inside[:3] + between[:2] if k + 4 < len(items)]:
        resumed = TrainStream(stream.corpus, stream.cfg, stream.masking, stream.info, seed=7, rank=0,
                              positions={0: items[k][1].resume}, first_batch=k + 1, objective=objective)
        for (expected, position), (got, where) in zip(items[k + 1:k + 5], _take(resumed, 4)):
            for key in ("src_input_ids", "tgt_input_ids", "src_labels", "links", "pair_index", "pack_sentence"):
                assert torch.equal(expected[key], got[key]), (k, key)
            assert where == position


def test_realised_pair_mixture_matches_the_temperature_probabilities(small_dataset):
    dataset, _, _ = small_dataset
    # 10,000 samples in whole pools (8 pools of 50 batches of 25), so that no pool is counted in part.
    stream = _stream(dataset, batch_size=25, bucket_pool=50, verify_sha256=False)
    counts = Counter(int(i) for batch, _ in _take(stream, 400) for i in batch["pair_index"])
    observed = np.array([counts[k] for k in range(len(stream.corpus.pairs))], dtype=float)
    assert observed.sum() == 10_000
    expected = 10_000 * stream.corpus.probabilities
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                      torch.tensor(chi2 / 2, dtype=torch.float64)))  # the chi-square survival
    assert p > 0.01, (observed, expected, chi2)


@pytest.mark.parametrize("objective, pack_rows", [("weam", True), ("weam", False), ("tlm", True), ("tlm", False)])
def test_batch_tokens_bounds_the_positions_the_objective_encodes(small_dataset, objective, pack_rows):
    dataset, _, _ = small_dataset
    budget = 8 * 48
    items = _take(_stream(dataset, objective, batch_size=None, batch_tokens=budget, bucket_pool=4,
                          pack_rows=pack_rows), 24)
    assert all(("pack_sentence" in batch) == pack_rows for batch, _ in items)
    encoded = [padding_counts(batch, objective)[0] for batch, _ in items]
    assert max(encoded) <= budget
    # Counting positions twice over would leave every batch at most half full.
    assert np.mean(encoded) > budget / 2, encoded


def test_padding_counts_follow_how_each_objective_encodes_a_monolingual_row():
    info = TokenInfo(vocab_size=16, pad_id=0, bos_id=1, eos_id=2, mask_id=3, special=torch.zeros(16, dtype=bool),
                     word_start=torch.ones(16, dtype=bool))
    ids = lambda n: np.array([1, *range(5, 5 + n - 2), 2], dtype=np.int32)  # noqa: E731 - a row of n tokens
    batch = collate([{"src_ids": ids(6), "tgt_ids": ids(4), "align": np.zeros((0, 2), np.int32)},
                     {"src_ids": ids(3), "tgt_ids": np.zeros(0, np.int32), "align": None}], info, 16)
    # Widths: source 6, target 4. weam/mlm: 2 pairs x 2 sides x 6; the monolingual row's two-token target
    # placeholder is encoded (attended), so it is not padding.
    assert padding_counts(batch, "weam") == (24, 24 - (6 + 4 + 3 + 2))
    assert OBJECTIVES["mlm"].layout is OBJECTIVES["weam"].layout
    # tlm: 2 rows of 6 + 4; the placeholder is masked out of the concatenation.
    assert padding_counts(batch, "tlm") == (20, 20 - (6 + 4 + 3))


@pytest.mark.slow
def test_training_logs_the_padding_of_the_batches_it_took(small_dataset, tmp_path):
    """The TLM baseline with 2 micro-batches per step: each step's figures are the sums of its micro-batches
    (8 pairs each), and the padding logged is theirs."""
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    cfg = run_config(dataset, out, steps=2, data={"eval_batches": 0}, objective={"name": "tlm"},
                     train={"log_interval": 1, "gradient_accumulation": 2})
    run = train(cfg, tmp_path, 1)
    rows = metric_rows(out)
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) and r["xpred"] == 0 and r["samples"] == 16 for r in rows)
    # The run's first step took its stream's first two batches (rank 0, one DataLoader worker).
    data = {k: v for k, v in cfg["data"].items() if k != "datasets"}
    batches = _take(_stream(dataset, "tlm", seed=TrainConfig().seed, **data), 2)
    positions, padded = map(sum, zip(*(padding_counts(batch, "tlm") for batch, _ in batches)))
    first = rows[0]
    assert (first["positions"], first["padded"]) == (positions, padded)
    assert first["padding"] == pytest.approx(padded / positions)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert events.Scalars("data/padding")[0].value == pytest.approx(padded / positions)
    assert f"padding {100 * padded / positions:.0f}%" in run.stderr


def test_a_pool_of_no_batches_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="bucket_pool: must be at least 1, got 0"):
        from_dict(DataConfig, {"datasets": ["data"], "bucket_pool": 0})
