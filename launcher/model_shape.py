"""What the memory planner counts of a model, built on PyTorch's meta device (shapes only: ``xxl`` counts
instantly), and the host memory a CPU rank peaks at while it builds the model under ZeRO-3 (launcher.planner)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from weam_ds.objective import PretrainingObjective
from weam_ds.presets import build_model

HEAP_LIMIT = 32 * 2 ** 20
"""glibc's largest dynamic mmap threshold on 64-bit: freed blocks below it come from the heap and may stay
resident (see :func:`build_peak_bytes`)."""


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model, counted on the meta device."""

    config: object
    """The transformers config: layers, hidden, heads, ffn, vocabulary, model type."""
    params: int
    """N: every parameter of the trained module (the objective's own included), shared tensors once."""
    largest_layer: int
    """L: the most parameters one module holds itself (DeepSpeed's ``model_to_params``)."""
    largest_layer_name: str
    init_gather: int
    """The most parameters transformers gathers at once to initialise weights under ZeRO-3 (a module's own
    and its direct children's, ``initialize_weights_zero3``)."""
    tensors: tuple[int, ...]
    """The size of every parameter tensor (shared ones once)."""
    untied_decoder: int
    """Parameters of the MLM decoder that a ZeRO-3 build holds untied until it ties the weights."""


def model_shape(model: str, vocab_size: int, objective) -> ModelShape:
    """Counts of preset or checkpoint ``model`` with ``vocab_size`` pieces, wrapped in the objective."""
    with torch.device("meta"):
        encoder = build_model(model, vocab_size, meta=True, resize_vocab=True)  # shapes at the dataset's vocabulary
        module = PretrainingObjective(encoder, objective)
    params = {id(p): p for p in module.parameters()}
    largest, name = 0, ""
    for n, m in module.named_modules():
        own = sum({id(p): p.numel() for p in m.parameters(recurse=False)}.values())
        if own > largest:
            largest, name = own, n.removeprefix("model.").removeprefix(f"{encoder.base_model_prefix}.")
    gather = 0
    for m in encoder.modules():
        group = {id(p): p.numel() for p in m.parameters(recurse=False)}
        for child in m.children():
            if not isinstance(child, PreTrainedModel):
                group.update({id(p): p.numel() for p in child.parameters(recurse=False)})
        gather = max(gather, sum(group.values()))
    c = encoder.config
    untied = c.vocab_size * c.hidden_size if getattr(c, "tie_word_embeddings", False) else 0
    sizes = tuple(p.numel() for p in params.values())
    return ModelShape(c, sum(sizes), largest, name, gather, sizes, untied)


def build_peak_bytes(shape: ModelShape, world_size: int, dtype_bytes: int = 4) -> int:
    """Peak host memory above a CPU rank's baseline while ``weam_ds.train`` builds the model under ZeRO-3.

    transformers builds the model inside ``deepspeed.zero.Init`` (each module's parameters partitioned as soon
    as it exists, the MLM decoder still untied: N + V·H parameters over ``world_size`` ranks), then
    initialises the weights module by module (``initialize_weights_zero3``): it gathers each module's
    parameters whole on every rank, rank 0 draws them, and they are broadcast and partitioned again. Three
    terms: the partitions; the largest gather, twice (the gathered tensor and gloo's flat copy of it); and
    what the allocator keeps of the freed gathers. glibc serves blocks under its 32 MiB mmap threshold from
    its heaps and keeps them resident once freed when they cannot be trimmed, so the two blocks of every
    such tensor's gather may stay. Measured, the kept share varies from run to run (0.75 to 1.5 times those
    tensors' bytes for ``base``); the bound takes both blocks.
    """
    e = dtype_bytes
    partitions = math.ceil((shape.params + shape.untied_decoder) / world_size) * e
    kept = 2 * sum(n for n in shape.tensors if n * e < HEAP_LIMIT) * e
    return partitions + 2 * shape.init_gather * e + kept

