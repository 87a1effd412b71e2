r"""What one training step keeps on a device beyond the model states: the planner's worst-case micro-batch, the
bytes autograd saves for its backward pass, and the transient memory of that pass (launcher.planner adds them up).

The worst case: every sentence ``max_length`` long, laid out as the objective lays out a batch (rows per pair and
row width: weam_ds.objectives), ``rate`` of all positions selected for MLM and as many again for a cross-lingual
objective's XPRED.

Attention. Whether a layer keeps its attention scores (rows × heads × width² of them) for the backward pass
depends on the kernel that computes them (:func:`attention_kernel`; PyTorch's SDPA kernel selection,
``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` and ``sdp_utils_cpp.cpp``):

- eager attention (the model's ``attn_implementation``: checkpoints of architectures without SDPA) computes
  softmax(q kᵀ + mask) as tensors and keeps the probabilities, the dropout mask and the dropped probabilities;
- SDPA on CUDA: weam_ds always hands the encoder a mask (packed rows a 4D block-diagonal bool mask; stacked rows
  a 4D padding mask whenever the batch has padding), and any mask rules out the flash kernel. The
  memory-efficient kernel takes it (fp32, fp16, bf16 on sm80 and newer; with dropout) and keeps no scores, only
  its log-sum-exp and the mask converted to an additive bias of the query's dtype, one per layer. It refuses a
  head size that is not a multiple of 8 in 16-bit (4 in fp32); then SDPA falls back to its math path, which
  upcasts q, k, v to fp32 and keeps fp32 probabilities, the dropout mask and the dropped probabilities (the
  cuDNN kernel, first on H100 with recent cuDNN, takes a mask too and keeps no scores either);
- SDPA on CPU: its flash kernel takes any mask but no dropout, so training with attention dropout (every
  preset: 0.1) takes the math path; without attention dropout the flash kernel keeps no scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from weam_ds.config import RunConfig
from weam_ds.objectives import OBJECTIVES


@dataclass(frozen=True)
class BatchShape:
    """One micro-batch as the encoder and the MLM head see it."""

    rows: int
    """Sequences per encoder call: 2B for weam and mlm (both sides stacked), B for tlm (rows per pair)."""
    width: int
    """Tokens per row, padding included."""
    predicted: int
    """Positions through the MLM head (MLM and XPRED)."""
    exchange: int
    """Elements of the hard exchange's alignment weights, both directions (B × M slots × key width)."""

    @classmethod
    def worst_case(cls, cfg: RunConfig) -> BatchShape:
        """Every sentence ``max_length`` long; ``rate`` of all positions selected for MLM and as many again
        for XPRED; a row's selected positions taken at their mean plus three standard deviations."""
        d, o = cfg.data, cfg.objective
        objective, micro = OBJECTIVES[o.name], d.micro_batch
        layout = objective.layout
        width = layout.row_capacity * d.max_length
        if micro.pairs is not None:
            pairs, rows = micro.pairs, layout.rows_per_pair * micro.pairs
        else:  # the budget in full rows; a stacked layout's odd row is counted as a pair
            rows = max(1, micro.tokens // width)
            pairs = math.ceil(rows / layout.rows_per_pair)
        rate = o.masking.rate
        predicted = math.ceil(rate * rows * width) * (2 if objective.cross_lingual else 1)
        slots = min(d.max_length, math.ceil(rate * d.max_length + 3 * math.sqrt(rate * (1 - rate) * d.max_length)))
        return cls(rows, width, predicted, 2 * pairs * slots * d.max_length if objective.cross_lingual else 0)



@dataclass(frozen=True)
class AttentionKernel:
    """How a layer's attention runs in training (the rule: the module docstring) and what it keeps of it."""

    name: str
    """eager, math (SDPA's composite fallback) or fused (SDPA's memory-efficient, flash or cuDNN kernel)."""
    why: str
    score_bytes: int
    """Bytes kept per attention score for the backward pass (rows × heads × width² scores a layer); 0 when fused."""

    def layer_bytes(self, config, rows: int, width: int, e: int) -> int:
        """What one layer's attention keeps beyond its q, k, v and the context (counted with the layer)."""
        scores = rows * config.num_attention_heads * width * width * self.score_bytes
        if self.name == "fused":  # the fp32 log-sum-exp and the mask as an additive bias of the query's dtype
            return rows * config.num_attention_heads * width * 4 + rows * width * width * e
        if self.name == "math":  # q, k, v kept as fp32 copies instead of e-byte ones
            return scores + 3 * rows * width * config.hidden_size * (4 - e)
        return scores


def _score_bytes(dtype_bytes: int, device: str, dropout: bool) -> int:
    """Per attention score of ``dtype_bytes``: the softmax's output and, with dropout, its mask (CUDA's fused
    dropout: 1 byte; CPU's: the scores' dtype) and the dropped probabilities."""
    return dtype_bytes + (dtype_bytes + (1 if device == "cuda" else dtype_bytes) if dropout else 0)


def attention_kernel(config, *, dtype_bytes: int, device: str) -> AttentionKernel:
    """The attention kernel a training step of a model with transformers ``config`` runs in ``dtype_bytes``
    precision on ``device`` (cuda: sm80 or newer), by PyTorch's SDPA selection rule (the module docstring)."""
    e, dropout = dtype_bytes, config.attention_probs_dropout_prob > 0
    if config._attn_implementation == "eager":
        return AttentionKernel("eager", "eager attention (the model's attn_implementation)",
                               _score_bytes(e, device, dropout))
    # weam_ds.presets.build_model gives every other model SDPA.
    if device == "cpu":
        if dropout:
            return AttentionKernel("math", "SDPA's math path (attention dropout rules out CPU flash)",
                                   _score_bytes(4, device, dropout))
        return AttentionKernel("fused", "SDPA's CPU flash kernel", 0)
    head, alignment = config.hidden_size // config.num_attention_heads, 8 if e == 2 else 4
    if head % alignment:
        return AttentionKernel("math", f"SDPA's math path (head size {head} is not a multiple of {alignment})",
                               _score_bytes(4, device, dropout))
    return AttentionKernel("fused", "SDPA's memory-efficient kernel (the attention mask rules out flash)", 0)


def _layer_bytes(config, rows: int, width: int, e: int, device: str) -> int:
    """What one encoder layer saves without checkpointing (see :func:`activation_bytes`)."""
    c, t = config, rows * width
    m = 1 if device == "cuda" else e
    attention = attention_kernel(c, dtype_bytes=e, device=device).layer_bytes(c, rows, width, e)
    masks = 1 if c.model_type == "xlm-roberta-xl" else 2
    return 8 * t * c.hidden_size * e + masks * t * c.hidden_size * m + 2 * t * c.intermediate_size * e + 16 * t \
        + attention


def activation_bytes(config, shape: BatchShape, *, dtype_bytes: int, device: str, checkpointing: bool,
                     exchange: str = "hard") -> int:
    """Bytes that autograd saves for the backward pass in one forward of the WEAM objective.

    T = rows × width tokens, H hidden, F feed-forward, h heads, S width, V vocabulary, e = ``dtype_bytes``,
    m the dropout mask (1 byte on CUDA; on CPU dropout keeps an e-byte mask). A layer keeps its input, q, k,
    v, the attention context, both LayerNorms' inputs and the first one's output (8·T·H·e), the GELU's input
    and output (2·T·F·e), its dropout masks (post-LN 2, pre-LN XL 1, × T·H·m), LayerNorm statistics
    (4·T fp32), and what attention keeps (:func:`attention_kernel`): a fused kernel its fp32 log-sum-exp and
    the mask as an e-byte bias (rows·h·S·4 + rows·S²·e; its output is the context); eager attention the
    probabilities, their dropout mask and the dropped probabilities (rows·h·S²·(2e + m)); SDPA's math path the
    same in fp32 (rows·h·S²·(8 + m), m of 4 bytes on CPU) and fp32 copies of q, k, v (3·T·H·(4 - e) more);
    without attention dropout no mask and no dropped copy. With activation checkpointing a layer
    keeps its input only (T·H·e), plus the attention mask once (rows·S² bools). The embeddings keep three
    int64 index tensors, a dropout mask and a LayerNorm's input (pre-LN models: the final LayerNorm's). The
    MLM head runs at the ``predicted`` positions P only: four P×H inputs and the fp32 log-softmax P×V.
    The hard exchange keeps its alignment weights; prior attention also keeps both sides' states as keys.
    """
    c, e = config, dtype_bytes
    rows, width = shape.rows, shape.width
    t = rows * width
    m = 1 if device == "cuda" else e
    if checkpointing:
        layers = c.num_hidden_layers * t * c.hidden_size * e + rows * width * width
    else:
        layers = c.num_hidden_layers * _layer_bytes(c, rows, width, e, device)
    embeddings = 3 * t * 8 + t * c.hidden_size * m + t * (c.hidden_size * e + 8)
    p = shape.predicted
    head = 4 * p * c.hidden_size * e + 8 * p + p * c.vocab_size * 4 + 8 * p
    exchanged = shape.exchange * e + 2 * t + (2 * t * c.hidden_size * e if exchange == "prior_attention" else 0)
    return layers + embeddings + head + exchanged


def working_bytes(config, shape: BatchShape, e: int, device: str, checkpointing: bool) -> int:
    """Transient memory beyond the saved activations: at the MLM head two fp32 P×V tensors besides the saved
    log-softmax (the float logits in the forward, the log-softmax's output and input gradients in the backward),
    one layer's gradients (2·T·F + 4·T·H), the attention mask (rows·S²), and under checkpointing the
    recomputed layer's saved tensors."""
    c = config
    t = shape.rows * shape.width
    working = (8 * shape.predicted * c.vocab_size + (2 * t * c.intermediate_size + 4 * t * c.hidden_size) * e
               + shape.rows * shape.width ** 2 * e)
    if checkpointing:
        working += _layer_bytes(c, shape.rows, shape.width, e, device)
    return working
