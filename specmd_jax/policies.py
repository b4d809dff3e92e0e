"""The policy registry: every eviction policy by name."""

from specmd_jax.core.semantics import POLICIES

POLICY_INFO = {
    "lru": "least recently used (Eliseev & Mazur '23); ties: lowest id first",
    "fifo": "first in, first out (classic baseline)",
    "lfu": "least frequently used since insertion, ties by least recent (libCacheSim's LFU)",
    "random": "uniform random victims among evictable residents (seeded, Floyd sampling)",
    "fld": "farthest layer distance |layer - current| first, then lowest id (HOBBIT-style, SpecMD §3.1.3)",
    "sb": "score-based: lowest cumulative router weight first (Zhu et al. '25)",
    "ls": "Least-Stale (SpecMD §4): stale tier first, FIFO across passes, by layer within a pass",
    "belady": "Belady/MIN oracle: farthest next use first (next uses precomputed once per trace)",
}


def list_policies() -> dict:
    """Policy name -> one-line description (the registry of :mod:`specmd_jax.kernels.demand`)."""
    return {p: POLICY_INFO[p] for p in POLICIES}
