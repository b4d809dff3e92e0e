"""The instant prefetch kernel's proposal batch: a turn's proposals admitted at once, with its
pinned set (:class:`specmd_jax.kernels.reading.PinSet`) protected.

Resident proposals are counted (and re-marked current by Least-Stale: top of their layer's block,
later proposals higher); the others are admitted in issue order, evicting the lowest-ranked
residents outside the pinned set. Least-Stale's per-layer blocks are kept only where entries can
land below the top of the tier (``PfLayout.deep``); otherwise every entry goes on top.
"""

from __future__ import annotations

import jax.numpy as jnp

from specmd_jax.kernels.instant_state import PfLayout
from specmd_jax.kernels.ranks import ABSENT, GONE, above, count_lt, suffix, take_victims, victim_threshold


def admit_proposals(k: PfLayout, carry, visit, cap, l, pins, block):
    """Admit the turn's proposals as one instant arrival batch. ``carry`` = ``(rank, occ, cur,
    pfu, max_occ)``; ``pins`` the pinned set; ``block``: bool[Q] proposals not issued (their copy
    is queued), or None. Returns the updated carry and ``(issued, resident, admitted, evictions)``."""
    r, occ, cur, pfu, max_occ = carry
    L, E, N = k.L, k.E, k.N
    ls, deep, per_id = k.ls, k.deep, k.per_id
    earlierQ, laterQ = k.earlierQ, k.laterQ
    ncur = jnp.sum(cur)
    pv = visit.pf_ids >= 0
    pidx = jnp.where(pv, visit.pf_ids, 0)
    pdrop = jnp.where(pv, visit.pf_ids, N)
    rP = jnp.where(pv, r[pidx], ABSENT).astype(jnp.int16)
    resP = rP < GONE
    n_res = jnp.sum(resP, dtype=jnp.int32)
    pl = jnp.where(pv, visit.pf_ids // E, 0)                      # proposals' layers
    sameQ = pl[None, :] == pl[:, None]
    if ls:  # resident stale proposals re-marked current: top of their layer's group, later higher
        R = resP & (rP.astype(jnp.int32) >= ncur)
        nR = jnp.sum(R, dtype=jnp.int32)
        Rcnt = jnp.zeros((L,), jnp.int32).at[pl].add(R.astype(jnp.int32)) if deep else None
        up_st = nR.astype(jnp.int16) - count_lt(jnp.where(R, rP, ABSENT).astype(jnp.int16), r)
        if deep:  # a current expert moves down by the re-marks at or above its layer
            r = jnp.where(r < ncur, r + per_id(suffix(Rcnt)), jnp.where(r < GONE, r + up_st, r)).astype(jnp.int16)
        else:  # no R is above a current expert: up_st is nR there
            r = jnp.where(r < GONE, r + up_st, r).astype(jnp.int16)
        if deep:
            cur = cur + Rcnt
            rR_new = above(cur, pl) + jnp.sum(laterQ & sameQ & R[None, :], axis=1, dtype=jnp.int32)
        else:  # all proposals are of layer l + 1, the highest current layer: to the very top
            cur = cur + nR
            rR_new = jnp.sum(laterQ & R[None, :], axis=1, dtype=jnp.int32)
        r = r.at[pdrop].set(jnp.where(R, rR_new.astype(jnp.int16), r[pidx]), mode="drop")
        ncur = jnp.sum(cur)
    A = pv & ~resP
    if block is not None:
        A = A & ~block
    a = jnp.sum(A, dtype=jnp.int32)
    rDp = pins.ranks(r, ABSENT, jnp.int16)
    pin = rDp < GONE
    npin = jnp.sum(pin, dtype=jnp.int32)
    free2 = cap - occ
    m2 = occ - npin
    n_adm = jnp.minimum(a, jnp.maximum(free2, 0) + m2)
    nev2 = jnp.maximum(0, n_adm - jnp.maximum(free2, 0))
    thresh2 = m2 - nev2
    rstar2, ev_posP = victim_threshold(rDp, pin, thresh2)
    gone2 = (r >= rstar2) & (r < GONE) & ~pins.mask
    ca = jnp.sum(earlierQ & A[None, :], axis=1, dtype=jnp.int32)
    adm = A & (ca < n_adm)
    if deep:  # new prefetches: current, top of their layer's group (later proposals higher)
        npc = jnp.sum(pin & (rDp.astype(jnp.int32) < ncur), dtype=jnp.int32)
        cur = take_victims(cur, jnp.clip(ncur - npc - thresh2, 0, nev2), k.onehot(l) * npc)
        Acnt = jnp.zeros((L,), jnp.int32).at[pl].add(adm.astype(jnp.int32))
        up = jnp.where(r < ncur, per_id(suffix(Acnt)), n_adm)
        # a pinned current expert (layer l) moves down by the entries at or above layer l; after
        # the use every pinned expert is current, at the router a stale one moves down by all
        up_pin = jnp.where(rDp < ncur, suffix(Acnt)[l], n_adm) if k.pre else suffix(Acnt)[l]
        r_pin = rDp - jnp.clip(ev_posP - thresh2, 0, nev2) + up_pin
        cur = cur + Acnt
        r_adm = above(cur, pl) + jnp.sum(laterQ & sameQ & adm[None, :], axis=1, dtype=jnp.int32)
    else:
        if ls:  # one-layer lookahead: new prefetches go on top of everything
            npc = jnp.sum(pin & (rDp.astype(jnp.int32) < ncur), dtype=jnp.int32)
            cur = cur - jnp.clip(ncur - npc - thresh2, 0, nev2) + n_adm
        up = n_adm
        r_pin = rDp + n_adm - jnp.clip(ev_posP - thresh2, 0, nev2)
        r_adm = n_adm - 1 - ca
    r = jnp.where(r >= GONE, r, jnp.where(gone2, GONE, r + up)).astype(jnp.int16)
    r = r.at[pins.scat].set(jnp.where(pin, r_pin.astype(jnp.int16), r[pins.gat]), mode="drop")
    r = r.at[pdrop].set(jnp.where(adm, r_adm.astype(jnp.int16), r[pidx]), mode="drop")
    pfu = jnp.where(gone2, False, pfu)
    pfu = pfu.at[pdrop].set(adm | pfu[pidx], mode="drop")
    occ = occ - nev2 + n_adm
    max_occ = jnp.maximum(max_occ, occ)
    return (r, occ, cur, pfu, max_occ), (a, n_res, n_adm, nev2)
