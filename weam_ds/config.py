"""weam_ds's configuration tree: strict dataclasses loaded from YAML (unknown keys and wrong types are
errors naming the key; see data_prep.typed_config)."""
from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.typed_config import ConfigError

OBJECTIVES = ("weam", "mlm", "tlm")
EXCHANGES = ("hard", "prior_attention")


@dataclass
class MaskingConfig:
    rate: float = 0.15
    """Share of non-special tokens selected for prediction."""
    mask: float = 0.8
    """Of the selected tokens, the share replaced by <mask>; ``random`` get a random token, the rest stay."""
    random: float = 0.1
    whole_word: bool = False
    """Select whole words (every subword of a chosen word) rather than single subwords."""

    def __post_init__(self):
        if not 0 < self.rate < 1:
            raise ConfigError("masking.rate: must be between 0 and 1")
        if self.mask < 0 or self.random < 0 or self.mask + self.random > 1:
            raise ConfigError("masking.mask, masking.random: must be non-negative and sum to at most 1")


@dataclass
class ObjectiveConfig:
    name: str = "weam"
    """weam (MLM + cross-lingual prediction), mlm (MLM on both sides) or tlm (MLM on the concatenated pair)."""
    exchange: str = "hard"
    """weam only: hard (alignment-weighted mean of aligned states) or prior_attention (attention with
    the alignment as a log-prior)."""
    xpred_weight: float = 1.0
    """λ, the weight of the cross-lingual prediction losses."""
    prior_epsilon: float = 1e-4
    """prior_attention: ε in log(Â + ε), the score left to positions the aligner did not link."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective.name: {self.name!r} is not one of {', '.join(OBJECTIVES)}")
        if self.exchange not in EXCHANGES:
            raise ConfigError(f"objective.exchange: {self.exchange!r} is not one of {', '.join(EXCHANGES)}")
        if self.xpred_weight < 0:
            raise ConfigError("objective.xpred_weight: must not be negative")
        if not 0 < self.prior_epsilon < 1:
            raise ConfigError("objective.prior_epsilon: must be between 0 and 1")
