"""LRU miss-ratio curves for *all* capacities from one pass of stack distances (Mattson et al.).

LRU is a stack algorithm: with capacity ``C`` the cache holds exactly the top ``C`` experts of
one global recency stack, so one unbatched scan gives every step's stack distance and
``hits(C) = #{accesses with distance < C}`` for every ``C`` at once. In pinned mode this holds
for every ``C >= max visit demand`` (a step's demand goes to the top as one block, lowest id
lowest); below that a visit overflows the cache and the bypass rule breaks the stack property,
so those capacities are reported as ``exact = False``. Collisions come for free: an expert
missed at ``C`` was evicted earlier in the same pass iff its stack position at the start of the
pass was below ``C`` (in demand-only replay an expert is demanded once per pass).
Least-Stale has the same curve in demand-only replay (see :mod:`specmd_jax.kernels.demand`).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax

from specmd_jax.run.cache import cached
from specmd_jax.core.trace import Trace
from specmd_jax.core.steps import StepArrays, prepare_steps

_INF = 2 ** 30


@cached
def _stack_scan(num_ids: int, num_layers: int):
    N, L = num_ids, num_layers

    def body(carry, x):
        pos, start, hist, coll = carry
        start = jnp.where(x["new_pass"], pos, start)
        valid = x["ids"] >= 0
        idx = jnp.where(valid, x["ids"], 0)
        dist = jnp.where(valid, pos[idx], _INF)
        sdist = jnp.where(valid, start[idx], _INF)
        b = jnp.minimum(dist, N + 1)
        hist = hist.at[x["layer"], jnp.where(valid, b, N + 2)].add(1, mode="drop")
        lo = jnp.minimum(sdist + 1, N + 1)
        hi = jnp.minimum(dist + 1, N + 1)
        ok = valid & (sdist < dist)
        coll = coll.at[x["layer"], jnp.where(ok, lo, N + 2)].add(1, mode="drop")
        coll = coll.at[x["layer"], jnp.where(ok, hi, N + 2)].add(-1, mode="drop")
        # move the step's ids to the top, lowest id lowest; others shift down
        moved = jnp.sum(valid[:, None] & (dist[:, None] > pos[None, :]), axis=0)
        pos = jnp.where(pos < _INF, pos + moved, pos)
        higher = jnp.sum(valid[None, :] & (x["ids"][None, :] > x["ids"][:, None]), axis=1)
        pos = pos.at[jnp.where(valid, x["ids"], N)].set(higher, mode="drop")
        return (pos, start, hist, coll), None

    def run(xs):
        init = (jnp.full((N,), _INF, jnp.int32), jnp.full((N,), _INF, jnp.int32),
                jnp.zeros((L, N + 2), jnp.int32), jnp.zeros((L, N + 2), jnp.int32))
        (pos, _, hist, coll), _ = lax.scan(body, init, xs)
        return pos, hist, coll

    return jax.jit(run)


def lru_mrc(trace: Trace, mode: str = "pinned", steps: StepArrays | None = None,
            per_layer: bool = False) -> pd.DataFrame:
    """Exact LRU counts for every capacity ``0..N`` from one stack-distance pass.

    Returns a table with one row per capacity (and per layer if ``per_layer``): ``demands``,
    ``hits``, ``misses``, ``collisions``, ``hit_rate``, ``collision_rate`` (per demand) and
    ``exact`` (False where a visit's demand exceeds the capacity in pinned mode).
    """
    steps = steps if steps is not None else prepare_steps(trace, mode)
    N, L = trace.shape.num_ids, trace.shape.num_layers
    xs = {"ids": jnp.asarray(steps.ids), "layer": jnp.asarray(steps.layer),
          "new_pass": jnp.asarray(steps.new_pass)}
    _, hist, coll = _stack_scan(N, L)(xs)
    hist = np.asarray(hist, np.int64)                       # [L, N+2]: distance bucket counts
    caps = np.arange(N + 1)
    # hits(C) = #(distance < C): cumulative bucket counts shifted by one
    hits_l = np.concatenate([np.zeros((L, 1), np.int64), np.cumsum(hist[:, :N], axis=1)], 1)[:, caps]
    coll_l = np.cumsum(np.asarray(coll, np.int64), axis=1)[:, caps]
    dem_l = hist.sum(axis=1)
    maxdem = int((steps.ids >= 0).sum(axis=1).max()) if steps.num_steps else 0
    exact = (caps >= maxdem) if steps.mode == "pinned" else np.ones_like(caps, bool)
    if per_layer:
        rows = []
        for l in range(L):
            rows.append(pd.DataFrame({"capacity_slots": caps, "layer": l, "demands": dem_l[l],
                                      "hits": hits_l[l], "collisions": coll_l[l], "exact": exact}))
        df = pd.concat(rows, ignore_index=True)
    else:
        df = pd.DataFrame({"capacity_slots": caps, "demands": dem_l.sum(), "hits": hits_l.sum(0),
                           "collisions": coll_l.sum(0), "exact": exact})
    df["misses"] = df["demands"] - df["hits"]
    d = df["demands"].where(df["demands"] > 0)
    df["hit_rate"] = df["hits"] / d
    df["collision_rate"] = df["collisions"] / d
    return df
