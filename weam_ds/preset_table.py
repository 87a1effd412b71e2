"""The encoder presets' geometry: their names, depths and widths (weam_ds.presets builds them).

Free of torch and transformers, whose import takes seconds: checking that a config names a preset, which every
launcher command does, imports neither.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Preset:
    model_type: str
    """``xlm-roberta`` (post-LN) or ``xlm-roberta-xl`` (pre-LN): the transformers model type, whose config
    ``AutoConfig.for_model`` builds and ``AutoModelForMaskedLM`` maps to its model."""
    layers: int
    hidden: int
    heads: int
    ffn: int
    """Feed-forward inner size."""


PRESETS: Mapping[str, Preset] = MappingProxyType({
    "tiny": Preset("xlm-roberta", layers=2, hidden=64, heads=2, ffn=256),
    "mini": Preset("xlm-roberta", layers=4, hidden=256, heads=4, ffn=1024),
    "base": Preset("xlm-roberta", layers=12, hidden=768, heads=12, ffn=3072),
    "large": Preset("xlm-roberta", layers=24, hidden=1024, heads=16, ffn=4096),
    "xl": Preset("xlm-roberta-xl", layers=36, hidden=2560, heads=32, ffn=10240),
    "xxl": Preset("xlm-roberta-xl", layers=48, hidden=4096, heads=32, ffn=16384),
})
