"""The hard parametric-score policy in JAX: exact, vmapped over (weights, capacity).

One pure step per (configuration, visit), pinned visits, one global pool, the insert/evict
rules of :mod:`specmd_jax.core.semantics`; the victims are the evictable residents with the lowest
int32 keep score ``sum_i q_i f_i`` (:mod:`specmd_jax.core.score`), lowest id first on ties
(``lax.top_k`` returns equal values in index order). Dense per-expert tables (``N = L * E``): resident, last use,
insertion step, uses, cumulative gate units, evicted-this-pass. Equal to
``reference.simulate(trace, "score", cap, weights=q)`` exactly (tested).

Cost: one ``top_k`` of the ``W`` (widest visit) lowest of ``N`` keys per visit and configuration. This engine is what evaluates a
learned score and what the tuner's early stopping calls; it is not the sweep fast path of the
fixed rules (:mod:`specmd_jax.kernels.demand`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core.counters import DEMAND_COUNTERS

INT32_MAX = np.iinfo(np.int32).max


def demand_features(s, l, last, uses, ins, gate, L: int, E: int) -> tuple:
    """The demand-only features of :mod:`specmd_jax.core.score` (``DEMAND_FEATURES`` order) for all
    ``N = L * E`` experts at step ``s`` (a visit of layer ``l``), elementwise; the JAX twin of
    :func:`specmd_jax.core.score.features`. ``uses``/``ins`` may be expectations (the relaxation)."""
    layer = jnp.arange(L * E, dtype=jnp.int32) // E
    return (s - last, uses, s - ins, (layer - l - 1) % L, jnp.abs(layer - l), last < s - l, gate)


def init(N, P):
    """The empty cache of one configuration: dense ``[N]`` tables and the counters."""
    z = jnp.zeros(N, jnp.int32)
    return dict(res=jnp.zeros(N, bool), gone=jnp.zeros(N, bool), last=z, ins=z, uses=z, gate=z,
                occ=jnp.int32(0), cnt=jnp.zeros(len(DEMAND_COUNTERS), jnp.int32), pm=jnp.zeros(P, jnp.int32))


def step(st, x, q, cap, L, E):
    """One visit of one configuration. ``q``: int32[NF]; ``cap``: int32[]."""
    N = L * E
    s, p, l, new_pass, ids, units = x
    W = min(int(ids.shape[-1]), N)
    valid = ids >= 0
    idx = jnp.where(valid, ids, N)
    d = jnp.zeros(N, bool).at[idx].set(True, mode="drop")
    gate = st["gate"].at[idx].add(units, mode="drop")
    res = st["res"]
    gone = jnp.where(new_pass, False, st["gone"])
    hit, miss = d & res, d & ~res
    coll = miss & gone
    nmiss = jnp.sum(miss, dtype=jnp.int32)
    free = cap - st["occ"]
    evictable = res & ~d
    nev = jnp.clip(nmiss - free, 0, jnp.sum(evictable, dtype=jnp.int32))
    f = demand_features(s, l, st["last"], st["uses"], st["ins"], gate, L, E)  # pf, level: 0 here
    score = sum(q[i] * f[i].astype(jnp.int32) for i in range(len(f)))
    key = jnp.where(evictable, score, INT32_MAX)
    # at most W victims (nev <= misses <= W): the W lowest keys; top_k puts equal values in
    # index order, so ties go to the lowest id
    _, low = lax.top_k(-key, W)
    victim = jnp.zeros(N, bool).at[low].set(jnp.arange(W) < nev) & evictable
    na = jnp.minimum(nmiss, free + nev)
    admitted = miss & (jnp.cumsum(miss, dtype=jnp.int32) <= na)  # lowest ids first
    used = hit | admitted
    st = dict(res=(res & ~victim) | admitted, gone=gone | victim,
              last=jnp.where(used, s, st["last"]), ins=jnp.where(admitted, s, st["ins"]),
              uses=jnp.where(hit, st["uses"] + 1, jnp.where(admitted, 1, st["uses"])), gate=gate,
              occ=st["occ"] - nev + na,
              cnt=st["cnt"] + jnp.stack([jnp.sum(d, dtype=jnp.int32), jnp.sum(hit, dtype=jnp.int32), nmiss,
                                         jnp.sum(coll, dtype=jnp.int32), nev, nmiss - na]),
              pm=st["pm"].at[p].add(nmiss))
    return st
