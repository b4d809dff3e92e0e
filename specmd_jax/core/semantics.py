"""Pinned semantics shared by the reference simulator and the JAX engine (pure Python, no jax).

This module is the single place where the *meaning* of a replay is written down; both
:mod:`specmd_jax.reference` (plain Python) and the JAX kernels implement exactly this.

Steps
    ``pinned`` mode (default): one step per ``(pass, layer)`` *visit*. The demand ``D`` is the set
    of distinct experts routed by that layer's tokens in this pass, processed as one batch sorted by
    ascending expert id. Demanded experts are never evicted to serve their own visit.
    ``sequential`` mode: one step per distinct demanded expert of a visit, in order of first
    appearance (token order, then router rank), as a general cache simulator (libCacheSim) does.
    Step indices count steps over the whole trace from 0.

Per step (pool = all ``L*E`` experts, or layer ``l``'s ``E`` experts in partitioned mode)
    1. At the first step of a pass the per-pass "evicted in this pass" set is cleared.
    2. ``hits`` = demanded and resident; ``misses`` = the rest; a miss on an expert evicted earlier
       in the same pass (same configuration) is a *collision miss*.
    3. ``free = cap - occupancy``; ``evictions = clip(misses - free, 0, resident - hits)``; the
       victims are the ``evictions`` lowest-keyed residents not in ``D`` (policy key below).
    4. ``admitted = min(misses, free + evictions)`` missing experts enter, lowest ids first; the
       others are a *bypass*: fetched, used, not cached (they happen only when ``|D| > cap``).
    5. Every miss moves ``expert_bytes``; hits move nothing.

Eviction keys (evict the smallest; the expert id is always the last tie-break, lowest first)
    ``lru``    (last step used, id)
    ``fifo``   (step inserted, id)
    ``lfu``    (uses since inserted, last step used, id); the count restarts at 1 on insert
               (libCacheSim's LFU)
    ``lfu_history`` (demands since the start of the trace, last step used, id): the count
               survives eviction (BigMoeOnEdge's ``lfu``)
    ``belady`` (-(next step that demands it), id); never demanded again = -(2**31 - 1)
    ``sb``     (cumulative quantised router weight over the whole history, id): each demand adds
               ``sum over the visit's tokens of round(weight * SB_SCALE)`` (Zhu et al. '25)
    ``ls``     (pass it last entered the current tier, its layer, step it entered, id)
               (Least-Stale, SpecMD §4; stale = marked in an earlier pass, so stale goes first)
    ``fld``    (-|layer - current layer|, id): farthest layer first
    ``random`` victims drawn uniformly without replacement among the evictable residents listed
               in insertion order ((step inserted, id)), by Floyd's algorithm with the counter
               hash :func:`rand_u32` (seed, step, draw), ``t = rand % (j + 1)``.

Partitioned mode splits ``cap`` over layers: layer ``l`` gets ``cap // L + (l < cap % L)``.
"""

from __future__ import annotations

INF_STEP = 2 ** 31 - 1
SB_SCALE = 1024
MASK32 = 0xFFFFFFFF
MODES = ("pinned", "sequential")


def mix32(x: int) -> int:
    """lowbias32 integer hash (C. Wellons); uint32 -> uint32."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def rand_u32(seed: int, step: int, draw: int) -> int:
    """Counter-based uint32 random number for ``(seed, step, draw)``; jax twin in kernels."""
    h = mix32((seed * 0x9E3779B1 + step) & MASK32)
    return mix32(h ^ ((draw * 0x85EBCA77) & MASK32))


def layer_capacity(cap: int, num_layers: int, layer: int) -> int:
    """Slots of layer ``layer`` when ``cap`` slots are partitioned over ``num_layers`` layers."""
    return cap // num_layers + (1 if layer < cap % num_layers else 0)
