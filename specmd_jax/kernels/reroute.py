"""Cache-aware routing inside the asynchronous kernel (:mod:`specmd_jax.core.routing`, exactly):
each configuration re-routes the visit's tokens against its own residents at the visit start,
so the demand of a visit depends on the configuration.

Tokens are rows ``[row0, row0 + nrows)`` of the trace's candidate tables (``tabs``, passed once),
one token per loop trip: each candidate's rank is the count of candidates with a larger key
``(z', lower recorded rank, lower id)``, a ``[C, C]`` comparison; ``lam`` is per configuration
(vmapped), ``delta`` per visit. The new demand is compacted into the ``W`` slots of the visit
(ascending ids) with its best rank, best weight units and recorded pairs/units, so everything
after it is the standard step.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.semantics import SB_SCALE
from specmd_jax.kernels.async_state import Layout
from specmd_jax.kernels.pytree import replace

BIG = 2 ** 30  # = core.miss.NO_DROP: the rank of padding


def route(k: Layout, visit, r, lam, tabs):
    """The visit re-routed against this configuration's residents (``r``): the demand (``ids``
    ascending in ``W`` slots) and its per-id details, the tokens routing each id, and the visit's
    rerouting counters ``(tokens changed, recorded pairs rerouted, their units)``."""
    K, E, W, G_ = k.spec.top_k, k.E, k.W, k.G_
    l = visit.layer
    cached = lax.dynamic_slice_in_dim(r, l * E, E) < G_
    anyc = jnp.any(cached)
    bias = lax.optimization_barrier(lam.astype(jnp.float32) * visit.delta.astype(jnp.float32))
    big = jnp.int32(BIG)

    def token(i, c):
        dm, smax, rmin, rp, ru_s, npr, rer_p, rer_u, chg = c
        row = lambda name: lax.dynamic_index_in_dim(tabs[name], visit.row0 + i, keepdims=False)  # noqa: E731
        cid, z, rr, q, ru = row("cid"), row("z"), row("rr"), row("q"), row("ru")
        zp = jnp.where(cached[cid], z + bias, z)
        beats = (zp[None, :] > zp[:, None]) | ((zp[None, :] == zp[:, None]) & (
            (rr[None, :] < rr[:, None]) | ((rr[None, :] == rr[:, None]) & (cid[None, :] < cid[:, None]))))
        cnt = jnp.sum(beats, axis=1, dtype=jnp.int32)
        nrank = jnp.where(anyc, cnt, rr)                 # nothing cached: the recorded routing
        sel = nrank < K
        rec = rr < K
        changed = jnp.any(rec & ~sel)
        Q = jnp.sum(jnp.where(sel, q, 0))
        u = jnp.where(changed, (2 * SB_SCALE * q + Q) // jnp.maximum(2 * Q, 1), ru)
        keep = sel & rec
        return (dm.at[cid].max(sel), smax.at[cid].max(jnp.where(sel, u, 0)),
                rmin.at[cid].min(jnp.where(sel, nrank, big)), rp.at[cid].add(keep.astype(jnp.int32)),
                ru_s.at[cid].add(jnp.where(keep, ru, 0)), npr.at[cid].add(sel.astype(jnp.int32)),
                rer_p + jnp.sum(rec & ~sel, dtype=jnp.int32), rer_u + jnp.sum(jnp.where(rec & ~sel, ru, 0)),
                chg + changed.astype(jnp.int32))

    zi = jnp.zeros((E,), jnp.int32)
    z0 = jnp.zeros((), jnp.int32)
    dm, smax, rmin, rp, ru_s, npr, rer_p, rer_u, chg = lax.fori_loop(
        0, visit.nrows, token, (jnp.zeros((E,), bool), zi, jnp.full((E,), big), zi, zi, zi, z0, z0, z0))
    # compaction: the demanded experts in ascending id into W slots
    pos = jnp.cumsum(dm.astype(jnp.int32)) - 1
    oh = dm[None, :] & (pos[None, :] == jnp.arange(W)[:, None])           # [W, E]
    has = jnp.any(oh, axis=1)
    pick = lambda a: jnp.sum(jnp.where(oh, a[None, :], 0), axis=1, dtype=jnp.int32)  # noqa: E731
    ids = jnp.where(has, l * E + pick(jnp.arange(E, dtype=jnp.int32)), -1)
    score = pick(smax)
    key_lt = (score[None, :] < score[:, None]) | ((score[None, :] == score[:, None]) & (ids[None, :] < ids[:, None]))
    spos = jnp.sum(key_lt & has[None, :], axis=1, dtype=jnp.int32)
    visit = replace(visit, ids=ids, rank=jnp.where(has, pick(rmin), big), pairs=pick(rp), units=pick(ru_s),
                    score=score, spos=spos)
    return visit, pick(npr), (chg, rer_p, rer_u)
