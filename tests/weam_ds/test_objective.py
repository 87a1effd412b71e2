"""The WEAM objective and its baselines on a tiny encoder: hand-computed exchanges, gradients, padding,
truncation, mixed batches, autocast, and a short training run on real aligned pairs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import shard_samples
from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForMaskedLM

from weam_ds.batch import IGNORE, TokenInfo, collate, mask_batch, mask_tokens
from weam_ds.config import MaskingConfig, ObjectiveConfig
from weam_ds.objective import PretrainingObjective, PriorAttentionExchange, alignment_rows, hard_exchange, pack

MODES = [("weam", "hard"), ("weam", "prior_attention"), ("mlm", "hard"), ("tlm", "hard")]


@pytest.fixture(scope="module")
def real(small_dataset):
    """Aligned training pairs of the session dataset (fr-en and ja-en) and its tokenizer."""
    dataset, _, _ = small_dataset
    samples = shard_samples(dataset)
    tok = AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))
    return samples, TokenInfo.from_tokenizer(tok)


def tiny_model(vocab_size: int, seed: int = 0) -> XLMRobertaForMaskedLM:
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, attn_implementation="sdpa")
    return XLMRobertaForMaskedLM(cfg).eval()


def objective(model, name="weam", exchange="hard", **kw) -> PretrainingObjective:
    obj = PretrainingObjective(model, ObjectiveConfig(name=name, exchange=exchange, **kw))
    return obj.eval()


def masked(samples, info, rate=0.3, seed=0, max_length=64):
    return mask_batch(collate(samples, info, max_length), info, MaskingConfig(rate=rate),
                      torch.Generator().manual_seed(seed))


# --- the exchange, by hand ---------------------------------------------------------------------------

H_Y = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]])  # y position 3 is padding
Y_MASK = torch.tensor([[1, 1, 1, 0]])
# x positions 1 and 2 are masked; 1 links to y 0 and 2, 2 has no link; 3 (not masked) links to y 1;
# the link to y 3 points into padding and must be dropped.
X_SELECTED = torch.tensor([[False, True, True, False]])
LINKS = torch.tensor([[[1, 0], [1, 2], [3, 1], [1, 3], [-1, -1]]])


def test_alignment_rows_keep_masked_positions_and_real_keys():
    query = pack(X_SELECTED)
    assert query.pos.tolist() == [[1, 2]] and query.valid.tolist() == [[True, True]]
    a = alignment_rows(LINKS, query, 4, Y_MASK)
    assert a.tolist() == [[[1, 0, 1, 0], [0, 0, 0, 0]]]


def test_hard_exchange_and_its_loss_by_hand():
    a = alignment_rows(LINKS, pack(X_SELECTED), 4, Y_MASK)
    states, aligned = hard_exchange(a, H_Y)
    assert aligned.tolist() == [[True, False]]
    assert torch.allclose(states[0, 0], torch.tensor([1.0, 0.5]))  # (H_y[0] + H_y[2]) / 2
    assert torch.equal(states[0, 1], torch.zeros(2))
    # A linear "head" with 3 classes; the label of x position 1 is class 2.
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
    logits = [1.0, 0.5, 2 * 1.0 - 0.5]
    expected = -(logits[2] - math.log(sum(math.exp(v) for v in logits)))
    loss = torch.nn.functional.cross_entropy(states[aligned] @ w.T, torch.tensor([2]))  # the aligned row only
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_prior_attention_exchange_by_hand():
    eps = 0.01
    a = alignment_rows(LINKS, pack(X_SELECTED), 4, Y_MASK)
    h_x = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])
    h_query = h_x[:, [1, 2]]
    module = PriorAttentionExchange(2, eps)
    with torch.no_grad():
        module.query.weight.copy_(torch.eye(2))
        module.key.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        out = module(h_query, H_Y, a, Y_MASK)
    for m, prior in ((0, [0.5, 0.0, 0.5]), (1, [0.0, 0.0, 0.0])):  # the second row has no alignment
        q = h_query[0, m].tolist()
        keys = [[k[0], 2 * k[1]] for k in H_Y[0, :3].tolist()]
        scores = [(q[0] * k[0] + q[1] * k[1]) / math.sqrt(2) + math.log(p + eps) for k, p in zip(keys, prior)]
        weights = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
        expected = [sum(w * h[d] for w, h in zip(weights, H_Y[0, :3].tolist())) for d in range(2)]
        assert out[0, m].tolist() == pytest.approx(expected, rel=1e-5)  # padding (5, 5) got no weight
    # Both masked positions take part here (the unaligned one too); labels 0 and 1 under an identity "head".
    logits = out[0].tolist()
    expected_loss = sum(-(row[label] - math.log(sum(math.exp(v) for v in row)))
                        for row, label in zip(logits, (0, 1))) / 2
    loss = torch.nn.functional.cross_entropy(out[0], torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)


# --- the objective on a tiny encoder -------------------------------------------------------------------

def _embedding_grads(model, obj, batch) -> torch.Tensor:
    """Gradient of the loss at the word-embedding output: rows [:B] are x, [B:] are y."""
    captured = {}

    def keep(_, __, out):
        out.retain_grad()
        captured["out"] = out

    handle = model.base_model.embeddings.word_embeddings.register_forward_hook(keep)
    obj(batch).loss.backward()
    handle.remove()
    return captured["out"].grad


@pytest.mark.parametrize("exchange", ["hard", "prior_attention"])
def test_gradients_reach_the_other_side_through_the_exchange(real, exchange):
    samples, info = real
    model = tiny_model(info.vocab_size)
    obj = objective(model, exchange=exchange)
    batch = masked(samples[:8], info)
    n = len(samples[:8])
    # Nothing masked on y: y's inputs can only get gradient through XPRED(x←y).
    no_y = dict(batch, tgt_input_ids=batch["tgt_ids"], tgt_labels=torch.full_like(batch["tgt_labels"], IGNORE))
    assert _embedding_grads(model, obj, no_y)[n:].abs().sum() > 0
    model.zero_grad()
    no_x = dict(batch, src_input_ids=batch["src_ids"], src_labels=torch.full_like(batch["src_labels"], IGNORE))
    assert _embedding_grads(model, obj, no_x)[:n].abs().sum() > 0
    # The baseline without exchange: no gradient crosses over.
    model.zero_grad()
    assert _embedding_grads(model, objective(model, "mlm"), no_y)[n:].abs().sum() == 0


def test_unaligned_masked_positions_take_no_part_in_hard_xpred(real):
    samples, info = real

    def unlinked(sample) -> int:  # source words no link reaches (specials and truncation aside)
        return len(set(range(1, min(len(sample["src_ids"]), 64) - 1)) - set(sample["align"][:, 0].tolist()))

    # The samples with the most unlinked source tokens: eflomal's links differ from one build to the next.
    obj = objective(tiny_model(info.vocab_size))
    batch = masked(sorted(samples, key=unlinked, reverse=True)[:16], info, rate=0.4)
    linked = torch.zeros_like(batch["src_labels"], dtype=torch.bool)
    links = batch["links"]
    rows = torch.arange(len(links))[:, None].expand_as(links[..., 0])
    ok = links[..., 0] >= 0
    linked[rows[ok], links[..., 0][ok]] = True
    unaligned = (batch["src_labels"] != IGNORE) & ~linked
    assert unaligned.any(), "the batch has no unaligned masked position to test with"
    changed = dict(batch, src_labels=torch.where(unaligned, (batch["src_labels"] + 7) % info.vocab_size,
                                                 batch["src_labels"]))
    with torch.no_grad():
        before, after = obj(batch), obj(changed)
    assert after.xpred.item() == pytest.approx(before.xpred.item(), rel=1e-6)
    assert after.mlm.item() != pytest.approx(before.mlm.item(), rel=1e-6)  # those labels did count for MLM


@pytest.mark.parametrize("name,exchange", MODES)
def test_padding_does_not_change_the_loss(real, name, exchange):
    samples, info = real
    obj = objective(tiny_model(info.vocab_size), name, exchange)
    batch = masked(samples[:8], info)
    padded = dict(batch)
    for side in ("src", "tgt"):
        for key, fill in (("ids", info.pad_id), ("input_ids", info.pad_id), ("attention_mask", 0),
                          ("labels", IGNORE)):
            padded[f"{side}_{key}"] = torch.nn.functional.pad(batch[f"{side}_{key}"], (0, 9), value=fill)
    padded["links"] = torch.cat([batch["links"], torch.full((8, 5, 2), -1)], dim=1)
    with torch.no_grad():
        a, b = obj(batch), obj(padded)
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-5)
    assert b.tokens == a.tokens


def test_identical_sentences_with_identity_alignment_give_the_other_sides_mlm_loss(real):
    samples, info = real
    obj = objective(tiny_model(info.vocab_size))
    same = []
    for s in samples[:8]:
        inner = np.arange(1, len(s["src_ids"]) - 1)
        same.append({"src_ids": s["src_ids"], "tgt_ids": s["src_ids"], "align": np.stack([inner, inner], 1)})
    batch = masked(same, info, rate=0.3)
    batch.update(tgt_input_ids=batch["tgt_ids"], tgt_labels=torch.full_like(batch["tgt_labels"], IGNORE))
    with torch.no_grad():
        out = obj(batch)
        h_y = obj.encode(batch["tgt_ids"], batch["tgt_attention_mask"])
        selected = batch["src_labels"] != IGNORE
        expected = torch.nn.functional.cross_entropy(obj.head(h_y[selected]), batch["src_labels"][selected])
    assert out.tokens["xpred"] == int(selected.sum())
    assert out.xpred.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("exchange", ["hard", "prior_attention"])
def test_monolingual_samples_contribute_mlm_only(real, exchange):
    samples, info = real
    obj = objective(tiny_model(info.vocab_size), exchange=exchange)
    parallel = samples[:6]
    mono = [{"src_ids": s["src_ids"], "tgt_ids": None, "align": None} for s in samples[6:12]]
    batch = masked(parallel + mono, info, rate=0.4)
    assert batch["parallel"].tolist() == [True] * 6 + [False] * 6
    only_parallel = {k: v[:6] for k, v in batch.items()}
    with torch.no_grad():
        mixed, alone = obj(batch), obj(only_parallel)
    x_masked = int((batch["src_labels"][6:] != IGNORE).sum())
    assert x_masked > 0
    assert mixed.tokens["mlm"] == alone.tokens["mlm"] + x_masked
    assert mixed.tokens["xpred"] == alone.tokens["xpred"]


def test_truncation_drops_links_past_the_kept_tokens(real):
    samples, info = real
    long = max(samples, key=lambda s: len(s["src_ids"]))
    cut = len(long["src_ids"]) // 2
    batch = collate([long], info, cut)
    assert batch["src_ids"].shape[1] == cut and batch["src_ids"][0, -1] == long["src_ids"][-1]
    links = batch["links"][0]
    links = links[links[:, 0] >= 0]
    assert len(links) < len(long["align"])
    assert (links[:, 0] < cut - 1).all() and (links[:, 1] < batch["tgt_attention_mask"].sum() - 1).all()


@pytest.mark.parametrize("name,exchange", MODES)
def test_bf16_autocast_matches_fp32(real, name, exchange):
    samples, info = real
    obj = objective(tiny_model(info.vocab_size), name, exchange)
    batch = masked(samples[:8], info)
    with torch.no_grad():
        full = obj(batch).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = obj(batch).loss.item()
    assert math.isfinite(half) and half == pytest.approx(full, rel=0.03)


# --- masking -------------------------------------------------------------------------------------------

def test_masking_rates_and_special_tokens(real):
    samples, info = real
    batch = masked(samples[:256], info, rate=0.15, max_length=128)
    ids, attn = batch["src_ids"], batch["src_attention_mask"]
    inputs, labels = batch["src_input_ids"], batch["src_labels"]
    ordinary = attn.bool() & ~info.special[ids]
    selected = labels != IGNORE
    assert not (selected & ~ordinary).any()
    assert selected.sum() / ordinary.sum() == pytest.approx(0.15, abs=0.02)
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    share_masked = (inputs[selected] == info.mask_id).float().mean()
    share_kept = (inputs[selected] == ids[selected]).float().mean()
    assert share_masked == pytest.approx(0.8, abs=0.04)
    assert share_kept == pytest.approx(0.1, abs=0.04) or share_kept > 0.1  # a random draw can hit the original
    assert not info.special[inputs[selected & (inputs != info.mask_id)]].any()


def test_whole_word_masking_selects_every_piece_of_a_word(real):
    samples, info = real
    batch = collate(samples[:128], info, 128)
    cfg = MaskingConfig(rate=0.2, whole_word=True)
    _, labels = mask_tokens(batch["src_ids"], batch["src_attention_mask"], info, cfg, torch.Generator().manual_seed(3))
    ids, selected = batch["src_ids"], labels != IGNORE
    continuation = batch["src_attention_mask"].bool() & ~info.special[ids] & ~info.word_start[ids]
    assert continuation.any(), "the tokenizer split no word into pieces"
    prev = torch.roll(selected, 1, dims=1)
    prev_ordinary = torch.roll(batch["src_attention_mask"].bool() & ~info.special[ids], 1, dims=1)
    # A continuation piece is selected exactly when the piece before it (same word) is.
    inside = continuation & prev_ordinary
    assert torch.equal(selected[inside], prev[inside])
    assert selected.any()


# --- learning ------------------------------------------------------------------------------------------

@pytest.mark.slow  # 40 training steps in this process: 5 to 10 s under a loaded make test
@pytest.mark.parametrize("exchange", ["hard", "prior_attention"])
def test_tiny_model_lowers_mlm_and_xpred_on_real_pairs(real, small_dataset, exchange):
    samples, info = real
    dataset, _, _ = small_dataset
    dev = shard_samples(dataset, split="dev")
    model = tiny_model(info.vocab_size, seed=1)
    obj = PretrainingObjective(model, ObjectiveConfig(exchange=exchange))
    held_out = masked(dev, info, rate=0.15, seed=5, max_length=48)

    def dev_losses() -> np.ndarray:
        obj.eval()
        with torch.no_grad():
            out = obj(held_out)
        obj.train()
        return np.array([out.mlm.item(), out.xpred.item()])

    before = dev_losses()
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        picked = [samples[i] for i in rng.choice(len(samples), 16, replace=False)]
        out = obj(mask_batch(collate(picked, info, 48), info, MaskingConfig(), gen))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = dev_losses()
    assert after[0] < 0.85 * before[0], f"dev MLM did not fall: {before[0]:.2f} -> {after[0]:.2f}"
    assert after[1] < 0.85 * before[1], f"dev XPRED did not fall: {before[1]:.2f} -> {after[1]:.2f}"
