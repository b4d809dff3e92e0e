"""The Python API: load a trace, run a policy for one configuration or a sweep, get a table.

Example::

    import specmd_jax as sj
    trace = sj.synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=32, gen_len=64)
    df = sj.sweep(trace, "ls", fractions=[0.01, 0.05, 0.25])
    print(df[["capacity_fraction", "hit_rate", "collision_rate"]])
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import checks
from .engine import COUNTER_NAMES
from .semantics import POLICIES
from .runner import run_configs
from .stack import run_auto
from .trace import Trace

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

METRICS = {
    "demands": "distinct (expert, visit) demands (pinned) or accesses (sequential)",
    "hits": "demands found resident",
    "misses": "demands not resident (fetched; includes bypass)",
    "collisions": "misses on an expert evicted earlier in the same pass",
    "evictions": "experts evicted",
    "bypass": "misses fetched but not cached because the visit's demand exceeded the cache",
    "bytes_moved": "misses x expert_bytes (host-to-device bytes)",
    "hit_rate": "hits / demands",
    "miss_rate": "misses / demands",
    "collision_rate": "collisions / demands (the paper leaves the denominator open; ours is demands)",
    "collision_share": "collisions / misses",
    "max_occupancy": "largest pool occupancy after any step (slots)",
    "token_cycle_slots": "one token's demand over all layers, L x top-k slots (T = L x K x expert_bytes bytes)",
    "below_token_cycle": "capacity below one token cycle (capacity_bytes < T): LRU's recency order is then the "
                         "layer cycle and its decode hit rate collapses to about 0; read it as a cliff, not a "
                         "policy result",
}


def token_cycle(trace: Trace) -> dict:
    """One token cycle of ``trace``: the demand of one decode token over all layers,
    ``{"slots": L * K, "bytes": L * K * expert_bytes, "fraction": L * K / (L * E)}``. A global
    cache smaller than it cannot keep a layer's experts until the next token reaches that layer
    under LRU (the recency order is the layer cycle): the *LRU cliff*."""
    s = trace.shape
    slots = s.num_layers * s.top_k
    return {"slots": slots, "bytes": slots * s.expert_bytes, "fraction": slots / s.num_ids}


def list_policies() -> dict:
    """Policy name -> one-line description (the registry of :mod:`specmd_jax.engine`)."""
    return {p: POLICY_INFO[p] for p in POLICIES}


def capacity_slots(trace: Trace, fractions) -> np.ndarray:
    """Slots holding ``fraction`` of all expert bytes: ``floor(fraction * L * E)``."""
    f = checks.fractions(fractions, name="capacity fractions")
    return np.floor(f * trace.shape.num_ids + 1e-9).astype(np.int64)


def _table(trace, policy, mode, partitioned, caps, seeds, fracs, tot, maxocc) -> pd.DataFrame:
    s = trace.shape
    df = pd.DataFrame(tot, columns=list(COUNTER_NAMES))
    df.insert(0, "trace", trace.source)
    df.insert(1, "model", s.name)
    df.insert(2, "policy", policy)
    df.insert(3, "mode", mode)
    df.insert(4, "partitioned", bool(partitioned))
    df.insert(5, "capacity_slots", caps)
    df.insert(6, "capacity_fraction", fracs if fracs is not None else caps / s.num_ids)
    df.insert(7, "capacity_bytes", checks.capacity_bytes(caps, s.expert_bytes))
    df.insert(8, "seed", seeds)
    df["bytes_moved"] = df["misses"] * s.expert_bytes
    d = df["demands"].where(df["demands"] > 0)
    df["hit_rate"] = df["hits"] / d
    df["miss_rate"] = df["misses"] / d
    df["collision_rate"] = df["collisions"] / d
    df["collision_share"] = df["collisions"] / df["misses"].where(df["misses"] > 0)
    df["max_occupancy"] = maxocc
    df["token_cycle_slots"] = token_cycle(trace)["slots"]
    df["below_token_cycle"] = df["capacity_bytes"] < token_cycle(trace)["bytes"]
    return df


def sweep(trace: Trace, policy: str, capacities: Optional[Sequence[int]] = None, *,
          fractions: Optional[Sequence[float]] = None, seeds: Sequence[int] = (0,),
          mode: str = "pinned", partitioned: bool = False, progress: bool = False,
          chunk_steps: int = 8192, unroll_layers: Optional[bool] = None,
          engine: str = "auto") -> pd.DataFrame:
    """Run ``policy`` over ``trace`` for every (capacity, seed) in one jitted vmap over one scan.

    Args:
        trace: a loaded or generated :class:`~specmd_jax.trace.Trace`.
        policy: a name from :func:`list_policies`.
        capacities: cache sizes in slots (experts), or
        fractions: cache sizes as fractions of all expert bytes (``floor(f * L * E)`` slots).
        seeds: seeds, crossed with the capacities (only ``random`` uses them).
        mode: ``"pinned"`` (default; one step per (pass, layer) visit) or ``"sequential"``.
        partitioned: one cache per layer (capacity split evenly) instead of one global pool.
        progress: tqdm progress bar over the trace.
        engine: ``"auto"`` (default): ``lru``/``ls``/``belady`` capacities that never bypass come
            from one stack pass for all of them (:mod:`specmd_jax.stack`, exact), everything
            else from the vmapped scan; ``"scan"``: always the scan; ``"stack"``: stack only.

    Returns:
        A tidy table, one row per configuration (columns in ``METRICS`` plus the parameters).
        ``df.attrs`` holds ``per_layer`` (long table by the visit's layer), ``resident``
        (bool[B, N] final resident sets) and ``timing`` (compile and run seconds).
    """
    checks.trace(trace)
    if (capacities is None) == (fractions is None):
        raise ValueError("give exactly one of capacities= (slots) or fractions=")
    checks.whole("chunk_steps", chunk_steps, 1)
    fr = None
    if fractions is not None:
        caps = capacity_slots(trace, fractions)
        fr = checks.fractions(fractions)
    else:
        caps = checks.capacities(capacities)
    seeds = checks.seeds(seeds)
    C, Sd = np.meshgrid(np.arange(len(caps)), np.arange(len(seeds)), indexing="ij")
    ci, si = C.reshape(-1), Sd.reshape(-1)
    r = run_auto(trace, policy, caps[ci], seeds[si], mode=mode, partitioned=partitioned, engine=engine,
                 progress=progress, chunk_steps=chunk_steps, unroll_layers=unroll_layers)
    df = _table(trace, policy, mode, partitioned, caps[ci], seeds[si], None if fr is None else fr[ci],
                r.totals, r.max_occupancy)
    L = trace.shape.num_layers
    pl = pd.DataFrame(r.per_layer.transpose(0, 2, 1).reshape(-1, len(COUNTER_NAMES)), columns=list(COUNTER_NAMES))
    pl.insert(0, "config", np.repeat(np.arange(len(df)), L))
    pl.insert(1, "capacity_slots", np.repeat(caps[ci], L))
    pl.insert(2, "seed", np.repeat(seeds[si], L))
    pl.insert(3, "layer", np.tile(np.arange(L), len(df)))
    d = pl["demands"].where(pl["demands"] > 0)
    pl["hit_rate"] = pl["hits"] / d
    pl["collision_rate"] = pl["collisions"] / d
    df.attrs = {"per_layer": pl, "resident": r.resident,
                "timing": {"compile_s": r.compile_s, "run_s": r.run_s}}
    return df


def simulate(trace: Trace, policy: str, capacity: Optional[int] = None, *,
             fraction: Optional[float] = None, seed: int = 0, mode: str = "pinned",
             partitioned: bool = False) -> pd.Series:
    """One configuration, unbatched; returns that configuration's row of the tidy table."""
    checks.trace(trace)
    if (capacity is None) == (fraction is None):
        raise ValueError("give exactly one of capacity= (slots) or fraction=")
    cap = int(capacity_slots(trace, [fraction])[0] if fraction is not None
              else checks.capacities(capacity, name="capacity")[0])
    seed = int(checks.seeds(seed, name="seed")[0])
    r = run_configs(trace, policy, [cap], [seed], mode=mode, partitioned=partitioned, batched=False)
    df = _table(trace, policy, mode, partitioned, np.array([cap]), np.array([seed]),
                None if fraction is None else np.array([fraction]), r.totals, r.max_occupancy)
    return df.iloc[0]
