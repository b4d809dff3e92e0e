"""Cache sizes: capacity fractions to slots, and the token cycle (the LRU cliff)."""

from __future__ import annotations

import numpy as np

from specmd_jax.core import checks
from specmd_jax.core.trace import Trace


def capacity_slots(trace: Trace, fractions) -> np.ndarray:
    """Slots holding ``fraction`` of all expert bytes: ``floor(fraction * L * E)``."""
    f = checks.fractions(fractions, name="capacity fractions")
    return np.floor(f * trace.shape.num_ids + 1e-9).astype(np.int64)


def token_cycle(trace: Trace) -> dict:
    """One token cycle of ``trace``: the demand of one decode token over all layers,
    ``{"slots": L * K, "bytes": L * K * expert_bytes, "fraction": L * K / (L * E)}``. A global
    cache smaller than it cannot keep a layer's experts until the next token reaches that layer
    under LRU (the recency order is the layer cycle): the *LRU cliff*."""
    s = trace.shape
    slots = s.num_layers * s.top_k
    return {"slots": slots, "bytes": slots * s.expert_bytes, "fraction": slots / s.num_ids}
