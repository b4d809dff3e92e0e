"""The demand kernel's re-ranks, one per policy kind (:mod:`specmd_jax.kernels.demand`): given a
step's classified demand, which non-demanded residents are victims (``gone``), the new rank of
every other resident (``r_c``) and of the demanded experts (``rD_new``).

``mtt`` (``lru``, ``ls``) moves the demand to the top; ``fifo`` keeps hits in place and admits on
top; ``random`` draws victim positions by Floyd's algorithm with the reference's counter hash;
``keyed`` counts more-protected survivors under trace-shared keys (``belady``, ``sb``) or
per-configuration use counts (``lfu``, ``lfu_history``); ``fld`` evicts by layer distance.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.kernels.ranks import count_lt, wsum

HIGHEST = lax.Precision.HIGHEST


class DemandStep(NamedTuple):
    """One configuration's step as the re-ranks see it (pool-local arrays: ``M`` ids)."""

    spec: Any        # kernels.demand.Spec
    kind: str        # mtt | ins | keyed | fld
    l: Any           # the visit's layer
    base: Any        # first id of the pool (l * E partitioned, else 0)
    r: Any           # int16[M] ranks
    rD: Any          # int16[W] the demand's ranks (ABSENT unless resident)
    resD: Any        # bool[W] hits
    valid: Any       # bool[W] demanded slots
    loc: Any         # int32[W] pool indices of the demand
    inD: Any         # bool[M] demanded
    resident: Any    # bool[M]
    evictable: Any   # bool[M] resident and not demanded
    m: Any           # evictable residents
    nev: Any         # evictions
    na: Any          # admitted misses
    cm: Any          # int32[W] misses before each demand slot
    Dp: Any          # bool[W] resident after the step (hits and admitted)
    nDp: Any         # their count
    occ_new: Any     # occupancy after the step
    ids: Any         # int32[W] demanded global ids (-1 padded)
    step: Any        # scan step number (random's hash)
    seed: Any        # random's seed
    shared: Any      # trace-shared keys (belady, sb)
    freq: Any        # int32[N] lfu's use counts (all pools)
    pool: Callable   # [N] -> the pool's [M]
    unpool: Callable  # ([N], [M]) -> [N]


def rerank(s: DemandStep):
    """``(r_c, gone, rD_new, freq)`` of the step under its policy kind."""
    if s.kind == "fld":
        return jnp.zeros_like(s.r), fld_victims(s), jnp.zeros((s.spec.width,), jnp.int16), s.freq
    W = s.spec.width
    # position among evictables (0 = most protected): W compares per element
    # (fifo needs no per-element count: see below)
    evpos = None if s.spec.policy == "fifo" else s.r - count_lt(s.rD, s.r)
    ev_posD = s.rD.astype(jnp.int32) - wsum([s.rD[j] < s.rD for j in range(W)], (W,))   # hits' evpos
    if s.kind == "mtt":
        return (*_mtt(s, evpos), s.freq)
    if s.spec.policy == "fifo":
        return (*_fifo(s, ev_posD), s.freq)
    if s.spec.policy == "random":
        return (*_random(s, evpos, ev_posD), s.freq)
    return _keyed(s, evpos)


def _mtt(s, evpos):
    """A non-demanded resident moves to evpos + |D'|; it is a victim iff that rank reaches the new
    occupancy (= its evictable position is in the bottom ``nev``)."""
    W = s.spec.width
    earlier = jnp.arange(W)[None, :] < jnp.arange(W)[:, None]            # [W, W] j' < j
    r_c = evpos + s.nDp.astype(jnp.int16)
    gone = r_c >= s.occ_new.astype(jnp.int16)
    rD_new = (s.nDp - 1 - jnp.sum(earlier & s.Dp[None, :], axis=1, dtype=jnp.int32)).astype(jnp.int16)
    return r_c, gone, rD_new


def _fifo(s, ev_posD):
    """Hits keep their place, admitted go on top; victims are the oldest evictables: the
    non-demanded residents ranked at or below R*, the rank of the evictable at position
    ``thresh``. A hit's evictable position (rank minus the hits below it) is the position it sits
    above, so R* = thresh + #{hits with ev_pos <= thresh}: a [W] computation per config and one
    compare per element (no W-compare count)."""
    W = s.spec.width
    thresh = (s.m - s.nev).astype(jnp.int16)
    rstar = (thresh + wsum([s.resD[j] & (ev_posD[j] <= thresh) for j in range(W)], ())).astype(jnp.int16)
    r_c = s.r + s.na.astype(jnp.int16)
    gone = (s.r >= rstar) & ~s.inD
    nv_aboveD = jnp.clip(ev_posD - thresh, 0, s.nev)
    rD_new = jnp.where(s.resD, s.rD.astype(jnp.int32) - nv_aboveD + s.na, s.na - 1 - s.cm).astype(jnp.int16)
    return r_c, gone, rD_new


def _random(s, evpos, ev_posD):
    """Floyd positions count from the oldest evictable (the reference's order): position j <->
    evpos m - 1 - j; victims above x have positions >= m - evpos(x)."""
    m, na16 = s.m, s.na.astype(jnp.int16)
    U = floyd(s.seed, s.step, s.nev, m, s.spec.width)
    gone = jnp.any(U[:, None] == (m - 1 - evpos.astype(jnp.int32))[None, :], axis=0)
    lim = m - evpos.astype(jnp.int32)
    limD = m - ev_posD.astype(jnp.int32)
    nv_above = jnp.sum((U[:, None] >= 0) & (U[:, None] >= lim[None, :]), axis=0, dtype=jnp.int16)
    nv_aboveD = jnp.sum((U[None, :] >= 0) & (U[None, :] >= limD[:, None]), axis=1, dtype=jnp.int16)
    r_c = s.r - nv_above + na16
    rD_new = jnp.where(s.resD, s.rD - nv_aboveD + na16, s.na - 1 - s.cm).astype(jnp.int16)
    return r_c, gone, rD_new


def _more_protected(ka, ia, kb, ib):
    """Lexicographic ``(key, id) > (key, id)``; broadcasting."""
    return (ka > kb) | ((ka == kb) & (ia > ib))


def _keyed(s, evpos):
    """New ranks count more-protected experts under the policy's keys."""
    thresh = (s.m - s.nev).astype(jnp.int16)
    gone = evpos >= thresh
    S = s.evictable & ~gone                      # non-demanded survivors
    idsD, Dp, freq = s.ids, s.Dp, s.freq
    if s.spec.policy in ("lfu", "lfu_history"):
        # Demanded experts take last use = this step, later than every other resident's, so
        # against a non-demanded x the (freq, last, id) order reduces to freq alone: d above x iff
        # freq_d >= freq_x. One compare, no `last` table. lfu_history's counts outlive eviction:
        # every demand counts (bypassed ones too) and nothing is reset.
        M = s.r.shape[0]
        f = s.pool(s.freq, s.l)
        hist = s.spec.policy == "lfu_history"
        fD = f[s.loc] + 1 if hist else jnp.where(s.resD, f[s.loc] + 1, 1)
        G = fD[:, None] >= f[None, :]                                       # [W, M]
        Gdd = (fD[:, None] > fD[None, :]) | ((fD[:, None] == fD[None, :]) & (idsD[:, None] > idsD[None, :]))
        up_x = jnp.sum(G & Dp[:, None], axis=0, dtype=jnp.int16)
        # per-config [W, M] x [M] count as a matvec (XLA:CPU reductions along the contiguous axis
        # are scalar code; a dot is vectorised)
        sg = jnp.dot(G.astype(jnp.float32), S.astype(jnp.float32), precision=HIGHEST).astype(jnp.int32)
        if hist:
            f_new = f.at[jnp.where(s.valid, s.loc, M)].set(fD, mode="drop")
        else:
            f_new = jnp.where(s.resident & ~gone, f, 0).at[jnp.where(Dp, s.loc, M)].set(fD, mode="drop")
        freq = s.unpool(s.freq, f_new, s.l)
    else:
        # keys shared by all configurations: G is shared, the counts are matmuls
        M = s.r.shape[0]
        gid_pool = jnp.arange(M, dtype=jnp.int32) + s.base
        kD = jnp.where(s.valid, s.shared[jnp.where(s.valid, idsD, 0)], 0)
        G = _more_protected(kD[:, None], idsD[:, None], s.pool(s.shared, s.l)[None, :], gid_pool[None, :])
        Gdd = _more_protected(kD[:, None], idsD[:, None], kD[None, :], idsD[None, :])
        Gf = G.astype(jnp.float32)
        up_x = jnp.dot(Dp.astype(jnp.float32), Gf, precision=HIGHEST).astype(jnp.int16)
        sg = jnp.dot(Gf, S.astype(jnp.float32), precision=HIGHEST).astype(jnp.int32)
    r_c = evpos + up_x
    rD_new = ((s.m - s.nev - sg) + jnp.sum(Gdd & Dp[:, None], axis=0, dtype=jnp.int32)).astype(jnp.int16)
    return r_c, gone, rD_new, freq


def fld_victims(s: DemandStep):
    """FLD's victims: farthest layer first (then the lower layer), lowest ids within a layer."""
    L, E = s.spec.num_layers, s.spec.num_experts
    evictable, nev, l = s.evictable, s.nev, s.l
    tri = (jnp.arange(E)[:, None] < jnp.arange(E)[None, :]).astype(jnp.float32)  # [E, E] strict
    if s.spec.partitioned:
        c = jnp.dot(evictable.astype(jnp.float32), tri, precision=HIGHEST)
        return evictable & (c < nev)
    ev3 = evictable.reshape(L, E)
    cnt = jnp.sum(ev3, axis=1, dtype=jnp.int32)                                   # [L]
    lay = jnp.arange(L)
    dist = jnp.abs(lay - l)
    # layer a is evicted before layer b: farther first, then lower layer
    before = (dist[:, None] > dist[None, :]) | ((dist[:, None] == dist[None, :]) & (lay[:, None] < lay[None, :]))
    nbefore = jnp.dot(cnt.astype(jnp.float32), before.astype(jnp.float32), precision=HIGHEST).astype(jnp.int32)
    take = jnp.clip(nev - nbefore, 0, cnt)
    c = jnp.dot(ev3.astype(jnp.float32), tri, precision=HIGHEST)                 # [L, E]
    return (ev3 & (c < take[:, None].astype(jnp.float32))).reshape(L * E)


def _mix32(x):
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def rand_u32(seed, step, draw):
    """jax twin of ``semantics.rand_u32`` (uint32 wrap-around arithmetic)."""
    h = _mix32(seed.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + step.astype(jnp.uint32))
    return _mix32(h ^ (jnp.uint32(draw) * jnp.uint32(0x85EBCA77)))


def floyd(seed, step, nev, m, width):
    """Floyd's sampling of ``nev`` distinct positions in ``[0, m)``; int32[width], -1 unused."""

    def body(i, U):
        j = m - nev + i
        t = (rand_u32(seed, step, i) % jnp.maximum(j + 1, 1).astype(jnp.uint32)).astype(jnp.int32)
        in_s = jnp.any(U == t)
        return U.at[i].set(jnp.where(i < nev, jnp.where(in_s, j, t), -1))

    return lax.fori_loop(0, width, body, jnp.full((width,), -1, jnp.int32))
