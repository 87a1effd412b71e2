"""Encoder presets: named XLM-R geometries built from Hugging Face classes, parameter counts and training FLOPs.

Models are plain ``transformers`` masked-LM classes, so every checkpoint we write loads with
``AutoModelForMaskedLM``. ``tiny`` to ``large`` use the post-LayerNorm ``XLMRoberta`` classes; ``xl`` and ``xxl``
use ``XLMRobertaXL``, the pre-LayerNorm variant XLM-R XL/XXL were trained with (post-LN training is unstable at
that depth). ``python -m weam_ds.presets`` prints every preset's size and cost.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

if TYPE_CHECKING:  # transformers' model code (2 s to import) loads with the first model built, not with the presets
    from transformers import PreTrainedModel

from data_prep.typed_config import ConfigError
from weam_ds.preset_table import PRESETS


def model_config(name: str, vocab_size: int, pad_token_id: int = 1, bos: int = 0, eos: int = 2) -> PretrainedConfig:
    """The transformers config of preset ``name``; special-token ids default to XLM-R's (<s>=0, <pad>=1, </s>=2)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (expected one of: {', '.join(PRESETS)})")
    if vocab_size <= max(pad_token_id, bos, eos):
        raise ConfigError(f"vocab_size {vocab_size} does not cover the special-token ids (pad {pad_token_id}, "
                          f"bos {bos}, eos {eos})")
    p = PRESETS[name]
    # RoBERTa numbers positions from pad_token_id + 1, so 514 slots leave 512 usable positions with pad 1.
    # One token type and eps 1e-5 are XLM-R's own values (the class defaults are BERT's).
    return AutoConfig.for_model(p.model_type, vocab_size=vocab_size, hidden_size=p.hidden,
                                num_hidden_layers=p.layers, num_attention_heads=p.heads, intermediate_size=p.ffn,
                                max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                                pad_token_id=pad_token_id, bos_token_id=bos, eos_token_id=eos)


def encoder_config(name_or_path: str | Path, vocab_size: int, *, pad_token_id: int = 1, bos: int = 0, eos: int = 2,
                   resize_vocab: bool = False) -> PretrainedConfig:
    """The transformers config of the encoder :func:`build_model` builds, read without building it: a preset's
    (:func:`model_config`), or a checkpoint directory's own config.json, its vocabulary ``vocab_size`` under
    ``resize_vocab`` (the table build_model resizes to)."""
    if str(name_or_path) in PRESETS:
        return model_config(str(name_or_path), vocab_size, pad_token_id, bos, eos)
    config = _checkpoint_config(name_or_path, vocab_size, resize_vocab)
    if resize_vocab:
        config.vocab_size = vocab_size
    return config


def _checkpoint_config(name_or_path: str | Path, vocab_size: int, resize_vocab: bool) -> PretrainedConfig:
    """A checkpoint directory's config as saved, once it is known to be a masked LM whose table covers the
    dataset's tokenizer."""
    path = Path(name_or_path)
    if not path.is_dir():
        raise ConfigError(f"{str(name_or_path)!r} is neither a preset ({', '.join(PRESETS)}) "
                          f"nor a checkpoint directory")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        MODEL_FOR_MASKED_LM_MAPPING[type(config)]  # a KeyError where transformers has no masked LM for it
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: not a loadable Hugging Face masked-LM checkpoint ({_first_line(exc)})") from None
    if vocab_size > config.vocab_size and not resize_vocab:
        raise ConfigError(f"{path}: its embedding table has {config.vocab_size} rows, fewer than the {vocab_size} "
                          "tokens of the dataset's tokenizer (set model_vocab: resize to grow it)")
    return config


def build_model(name_or_path: str | Path, vocab_size: int, *, pad_token_id: int = 1, bos: int = 0, eos: int = 2,
                meta: bool = False, dtype: torch.dtype | None = None, resize_vocab: bool = False) -> PreTrainedModel:
    """A masked-LM encoder from a preset name or a local Hugging Face checkpoint directory (continued pre-training).

    A checkpoint keeps its own special-token ids and embeddings (they belong to its tokenizer, which the dataset
    must share: weam_ds.vocab_check). Its embedding table may be longer than ``vocab_size`` (tables padded past
    the tokenizer); a shorter one is an error, unless ``resize_vocab`` (``model_vocab: resize``), which resizes the
    table and the MLM head to ``vocab_size`` either way. ``meta=True`` builds on the meta device: shapes only, no
    memory, no weights read. ``dtype`` defaults to torch's default dtype, also for checkpoints stored in another
    precision.
    """
    dtype = dtype or torch.get_default_dtype()
    if meta or str(name_or_path) in PRESETS:
        config = encoder_config(name_or_path, vocab_size, pad_token_id=pad_token_id, bos=bos, eos=eos,
                                resize_vocab=resize_vocab)
        with _device(meta):
            return AutoModelForMaskedLM.from_config(config, attn_implementation=_attention(config), dtype=dtype)
    path = Path(name_or_path)
    config = _checkpoint_config(name_or_path, vocab_size, resize_vocab)
    try:
        model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                     attn_implementation=_attention(config))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load checkpoint weights ({_first_line(exc)})") from None
    if resize_vocab and vocab_size != model.config.vocab_size:
        model.resize_token_embeddings(vocab_size)
        _fit_head_bias(model, vocab_size)
    return model


def _attention(config: PretrainedConfig) -> str:
    # Fused SDPA where the architecture has it (every preset); a few older encoders (e.g. DeBERTa) only run eager.
    return "sdpa" if MODEL_FOR_MASKED_LM_MAPPING[type(config)]._supports_sdpa else "eager"


def _fit_head_bias(model: PreTrainedModel, vocab_size: int) -> None:
    """Give the MLM head's output bias ``vocab_size`` entries, as ``resize_token_embeddings`` does, also under
    ZeRO-3: transformers pads that bias (shared by the head and its decoder) to the decoder weight's row count,
    which a partitioned weight hides, so the bias kept its old size and the first forward failed with a raw
    "expanded size of the tensor" error. Its old entries are kept, new ones are 0; every module that shares it
    gets the new one. DeepSpeed partitions the new parameter with the rest when the engine is built."""
    old = getattr(model.get_output_embeddings(), "bias", None)
    if old is None or getattr(old, "ds_shape", old.shape)[0] == vocab_size:
        return
    if hasattr(old, "ds_id"):  # a ZeRO-3 partition: gather the whole bias to read it
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([old])
    else:
        gathered = contextlib.nullcontext()
    with gathered:
        kept = old.data[:vocab_size].detach().clone()
    bias = torch.nn.Parameter(torch.cat([kept, kept.new_zeros(vocab_size - len(kept))]))
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param is old:
                setattr(module, name, bias)


def _first_line(exc: Exception) -> str:
    # transformers' messages run over several lines; the error must stay one line that names the path.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _device(meta: bool) -> contextlib.AbstractContextManager:
    return torch.device("meta") if meta else contextlib.nullcontext()


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Parameter counts, each shared (tied) tensor once.

    ``total``: the encoder backbone (``model.base_model``: embeddings and layers, no pooler, no MLM head), the
    convention of the published XLM-R sizes. ``non_embedding``: the backbone less its embedding tables (word,
    position, token type), the N of scaling-law FLOP estimates. ``mlm_head``: the head's own parameters; the decoder
    weight tied to the word embeddings is already in ``total``.
    ``embedding``: those tables. A model not built yet is counted from its config: :func:`parameter_counts`.
    """
    backbone = {id(p): p for p in model.base_model.parameters()}
    everything = {id(p): p for p in model.parameters()}
    embeddings = {id(m.weight): m.weight for m in model.base_model.modules() if isinstance(m, torch.nn.Embedding)}
    return {"total": _numel(backbone.values()), "embedding": _numel(embeddings.values()),
            "non_embedding": _numel(p for i, p in backbone.items() if i not in embeddings),
            "mlm_head": _numel(p for i, p in everything.items() if i not in backbone)}


def _numel(params) -> int:
    # ZeRO-3 partitions parameters in place (numel 0); ds_numel keeps the full size.
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


_BERT_LAYOUT = ("bert", "roberta", "xlm-roberta", "xlm-roberta-xl")
"""The model types whose masked LM is laid out as BERT's (every preset, mBERT, XLM-R): the ones
:func:`parameter_counts` counts from their config's geometry."""


def parameter_counts(config: PretrainedConfig) -> dict[str, int]:
    """The counts of :func:`count_parameters` from the config's geometry alone, without building the model (a
    study counts every cell this way; tests/weam_ds/test_presets.py checks both agree for every preset).

    With H hidden, F feed-forward, L layers, V vocabulary, P positions and T token types:

        embedding     = (V + P + T)·H                                  word, position and token-type tables
        non_embedding = L·(4·H² + 4·H + 2·H·F + F + H + 4·H) + 2·H
        mlm_head      = H² + H + 2·H + V                               (+ V·H + V for an untied decoder)

    A model of another layout is built on the meta device and counted there.

    A layer: the query, key, value and attention-output projections with their biases (4·H² + 4·H), the
    feed-forward in and out (2·H·F + F + H), two LayerNorms (4·H). One more LayerNorm lies outside the layers:
    post-LN encoders (BERT, XLM-R) normalise the embeddings, pre-LN ones (XLM-R XL) the last layer's output.
    The head: its H×H transform, its LayerNorm and the output bias; its decoder is the word embeddings
    (tied), or a weight and bias of its own where the config unties them.
    """
    if config.model_type not in _BERT_LAYOUT:
        # Another architecture (a DeBERTa checkpoint, XLM): no formula here, so its shapes are counted on the meta
        # device, which allocates nothing.
        with torch.device("meta"):
            return count_parameters(AutoModelForMaskedLM.from_config(config))
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    embedding = (v + config.max_position_embeddings + config.type_vocab_size) * h
    non_embedding = config.num_hidden_layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * h
    head = h * h + h + 2 * h + v + (0 if config.tie_word_embeddings else v * h + v)
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding,
            "mlm_head": head}


def train_flops_per_token(config: PretrainedConfig, non_embedding: int, *, seq_len: int = 512,
                          mask_rate: float = 0.15) -> float:
    """Forward + backward FLOPs per input token, for MFU.

    ``6 * N + 12 * L * S * H + 6 * mask_rate * (V + H) * H`` where N = ``non_embedding`` parameters, L layers,
    S = ``seq_len``, H hidden size, V vocabulary. 6N is the matmuls through the weights (2 forward, 4 backward
    per parameter); 12LSH is attention: the scores QKᵀ and the weighted sum of values, 2·S·H each per token
    and layer forward, twice that backward (PaLM's count, Chowdhery et al. 2022, appendix B; Kaplan et al.'s
    6LSH counts one of the two). The last term is the MLM head (its H×H transform and the vocabulary
    projection), which runs only at the ``mask_rate`` predicted positions (WEAM adds its XPRED positions).
    Count ``non_embedding`` with :func:`parameter_counts`. Checked against
    ``torch.utils.flop_counter.FlopCounterMode`` on real WEAM batches (tests/launcher/test_planner.py).
    """
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    return 6.0 * non_embedding + 12.0 * layers * seq_len * hidden + 6.0 * mask_rate * (vocab + hidden) * hidden


def train_flops(config: PretrainedConfig, non_embedding: int, lengths: torch.Tensor, predicted: int) -> float:
    """Forward + backward FLOPs of one batch of sentences of ``lengths`` tokens and ``predicted`` MLM/XPRED
    positions: the terms of :func:`train_flops_per_token`, each sentence's attention over its own length.

    Given the real lengths (padding excluded) this is the model FLOPs that MFU counts; given every row's
    padded width it is what the encoder computes."""
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    lengths = lengths.double()
    return float(6.0 * non_embedding * lengths.sum() + 12.0 * layers * hidden * (lengths ** 2).sum()
                 + 6.0 * (vocab + hidden) * hidden * predicted)


def _human(value: float, units: tuple[str, ...]) -> str:
    for unit in units[:-1]:
        if abs(value) < 1000:
            return f"{value:#.4g}{unit}"
        value /= 1000
    return f"{value:#.4g}{units[-1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weam_ds.presets",
                                     description="Size and training cost of every encoder preset.")
    parser.add_argument("--vocab-size", type=int, default=250002, help="tokenizer vocabulary (default: XLM-R's)")
    parser.add_argument("--seq-len", type=int, default=512, help="training sequence length in tokens")
    args = parser.parse_args(argv)
    if args.seq_len <= 0:
        parser.error("--seq-len must be positive")
    header = ("preset", "class", "layers", "hidden", "heads", "ffn", "params", "non-emb", "train FLOP/token")
    rows = [header]
    for name, preset in PRESETS.items():
        try:
            config = model_config(name, args.vocab_size)
        except ConfigError as exc:
            parser.error(str(exc))
        counts = parameter_counts(config)
        flops = train_flops_per_token(config, counts["non_embedding"], seq_len=args.seq_len)
        model_class = MODEL_FOR_MASKED_LM_MAPPING[type(config)]
        rows.append((name, model_class.__name__, str(preset.layers), str(preset.hidden), str(preset.heads),
                     str(preset.ffn), _human(counts["total"], ("", "K", "M", "B", "T")),
                     _human(counts["non_embedding"], ("", "K", "M", "B", "T")),
                     _human(flops, (" FLOP", " kFLOP", " MFLOP", " GFLOP", " TFLOP"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"vocab {args.vocab_size}, sequence length {args.seq_len}, MLM mask rate 0.15; "
          "params = encoder backbone (embeddings + layers)")
    for row in rows:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
