r"""The pre-training objectives: WEAM and its two baselines, in one code path.

WEAM (Yang et al., 2021, arXiv 2106.01732). A parallel pair (x, y) has a word-alignment matrix
A ∈ {0, 1}^{|x|×|y|} (``links`` of the batch: subword positions, from the shard's ``align.npy``).
Both sentences are masked independently (batch.mask_tokens): M_x, M_y are the selected positions,
x̃, ỹ the corrupted inputs. One shared encoder gives H_x = enc(x̃), H_y = enc(ỹ) ∈ R^{L×d}; the MLM
head g (transform + decoder tied to the input embeddings) gives log-probabilities log p(· | h).

    MLM(x)     = mean_{i ∈ M_x}  -log p(x_i | H_x[i])

Cross-lingual prediction replaces the state of each masked position of x by states of y:

    hard:             Â = A / rowsum(A)                      (rows of masked positions only)
                      Ĥ_x[i] = Σ_j Â[i, j] H_y[j]             for i ∈ M_x with rowsum(A)[i] > 0
                      XPRED(x←y) = mean_{i ∈ M_x, rowsum(A)[i] > 0} -log p(x_i | Ĥ_x[i])

    prior_attention:  s[i, j] = (W_q H_x[i]) · (W_k H_y[j]) / √d + log(Â[i, j] + ε)
                      Ĥ_x[i] = Σ_j softmax_j(s[i, ·]) H_y[j]   for every i ∈ M_x (keys: y's non-padding)
                      XPRED(x←y) = mean_{i ∈ M_x} -log p(x_i | Ĥ_x[i])

In ``prior_attention`` the alignment is a prior, not a rule: an unaligned masked word (Â row 0, so a
flat prior) or a mis-aligned one can still attend to its translation; W_q, W_k ∈ R^{d×d} are its only
parameters (values are y's states themselves, so Ĥ stays in the space the MLM head reads). XPRED(y←x)
is symmetric, with Aᵀ. The loss of a batch:

    L = MLM(x) + MLM(y) + λ · (XPRED(x←y) + XPRED(y←x))          (λ = ``xpred_weight``)

Means are over the positions of the whole batch; a term with no positions is 0. Monolingual samples
(``parallel`` false) contribute MLM(x) only.

Baselines, on the same batches and masks: ``mlm`` is L = MLM(x) + MLM(y); ``tlm`` (XLM's translation
LM) encodes the concatenation [x; y] (positions restart at y, as in XLM) and L = MLM over both halves.

Implementation notes. Each objective's batch layout (stacked or concatenated rows, packed segments) and whether
it predicts across languages are its entry in weam_ds.objectives; this module computes the losses. Both sides
go through the encoder in one call (one parameter gather under ZeRO-3): stacked as 2B rows, or, when the batch
carries a packing plan (``data.pack_rows``, weam_ds.packing), packed into fewer rows of several sentences each
and put back in the stacked layout; tlm's [x; y] rows are packed the same way, a pair's concatenation as one
segment. The MLM head runs only on the selected positions, never on whole sequences: with a 250k vocabulary,
full-sequence logits would dominate time and memory. Masked positions are gathered per row into [B, M]
slots so that alignments, exchanges and heads are batched tensor operations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from weam_ds.batch import IGNORE
from weam_ds.config import ObjectiveConfig
from weam_ds.objectives import CONCATENATED, OBJECTIVES
from weam_ds.packing import ATTENTION_MASKS, packed_inputs, unpack


@dataclass
class Packed:
    """The selected positions of each row, left-aligned into M slots."""

    pos: torch.Tensor
    """[B, M] positions (slots past a row's count hold unselected positions)."""
    valid: torch.Tensor
    """[B, M] bool: the slot holds a selected position."""


def pack(selected: torch.Tensor) -> Packed:
    count = selected.sum(dim=1)
    m = int(count.max()) if selected.numel() else 0
    # A stable sort of "not selected" puts each row's selected positions first, in order.
    pos = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=selected.device)[None, :] < count[:, None]
    return Packed(pos, valid)


def alignment_rows(links: torch.Tensor, query: Packed, query_len: int, key_mask: torch.Tensor) -> torch.Tensor:
    """A restricted to the packed query positions: [B, M, L_key] link counts.

    ``links`` [B, K, 2] are (query position, key position), -1 padded. Links to padding or past the
    sequence lengths (truncation) are dropped.
    """
    b, m = query.pos.shape
    key_len = key_mask.shape[1]
    slot = torch.full((b, query_len), -1, dtype=torch.long, device=links.device)
    slot.scatter_(1, query.pos, torch.where(query.valid, torch.arange(m, device=links.device), -1))
    i, j = links[..., 0], links[..., 1]
    ok = (i >= 0) & (i < query_len) & (j >= 0) & (j < key_len)
    i, j = i.clamp(0, query_len - 1), j.clamp(0, key_len - 1)
    rows = torch.arange(b, device=links.device)[:, None].expand_as(i)
    s = slot[rows, i]
    ok &= (s >= 0) & key_mask[rows, j].bool()
    a = torch.zeros(b, max(m, 0), key_len, device=links.device)
    a.index_put_((rows[ok], s[ok], j[ok]), torch.ones(int(ok.sum()), device=links.device), accumulate=True)
    return a


def hard_exchange(a: torch.Tensor, h_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment-weighted mean of the aligned key states: ([B, M, d] states, [B, M] has-alignment)."""
    degree = a.sum(dim=-1)
    weights = a / degree.clamp_min(1)[..., None]
    return torch.bmm(weights.to(h_key.dtype), h_key), degree > 0


class PriorAttentionExchange(nn.Module):
    """Attention over the other sentence with the alignment as a log-prior. Its parameters are used
    only inside this forward, which ZeRO-3 needs to gather them."""

    def __init__(self, hidden: int, epsilon: float, init_std: float = 0.02):
        super().__init__()
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.epsilon = epsilon
        # Small scores at the start: attention begins close to the prior (the hard exchange).
        nn.init.normal_(self.query.weight, std=init_std)
        nn.init.normal_(self.key.weight, std=init_std)

    def forward(self, h_query: torch.Tensor, h_key: torch.Tensor, a: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
        q, k = self.query(h_query), self.key(h_key)
        degree = a.sum(dim=-1, keepdim=True)
        prior = torch.log(a / degree.clamp_min(1) + self.epsilon).to(q.dtype)  # q's dtype under autocast
        bias = prior.masked_fill(~key_mask.bool()[:, None, :], torch.finfo(q.dtype).min)
        # SDPA's default scale is 1/sqrt(d); the float mask is added to the scores.
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], h_key[:, None].to(q.dtype),
                                             attn_mask=bias[:, None])
        return out[:, 0]


@dataclass
class ObjectiveOutput(ModelOutput):
    """A ModelOutput (a dict), so that DeepSpeed's ZeRO-3 hooks see the tensors the module returns."""

    loss: torch.Tensor | None = None
    mlm: torch.Tensor | None = None
    """MLM(x) + MLM(y) (for tlm: the MLM loss over the concatenation)."""
    xpred: torch.Tensor | None = None
    """XPRED(x←y) + XPRED(y←x); 0 for the baselines."""
    tokens: dict[str, int] | None = None
    """Predicted positions per term: mlm, xpred."""
    row_loss: torch.Tensor | None = None
    """[B] summed cross-entropy of each row's predicted positions (MLM and XPRED), for per-pair monitoring."""
    row_count: torch.Tensor | None = None
    """[B] predicted positions per row."""


def _mlm_head(model: nn.Module) -> nn.Module:
    """The masked-LM model's head: its one child that is not the encoder (lm_head, cls, ...)."""
    heads = [m for m in model.children() if m is not model.base_model]
    if len(heads) != 1:
        raise TypeError(f"{type(model).__name__}: expected one MLM head beside the encoder, found {len(heads)}")
    return heads[0]


class PretrainingObjective(nn.Module):
    """Wraps a Hugging Face ``*ForMaskedLM`` model; ``forward(batch)`` returns the objective's losses.
    This module is what the DeepSpeed engine trains."""

    def __init__(self, model: nn.Module, cfg: ObjectiveConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.spec = OBJECTIVES[cfg.name]
        _mlm_head(model)  # fail early on a model without one
        self.exchange = (PriorAttentionExchange(model.config.hidden_size, cfg.prior_epsilon)
                         if self.spec.cross_lingual and cfg.exchange == "prior_attention" else None)
        # RoBERTa-family position ids start after the padding index (their position embedding's padding_idx);
        # BERT's start at 0.
        positions = getattr(getattr(model.base_model, "embeddings", None), "position_embeddings", None)
        padding_idx = getattr(positions, "padding_idx", None)
        self.position_offset = 0 if padding_idx is None else padding_idx + 1

    @property
    def head(self) -> nn.Module:
        """The model's MLM head (not registered here again: the state dict stays the model's own)."""
        return _mlm_head(self.model)

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.base_model(input_ids=ids, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state

    def _encode_packed(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                       batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The stacked rows encoded in the packed rows the batch plans (weam_ds.packing), returned in the stacked
        layout: each row's segment attends to itself only and keeps its position ids (``positions``, from 0), so
        its states are those of the stacked call."""
        attention = self.model.config._attn_implementation
        if attention not in ATTENTION_MASKS:
            raise ValueError(f"packed rows (data.pack_rows) need attn_implementation {' or '.join(ATTENTION_MASKS)}, "
                             f"not {attention}: set data.pack_rows: false")
        packed, packed_positions, same = packed_inputs(ids, positions, batch, self.model.config.pad_token_id)
        dtype = self.model.get_input_embeddings().weight.dtype
        h = self.encode(packed, ATTENTION_MASKS[attention](same, dtype), packed_positions + self.position_offset)
        return unpack(h, batch, mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        if self.spec.layout is CONCATENATED:
            return self._concatenated(batch)
        x_ids, y_ids = batch["src_input_ids"], batch["tgt_input_ids"]
        x_mask, y_mask = batch["src_attention_mask"], batch["tgt_attention_mask"]
        x_labels, y_labels = batch["src_labels"], batch["tgt_labels"]
        y_labels = torch.where(batch["parallel"][:, None], y_labels, IGNORE)
        lx, ly = x_ids.shape[1], y_ids.shape[1]
        # One encoder call for both sides: stack them along the batch, padded to a common length.
        width = max(lx, ly)
        ids = torch.cat([F.pad(x_ids, (0, width - lx), value=self.model.config.pad_token_id),
                         F.pad(y_ids, (0, width - ly), value=self.model.config.pad_token_id)])
        mask = torch.cat([F.pad(x_mask, (0, width - lx)), F.pad(y_mask, (0, width - ly))])
        if "pack_sentence" in batch:
            h = self._encode_packed(ids, mask, torch.arange(width, device=ids.device).expand_as(ids), batch)
        else:
            h = self.encode(ids, mask)
        h_x, h_y = h[:len(x_ids), :lx], h[len(x_ids):, :ly]

        # Groups of predicted positions: MLM(x), MLM(y), then XPRED(x←y), XPRED(y←x) when cross-lingual (weam).
        groups = []
        for hidden, labels in ((h_x, x_labels), (h_y, y_labels)):
            selected = labels != IGNORE
            groups.append((hidden[selected], labels[selected], selected.nonzero()[:, 0]))
        if self.spec.cross_lingual:
            parallel = batch["parallel"]
            links = torch.where(parallel[:, None, None], batch["links"], -1)
            for h_query, h_key, query_labels, key_mask, query_key_links in (
                    (h_x, h_y, x_labels, y_mask, links), (h_y, h_x, y_labels, x_mask, links.flip(-1))):
                groups.append(self._exchange(h_query, h_key, query_labels, key_mask, query_key_links, parallel))
        means, out = self._predict(groups, len(x_ids))
        mlm = means[0] + means[1]
        if not self.spec.cross_lingual:
            return ObjectiveOutput(mlm, mlm.detach(), torch.zeros_like(mlm.detach()), *out)
        xpred = means[2] + means[3]
        return ObjectiveOutput(mlm + self.cfg.xpred_weight * xpred, mlm.detach(), xpred.detach(), *out)

    def _predict(self, groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 batch_size: int) -> tuple[list[torch.Tensor], tuple]:
        """Runs the MLM head once over every group's states (selected positions only) and returns each
        group's mean cross-entropy, plus the counts and per-row sums that ObjectiveOutput reports."""
        states, labels, rows = (torch.cat(parts) for parts in zip(*groups))
        ce = F.cross_entropy(self.head(states).float(), labels, reduction="none")
        sizes = [len(g[1]) for g in groups]
        means = [part.sum() / max(n, 1) for part, n in zip(ce.split(sizes), sizes)]  # an empty group: 0
        row_loss = torch.zeros(batch_size, device=ce.device).index_add(0, rows, ce.detach())
        row_count = torch.bincount(rows, minlength=batch_size)
        tokens = {"mlm": sum(sizes[:2]), "xpred": sum(sizes[2:])}
        return means, (tokens, row_loss, row_count)

    def _exchange(self, h_query: torch.Tensor, h_key: torch.Tensor, query_labels: torch.Tensor,
                  key_mask: torch.Tensor, links: torch.Tensor,
                  parallel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exchanged states of the query side's masked positions that take part, their labels and rows."""
        query = pack(query_labels != IGNORE)
        a = alignment_rows(links, query, h_query.shape[1], key_mask)
        if self.exchange is None:
            exchanged, takes_part = hard_exchange(a, h_key)
        else:
            h_q = torch.gather(h_query, 1, query.pos[..., None].expand(-1, -1, h_query.shape[-1]))
            exchanged = self.exchange(h_q, h_key, a, key_mask)
            takes_part = parallel[:, None].expand_as(query.valid)
        takes_part = takes_part & query.valid
        rows = torch.arange(len(takes_part), device=takes_part.device)[:, None].expand_as(takes_part)
        return exchanged[takes_part], torch.gather(query_labels, 1, query.pos)[takes_part], rows[takes_part]

    def _concatenated(self, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        """tlm's loss, MLM over [x; y]: y is moved right after x's last real token, its positions restart at 0. Packed
        (the batch carries a plan), each pair's [x; y] is a segment of a packed row."""
        x_ids, y_ids = batch["src_input_ids"], batch["tgt_input_ids"]
        x_mask, y_mask = batch["src_attention_mask"], batch["tgt_attention_mask"]
        y_mask = y_mask * batch["parallel"][:, None]
        lx, ly = x_ids.shape[1], y_ids.shape[1]
        dest = x_mask.sum(dim=1, keepdim=True) + torch.arange(ly, device=y_ids.device)[None]

        def joined(x: torch.Tensor, y: torch.Tensor, fill: int) -> torch.Tensor:
            out = torch.cat([torch.where(x_mask.bool(), x, fill), torch.full_like(y, fill)], dim=1)
            return out.scatter(1, dest, torch.where(y_mask.bool(), y, fill).to(out.dtype))

        ids = joined(x_ids, y_ids, self.model.config.pad_token_id)
        mask = joined(x_mask, y_mask, 0)
        labels = joined(batch["src_labels"], batch["tgt_labels"], IGNORE)
        positions = joined(torch.arange(lx, device=ids.device).expand_as(x_ids),
                           torch.arange(ly, device=ids.device).expand_as(y_ids), 0)
        if "pack_sentence" in batch:
            h = self._encode_packed(ids, mask, positions, batch)
        else:
            h = self.encode(ids, mask, positions + self.position_offset)
        selected = labels != IGNORE
        (loss,), out = self._predict([(h[selected], labels[selected], selected.nonzero()[:, 0])], len(ids))
        return ObjectiveOutput(loss, loss.detach(), torch.zeros_like(loss.detach()), *out)
