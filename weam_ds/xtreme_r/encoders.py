"""The encoder inside a checkpoint, how long an input it takes, and how its final states become one vector (mean
pooling, and the recipes' ``pooling`` choices in ``POOLINGS``): what Tatoeba retrieval, the dual encoders (Mewsli-X,
LAReQA) and the recipes that configure them share.

The retrieval tasks embed with the bare encoder (embeddings and transformer layers) of whatever directory they
are given: the masked-LM export of a pre-training run, the English-SQuAD fine-tuned QA model that XTREME-R embeds
Tatoeba with, or a plain encoder. The head each was saved with is dropped, and so is the pooler: a masked-LM
checkpoint never trained one, and a freshly initialised pooler would only add random weights.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

POSITIONS_FROM_PADDING = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert"})
"""Model types whose position ids start after the padding index (``padding_idx + 1``, as fairseq numbered them),
so ``pad_token_id + 1`` of their ``max_position_embeddings`` never hold a token: XLM-R's 514 positions take 512."""


def load_encoder(model_dir: Path):
    """The bare encoder (no head, no pooler) of a Hugging Face model directory saved with any head. A checkpoint
    that lacks some of the encoder's weights is an error naming the directory: those weights would otherwise be
    initialised at random and the retrieval scores would silently measure noise."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    # transformers reports every dropped head weight (lm_head.*, qa_outputs.*) as UNEXPECTED: expected here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            encoder, info = AutoModel.from_pretrained(str(model_dir), add_pooling_layer=False,
                                                      output_loading_info=True, local_files_only=True)
        except TypeError:  # an encoder class without a pooler option
            encoder, info = AutoModel.from_pretrained(str(model_dir), output_loading_info=True, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
    if missing:
        raise ValueError(f"{model_dir}: the checkpoint lacks {len(missing)} encoder weights "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return encoder.eval()


def max_positions(config) -> int:
    """The longest input, special tokens included, that the model's position embeddings cover."""
    offset = config.pad_token_id + 1 if config.model_type in POSITIONS_FROM_PADDING else 0
    return config.max_position_embeddings - offset


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, H]: the mean of ``states`` [B, L, H] over the positions the attention mask keeps (special tokens
    included, as XTREME's ``mean_pool_embedding`` averages them by default)."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1)


def first_token(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, H]: the final state of ``<s>``/[CLS]."""
    return states[:, 0]


@dataclass(frozen=True)
class Pooling:
    """How final states become one vector, and how that departs from the official baselines (their pooler
    output), in words for result.json."""
    pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    difference: str


POOLINGS = {
    "cls": Pooling(first_token, "pooling: the final state of the first token (<s>/[CLS]), not the official "
                                "baselines' pooler output over it, which a masked-LM checkpoint never trained"),
    "mean": Pooling(mean_pool, "pooling: the mean of the final states over the attention mask (the recipe's "
                               "choice), not the official baselines' pooler output"),
}
"""The recipe's ``pooling`` choices."""
