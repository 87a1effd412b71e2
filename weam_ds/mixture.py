r"""The sampling mixture over a corpus's sources: language pairs and monolingual languages.

Every sample's source is drawn at random (weam_ds.data). With temperature α, a source holding n train
samples is drawn with probability

    p(s) ∝ n_s^α                                    (α = 1: as the data; α = 0: every source alike)

over all sources: today's rule, and the rule whenever ``monolingual_weight`` is unset. With
``monolingual_weight`` w, the two kinds are weighed apart (XLM, InfoXLM and XLM-Align mix monolingual MLM
with parallel objectives this way) and each kind keeps its own temperature:

    p(s) = (1 - w) · n_s^α / Σ_{parallel t} n_t^α          for a language pair s
    p(s) =      w  · n_s^β / Σ_{monolingual t} n_t^β        for a monolingual language s

β = ``monolingual_temperature`` (default α). When the corpus has only one kind (a split without
monolingual text, say), that kind takes all the mass.
"""
from __future__ import annotations

import numpy as np


def source_probabilities(sizes: np.ndarray, monolingual: np.ndarray, temperature: float,
                         monolingual_weight: float | None = None,
                         monolingual_temperature: float | None = None) -> np.ndarray:
    """p(s) for sources of ``sizes`` samples; ``monolingual`` [S] bool marks the monolingual ones."""
    sizes = np.asarray(sizes, dtype=np.float64)
    monolingual = np.asarray(monolingual, dtype=bool)
    if monolingual_weight is None:
        weights = sizes ** temperature
        return weights / weights.sum()
    beta = temperature if monolingual_temperature is None else monolingual_temperature
    p = np.zeros_like(sizes)
    kinds = [(~monolingual, 1 - monolingual_weight, temperature), (monolingual, monolingual_weight, beta)]
    present = [(members, share, exponent) for members, share, exponent in kinds if members.any()]
    for members, share, exponent in present:
        weights = sizes[members] ** exponent
        p[members] = (share if len(present) == 2 else 1.0) * weights / weights.sum()
    return p
