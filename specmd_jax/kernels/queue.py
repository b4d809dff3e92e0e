"""The FIFO copy engine of the asynchronous kernel: arrival batches found on the completion ring,
arrival order within a batch, Least-Stale's per-layer places, the demand's copies and the
proposals' issue.

``qidx[x]`` is the issue number of ``x``'s queued copy (``NONE`` if none) and ``ring[k mod N]``
the completion tick of copy ``k``. At most ``N`` copies are ever queued (one per expert), and a
FIFO engine completes copies in issue order, so ``ring`` is sorted over the live window
``[head, tail)``: an arrival batch ("everything done by T") is the window's prefix found by a
binary search, its members are ``head <= qidx < head + count`` (elementwise), and a member's
arrival order is ``qidx - head``. Every function takes the step's :class:`Layout` first and works
on one configuration's state dict.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from specmd_jax.kernels.async_state import NONE, Layout
from specmd_jax.kernels.ranks import above, count_lt, suffix


def count_done(k: Layout, ring, head, tail, T):
    """#{c in [head, tail) : ring[c mod N] <= T} (ring is sorted over the window)."""
    N = k.N

    def body(_, lh):
        lo, hi = lh
        mid = (lo + hi) // 2
        ok = ring[mid % N] <= T
        go = lo < hi
        return jnp.where(go & ok, mid + 1, lo), jnp.where(go & ~ok, mid, hi)
    lo, _ = lax.fori_loop(0, k.nbits + 1, body, (head, tail))
    return lo - head


def batch(k: Layout, st, T, valid, dem_q):
    """Copies done by ``T``: ``(count, members bool[N], D's copies among them bool[W])``."""
    c = count_done(k, st["ring"], st["head"], st["tail"], T)
    head, qidx = st["head"], st["qidx"]
    inb = (qidx >= head) & (qidx < head + c)                       # members, elementwise
    if dem_q is None:
        return c, inb, jnp.zeros((k.W,), bool)
    return c, inb, valid & (dem_q >= head) & (dem_q < head + c)   # D's copies in this batch


def arrival_order(k: Layout, st, demb, dem_q):
    """int32[N]: each batch member's place among the batch's prefetches (issue order minus D's
    copies issued earlier)."""
    o = st["qidx"] - st["head"]
    if dem_q is not None and k.W:
        dq = jnp.where(demb, dem_q, NONE)
        o = o - jnp.sum(dq[:, None] < st["qidx"][None, :], axis=0, dtype=jnp.int32)
    return o


def layer_place(k: Layout, st, demb, dem_q, loc, l):
    """int32[N] (Least-Stale): a prefetch's place among its layer's batch members (issue order
    = arrival order), minus D's copies of layer ``l`` ahead of it."""
    w = st["lc"] - k.per_id(st["done"])
    if dem_q is not None:
        dlc = jnp.where(demb, st["lc"][loc], NONE)
        w = w - jnp.where(k.layer_of == l, jnp.sum(dlc[:, None] < st["lc"][None, :], axis=0, dtype=jnp.int32), 0)
    return w


def queue_misses(k: Layout, st, ids, miss, xj, t, l):
    """Queue the fetched misses' copies (ascending id) behind everything queued, ``xj[j]`` ticks
    each, from ``t`` on. Returns the state, each copy's completion tick, its issue number and the
    engine's start tick."""
    N = k.N
    nm = jnp.sum(miss, dtype=jnp.int32)
    start = jnp.maximum(t, st["eng"])
    c = jnp.sum(k.earlier & miss[None, :], axis=1, dtype=jnp.int32)
    done_m = start + jnp.sum(jnp.where(k.incl & miss[None, :], xj[None, :], 0), axis=1)
    q_m = st["tail"] + c
    st["qidx"] = st["qidx"].at[jnp.where(miss, ids, N)].set(q_m, mode="drop")
    if k.ls:  # per-layer issue numbers (the demand is all of layer l)
        st["lc"] = st["lc"].at[jnp.where(miss, ids, N)].set(st["icnt"][l] + c, mode="drop")
        st["icnt"] = st["icnt"].at[l].add(nm)
    st["ring"] = st["ring"].at[jnp.where(miss, q_m % N, N)].set(done_m, mode="drop")
    st["tail"] = st["tail"] + nm
    st["eng"] = jnp.where(nm > 0, start + jnp.sum(jnp.where(miss, xj, 0)), st["eng"])
    return st, done_m, q_m, start


def issue(k: Layout, st, visit, t_issue, xfer):
    """Issue the step's proposals at ``t_issue``, in order: a resident one is skipped
    (Least-Stale re-marks it current), one already queued is skipped, the others are queued
    on the FIFO engine. Returns the state and ``(issued, resident, pending, wrapped)``."""
    L, E, N = k.L, k.E, k.N
    A_, G_, rdt = k.A_, k.G_, k.rdt
    earlierQ, laterQ = k.earlierQ, k.laterQ
    pv = visit.pf_ids >= 0
    pidx = jnp.where(pv, visit.pf_ids, 0)
    resP = pv & (st["rank"][pidx] < G_)
    pendP = pv & ~resP & (st["qidx"][pidx] != NONE)
    iss = pv & ~resP & ~pendP
    n_iss = jnp.sum(iss, dtype=jnp.int32)
    pl = jnp.where(pv, visit.pf_ids // E, 0)                           # proposals' layers
    sameQ = pl[None, :] == pl[:, None]
    pdrop = jnp.where(pv, visit.pf_ids, N)
    if k.ls:
        # a resident stale proposal is re-marked current: top of its layer's block, later higher
        r, cur = st["rank"], st["cur"]
        ncur = jnp.sum(cur)
        rP = jnp.where(pv, r[pidx], A_).astype(rdt)
        R = resP & (rP.astype(jnp.int32) >= ncur)
        if k.mixed:  # in units: the re-marked experts hold their own levels
            ru = jnp.where(R, st["ul"][pidx], 0)
            rcnt = jnp.zeros((L,), jnp.int32).at[pl].add(ru)
            up_st = jnp.sum(ru) - k.wsum(jnp.where(R, rP, A_), ru, r, False)
            later_same = jnp.sum(jnp.where(laterQ & sameQ & R[None, :], ru[None, :], 0), axis=1)
        else:
            nR = jnp.sum(R, dtype=jnp.int32)
            rcnt = jnp.zeros((L,), jnp.int32).at[pl].add(R.astype(jnp.int32))
            up_st = nR.astype(rdt) - count_lt(jnp.where(R, rP, A_).astype(rdt), r)
            later_same = jnp.sum(laterQ & sameQ & R[None, :], axis=1, dtype=jnp.int32)
        r = jnp.where(r < ncur, r + k.per_id(suffix(rcnt)), jnp.where(r < G_, r + up_st, r)).astype(rdt)
        cur = cur + rcnt
        rR_new = above(cur, pl) + later_same
        st["rank"] = r.at[pdrop].set(jnp.where(R, rR_new.astype(rdt), r[pidx]), mode="drop")
        st["cur"] = cur
        # per-layer issue numbers of the new copies
        lcq = st["icnt"][pl] + jnp.sum(earlierQ & sameQ & iss[None, :], axis=1, dtype=jnp.int32)
        st["lc"] = st["lc"].at[jnp.where(iss, visit.pf_ids, N)].set(lcq, mode="drop")
        st["icnt"] = st["icnt"].at[pl].add(iss.astype(jnp.int32))
    startp = jnp.maximum(t_issue, st["eng"])
    kp = jnp.sum(earlierQ & iss[None, :], axis=1, dtype=jnp.int32)
    q_p = st["tail"] + kp
    st["qidx"] = st["qidx"].at[jnp.where(iss, visit.pf_ids, N)].set(q_p, mode="drop")
    st["ring"] = st["ring"].at[jnp.where(iss, q_p % N, N)].set(startp + (kp + 1) * xfer, mode="drop")
    st["tail"] = st["tail"] + n_iss
    st["eng"] = jnp.where(n_iss > 0, startp + n_iss * xfer, st["eng"])
    ovf = jnp.any(iss & (startp + (kp + 1) * xfer < startp))
    return st, (n_iss, jnp.sum(resP, dtype=jnp.int32), jnp.sum(pendP, dtype=jnp.int32), ovf)
