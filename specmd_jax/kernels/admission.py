"""Arrival batches of the asynchronous kernel: every copy done by a time is admitted at once, with
the pinned set protected, on slot ranks (:func:`admit`) or on weighted ranks under precision
levels (:func:`admit_w`); :func:`admit_batch` picks the one the layout needs.

``D`` is the step's demand and pinned set: ``(ids, valid, loc, loc_drop, inD, pids, pvalid)``
(demand ids, executed mask, gather and scatter indices, the pinned [N] mask, pinned ids and
their mask). Least-Stale's current tier is the top ``sum(cur)`` ranks, one block per layer
(highest layer on top); a prefetch enters at the top of *its* layer's block in arrival order.
"""

from __future__ import annotations

import jax.numpy as jnp

from specmd_jax.kernels.async_state import NONE, Layout
from specmd_jax.kernels.queue import arrival_order, batch, layer_place
from specmd_jax.kernels.ranks import suffix, take_victims, victim_threshold


def own_mask(k: Layout, inD, ids, demb):
    """bool[N]: the batch members that are the step's own demand copies (the others are
    prefetches). With the pinned set = the executed demand that is ``inD`` itself (a
    pinned expert in a batch is one of the step's copies); with a separate pinned set, the
    step's copies in the batch (``demb``)."""
    if not k.spec.pin_width:
        return inD
    return jnp.zeros((k.N,), bool).at[jnp.where(demb, ids, k.N)].set(True, mode="drop")


def admit_batch(k: Layout, st, T, cap, D, dem_q, dem_u, l):
    """The arrival batch of every copy done by ``T`` (:func:`admit_w` under precision levels,
    else :func:`admit`). Returns the state and ``(evictions, demand bypassed, arrived, dropped)``."""
    if k.mixed:
        return admit_w(k, st, T, cap, D, dem_q, dem_u, l)
    return admit(k, st, T, cap, D, dem_q, l)


def admit(k: Layout, st, T, cap, D, dem_q, l):
    """Arrival batch of every copy done by ``T``; ``D`` pinned. ``dem_q`` int32[W]: issue numbers
    of D's queued copies (NONE otherwise), or ``None`` when the batch cannot hold any (after the
    demand has been served: a static shortcut)."""
    L, N, A_, G_, rdt = k.L, k.N, k.A_, k.G_, k.rdt
    per_id = k.per_id
    r, occ, pfu, qidx = st["rank"], st["occ"], st["pfu"], st["qidx"]
    ids, valid, loc, loc_drop, inD, pids, pvalid = D
    head = st["head"]
    c, inb, demb = batch(k, st, T, valid, dem_q)
    n_dem = jnp.sum(demb, dtype=jnp.int32)
    n_pf = c - n_dem
    ploc = jnp.where(pvalid, pids, 0)
    rDp = jnp.where(pvalid, r[ploc], A_).astype(rdt)   # the pinned: executed residents
    pin = rDp < G_
    npin = jnp.sum(pin, dtype=jnp.int32)
    free = jnp.maximum(cap - occ, 0)
    m = occ - npin
    n_adm = jnp.minimum(c, free + m)
    n_dem_adm = jnp.minimum(n_dem, n_adm)
    n_pf_adm = n_adm - n_dem_adm
    nev = jnp.maximum(0, n_adm - free)
    thresh = m - nev
    rstar, ev_pos = victim_threshold(rDp, pin, thresh)
    gone = (r >= rstar) & (r < G_) & ~inD
    # arrival order among the batch's prefetches: issue order minus D's copies issued earlier
    o = arrival_order(k, st, demb, dem_q)
    pf_in = inb & ~own_mask(k, inD, ids, demb)
    pf_adm = pf_in & (o < n_pf_adm)
    j = jnp.sum(k.earlier & demb[None, :], axis=1, dtype=jnp.int32)
    dem_adm = demb & (j < n_dem_adm)
    occ_new = occ - nev + n_adm
    if k.ls:
        # current-tier victims leave from the bottom (lowest layers first, skipping the pinned)
        cur, ncur = st["cur"], jnp.sum(st["cur"])
        pin_cur = pin & (rDp.astype(jnp.int32) < ncur)
        npc = jnp.sum(pin_cur, dtype=jnp.int32)
        cur = take_victims(cur, jnp.clip(ncur - npc - thresh, 0, nev), (jnp.arange(L) == l) * npc)
        acnt = k.per_layer_count(pf_adm)
        sfx = suffix(acnt)                       # entries landing above a current expert of layer m
        cur2 = cur + acnt
        # a prefetch's place among its layer's batch members (issue order = arrival order)
        w = layer_place(k, st, demb, dem_q, loc, l)
        r_pf = per_id(suffix(cur2) - cur2 + acnt - 1) - w          # top of its layer's block
        r_keep = r + jnp.where(r < ncur, per_id(sfx), n_pf_adm)
        r2 = jnp.where(r >= G_, r, jnp.where(gone, G_, r_keep)).astype(rdt)
        r2 = jnp.where(pf_adm, r_pf, r2).astype(rdt)
        # pinned: past the victims below them, under the entries above; demanded copies arrive
        # unmarked (key -1): the bottom, ascending id lowest
        newP = rDp - jnp.clip(ev_pos - thresh, 0, nev) + jnp.where(pin_cur, sfx[l], n_pf_adm)
        newA = occ_new - 1 - j
        st = dict(st, cur=cur2, done=st["done"] + k.per_layer_count(inb))
    else:
        r2 = jnp.where(r >= G_, r, jnp.where(gone, G_, r + n_adm.astype(rdt))).astype(rdt)
        r2 = jnp.where(pf_adm, (n_pf_adm - 1 - o).astype(rdt), r2)
        # pinned hits below R* move up past the victims; demanded arrivals: ascending id, under the prefetches
        newP = rDp + n_adm - jnp.clip(ev_pos - thresh, 0, nev)
        newA = n_pf_adm + n_dem_adm - 1 - j
    if k.separate:  # pinned residents and the admitted demand copies: two scatters
        r2 = r2.at[jnp.where(pin, pids, N)].set(newP.astype(rdt), mode="drop")
        r2 = r2.at[jnp.where(dem_adm, ids, N)].set(newA.astype(rdt), mode="drop")
    else:  # the pinned are the demand's residents: one scatter at the demand's ids
        r2 = r2.at[loc_drop].set(jnp.where(pin, newP, jnp.where(dem_adm, newA, r2[loc])).astype(rdt), mode="drop")
    pfu = jnp.where(gone, False, pfu) | pf_adm
    qidx = jnp.where(inb, NONE, qidx)
    occ = occ_new
    new = dict(st, rank=r2, occ=occ, pfu=pfu, qidx=qidx, head=head + c, max_occ=jnp.maximum(st["max_occ"], occ))
    return new, (nev, n_dem - n_dem_adm, n_pf, n_pf - n_pf_adm)


def admit_w(k: Layout, st, T, cap, D, dem_q, dem_u, l):
    """:func:`admit` with precision levels (``specmd_jax.core.miss``: byte-capacity eviction):
    ranks are *weighted* (units of the more protected residents), the batch is admitted as
    its longest fitting prefix (demand copies first, ascending id, then prefetches of ``u0``
    units each), and the victims are the fewest least protected evictables freeing enough."""
    L, N, W, A_, G_, rdt, u0 = k.L, k.N, k.W, k.A_, k.G_, k.rdt, k.u0
    per_id, wsum = k.per_id, k.wsum
    r, occ, pfu, qidx, ul = st["rank"], st["occ"], st["pfu"], st["qidx"], st["ul"]
    ids, valid, loc, loc_drop, inD, pids, pvalid = D
    head = st["head"]
    c, inb, demb = batch(k, st, T, valid, dem_q)
    du = jnp.zeros((W,), jnp.int32) if dem_q is None else jnp.where(demb, dem_u, 0)
    n_dem = jnp.sum(demb, dtype=jnp.int32)
    n_pf = c - n_dem
    ploc = jnp.where(pvalid, pids, 0)
    rP = jnp.where(pvalid, r[ploc], A_)
    pin = rP < G_
    pu = jnp.where(pin, ul[ploc], 0)
    free = jnp.maximum(cap - occ, 0)
    room = free + occ - jnp.sum(pu)
    cum = jnp.sum(jnp.where(k.incl, du[None, :], 0), axis=1)            # ascending id, inclusive
    dem_adm = demb & (cum <= room)
    n_dem_adm = jnp.sum(dem_adm, dtype=jnp.int32)
    dem_units = jnp.sum(jnp.where(dem_adm, du, 0))
    n_pf_adm = jnp.where(n_dem_adm == n_dem, jnp.minimum(n_pf, jnp.maximum(room - dem_units, 0) // u0), 0)
    adm_u = dem_units + n_pf_adm * u0
    need = jnp.maximum(0, adm_u - free)
    res = r < G_
    below = occ - r - ul - wsum(rP, pu, r, True)     # evictable units less protected than x
    gone = res & ~inD & (below < need)
    freed = jnp.sum(jnp.where(gone, ul, 0))
    nev = jnp.sum(gone, dtype=jnp.int32)
    below_p = occ - rP - pu - jnp.sum(jnp.where(rP[None, :] > rP[:, None], pu[None, :], 0), axis=1)
    victims_above = jnp.maximum(0, freed - below_p)
    o = arrival_order(k, st, demb, dem_q)
    pf_adm = inb & ~own_mask(k, inD, ids, demb) & (o < n_pf_adm)
    if k.ls:
        # the current tier's blocks hold units; its victims leave from the bottom (lowest
        # layers first, skipping the pinned), the rest of the freed units were stale
        cur, ncur = st["cur"], jnp.sum(st["cur"])
        pin_cur = pin & (rP < ncur)
        pcu = jnp.sum(jnp.where(pin_cur, pu, 0))
        stale_ev = occ - ncur - jnp.sum(jnp.where(pin & ~pin_cur, pu, 0))
        cur = take_victims(cur, jnp.maximum(freed - stale_ev, 0), (jnp.arange(L) == l) * pcu)
        au = k.per_layer_count(pf_adm) * u0
        sfx = suffix(au)
        cur2 = cur + au
        w = layer_place(k, st, demb, dem_q, loc, l)
        r2 = jnp.where(~res, r, jnp.where(gone, G_, r + jnp.where(r < ncur, per_id(sfx), n_pf_adm * u0)))
        r2 = jnp.where(pf_adm, per_id(suffix(cur2) - cur2 + au - u0) - w * u0, r2)
        newP = rP - victims_above + jnp.where(pin_cur, sfx[l], n_pf_adm * u0)
        newA = occ - freed + adm_u - cum                  # unmarked: the bottom, ascending id lowest
        st = dict(st, cur=cur2, done=st["done"] + k.per_layer_count(inb))
    elif k.lhu:
        # key (top-level uses, last use, id): arrivals (0 uses, newest) enter right under the
        # surviving residents with >= 1 use, which keep their ranks; the 0-use ones go under them
        hp = st["hp"]
        zero = hp == 0
        P = jnp.sum(jnp.where(res & ~gone & ~zero, ul, 0))
        r2 = jnp.where(~res, r, jnp.where(gone, G_, r + jnp.where(zero, adm_u, 0)))
        r2 = jnp.where(pf_adm, P + (n_pf_adm - 1 - o) * u0, r2)
        newP = rP - victims_above + jnp.where(hp[ploc] == 0, adm_u, 0)
        newA = P + n_pf_adm * u0 + jnp.sum(jnp.where(k.later & dem_adm[None, :], du[None, :], 0), axis=1)
        st = dict(st, hp=jnp.where(pf_adm, 0, hp).at[jnp.where(dem_adm, ids, N)].set(0, mode="drop"))
    else:
        r2 = jnp.where(~res, r, jnp.where(gone, G_, r + adm_u))
        r2 = jnp.where(pf_adm, (n_pf_adm - 1 - o) * u0, r2)
        newP = rP - victims_above + adm_u
        newA = n_pf_adm * u0 + jnp.sum(jnp.where(k.later & dem_adm[None, :], du[None, :], 0), axis=1)
    r2 = r2.at[jnp.where(pin, pids, N)].set(newP, mode="drop")
    r2 = r2.at[jnp.where(dem_adm, ids, N)].set(newA, mode="drop")
    ul2 = jnp.where(pf_adm, u0, ul).at[jnp.where(dem_adm, ids, N)].set(du, mode="drop")
    occ_new = occ - freed + adm_u
    new = dict(st, rank=r2.astype(rdt), ul=ul2, occ=occ_new, pfu=jnp.where(gone, False, pfu) | pf_adm,
               qidx=jnp.where(inb, NONE, qidx), head=head + c, max_occ=jnp.maximum(st["max_occ"], occ_new))
    return new, (nev, n_dem - n_dem_adm, n_pf, n_pf - n_pf_adm)
