"""JAX engine with instantaneous next-layer prefetch (``lru``, ``ls``, ``fifo``; global pool).

The kernel twin of :func:`specmd_jax.reference.simulate_timed` with ``instant_prefetch=True``: after a
visit's demand is served, its proposals (shared by all configurations) are inserted at once, with
the visit's demand pinned. The copy engine then only ever carries a visit's own demand misses,
so each visit stalls exactly ``misses x transfer`` and every time of the replay is a linear
function of the per-pass miss counts: the runner records those and the host evaluates any
number of hardware profiles without re-running (:mod:`specmd_jax.run.instant`, :func:`specmd_jax.core.clock.pass_times`).

State and tricks are the demand-only engine's (contiguous protection ranks, "evicted in this
pass" sentinel; see :mod:`specmd_jax.kernels.demand`), plus:

* the victims of a batch are the non-pinned residents ranked at or above
  ``R* = thresh + #{pinned with evictable position <= thresh}`` (one compare per element);
* Least-Stale's *current* tier is always the top ``ncur`` ranks (it is more protected than every
  stale expert), so "is current" is ``rank < ncur``: a visit moves only its non-current demand
  to the top (an expert prefetched earlier in the pass keeps its place, as its key says), a
  resident stale proposal is re-marked and new prefetches enter the current tier. Inside the
  tier the order is (layer, entry), so each layer's group is a contiguous block and ``cur[l]``
  (per-layer counts) places an entering expert at the top of its layer's block; an existing
  current expert moves down by the number of entries at or above its layer (a gather of a [L]
  table by the expert's static layer). Victims leave the tier from the bottom, lowest layers
  first. Exact for any lookahead depth.
* ``pfu`` marks prefetched experts not yet demanded (for *useful*; *wasted* is derived).

**Execution readings** (:class:`specmd_jax.core.timing.Reading`; static in :class:`PfSpec`, one
program each; the pieces are :mod:`specmd_jax.kernels.reading`'s, shared with the asynchronous kernel). A scan step is a *turn* (:mod:`specmd_jax.core.turns`): a whole visit, or one expert
of it in router order (``execution="expert"``: demand width 1, and the visit's proposals sit on
one of its turns, whose batch runs under a ``lax.cond`` on the shared ``PfVisit.issue`` flag so
the other turns skip it: :func:`~specmd_jax.kernels.reading.on_issuing_turn`). A turn classifies its demand (and drops), then

* ``issue="at_router"``: admits its proposals as an instant batch *before* its demand arrives
  (a proposal whose copy the turn just queued is ``pf_pending``, not issued); the demand's
  eviction counts are then taken against the occupancy after that batch. Least-Stale uses the
  per-layer blocks (layer ``l + 1``'s proposals sit above layer ``l``'s block when ``l``'s
  demand is used, so "the demand goes on top" no longer holds);
* admits its fetched misses and uses its demand (one closed-form pass, as above);
* ``issue="after_use"``: admits its proposals after the use (today's order).

The pinned set of every batch is the turn's executed demand, or (``pin_width > 0``: execution
``expert`` with ``pin="visit"``) the resident members of the visit's whole demand
``PfVisit.pin``: a pinned expert that is not used keeps its place, moved only by the victims
above it and the experts placed above it (a ``[pin_width]`` computation scattered at the shared
pin ids), and the victims' threshold ``R*`` counts the pinned ranks. Today's reading (visit,
after_use, the turn pinned) emits exactly the program it always did.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from specmd_jax.kernels.demand import NCOUNT
from specmd_jax.kernels.instant_state import PfLayout, PfParams, PfSpec, PfState, PfVisit, pf_counter_names
from specmd_jax.kernels.proposals import admit_proposals
from specmd_jax.kernels.ranks import (ABSENT, GONE, above, classify_demand, count_lower, count_lower_than, count_lt,
                                      take_victims, victim_threshold)
from specmd_jax.kernels.reading import PinSet, check, on_issuing_turn, proposals_first, visit_pins
from specmd_jax.policies import served_by

PF_POLICIES = served_by("instant")
__all__ = ["PF_POLICIES", "PfParams", "PfSpec", "PfState", "PfVisit", "make_pf_policy", "pf_counter_names"]


def make_pf_policy(spec: PfSpec):
    """``(init(params) -> PfState, step(state, visit, params) -> (state, misses))``."""
    if spec.policy not in PF_POLICIES:
        raise ValueError(f"the prefetch engine supports {PF_POLICIES}; {spec.policy!r} runs in the "
                         "reference only (specmd_jax.reference.simulate_timed)")
    check(spec.execution, spec.issue, spec.pin_width)
    k = PfLayout(spec)
    L, W, N = k.L, k.W, k.N
    ls, fifo, deep, vpin, general = k.ls, k.fifo, k.deep, k.vpin, k.general
    pre = proposals_first(spec.issue)
    earlier, onehot = k.earlier, k.onehot

    def init(params: PfParams) -> PfState:
        del params
        return PfState(rank=jnp.full((N,), ABSENT, jnp.int16), occ=jnp.zeros((), jnp.int32),
                       cur=jnp.zeros((L if deep else 1,), jnp.int32), pfu=jnp.zeros((N,), bool),
                       per_layer=jnp.zeros((NCOUNT, L), jnp.int32), pf=jnp.zeros((k.npf, L), jnp.int32),
                       max_occ=jnp.zeros((), jnp.int32))

    def issue_batch(r, occ, cur, pfu, max_occ, visit, cap, l, pins, block):
        """The turn's proposal batch, on the turns that carry proposals."""
        return on_issuing_turn(k.sparse, visit.issue,
                               lambda c: admit_proposals(k, c, visit, cap, l, pins, block),
                               (r, occ, cur, pfu, max_occ), 4)

    def step(state: PfState, visit: PfVisit, params: PfParams):
        l = visit.layer
        cap = params.capacity.astype(jnp.int32)
        r = lax.cond(visit.new_pass, lambda a: jnp.where(a == GONE, ABSENT, a).astype(jnp.int16), lambda a: a,
                     state.rank)
        cur = jnp.where(visit.new_pass, 0, state.cur)
        ncur = jnp.sum(cur)
        occ = state.occ
        ids = visit.ids
        demanded = ids >= 0
        loc = jnp.where(demanded, ids, 0)
        loc_drop = jnp.where(demanded, ids, N)
        # ---------------------------------------------------------------- the turn's demand
        # miss policy first (drop_priority; fetch = a threshold no rank reaches): dropped experts
        # are counted as misses but neither fetched, pinned nor used
        full = classify_demand(r, loc, demanded, occ, cap)
        if spec.full_demand:
            drop, valid = jnp.zeros_like(demanded), demanded
            inD = jnp.zeros((N,), bool).at[loc_drop].set(True, mode="drop")
            r0D, rD, resD, missD, nd, nh, nm, coll, m, nev, na = full
        else:
            drop = full.missD & (visit.rank >= params.drop_rank)
            valid = demanded & ~drop
            inD = jnp.zeros((N,), bool).at[jnp.where(valid, ids, N)].set(True, mode="drop")
            r0D, rD, resD, missD, nd, nh, nm, coll, m, nev, na = classify_demand(r, loc, valid, occ, cap)
        useful = jnp.sum(resD & state.pfu[loc], dtype=jnp.int32)
        pfu, max_occ = state.pfu, state.max_occ
        # the pinned set of the turn's batches: its executed demand, or the visit's whole demand
        pins = visit_pins(visit.pin, N) if vpin else PinSet(valid, loc, loc_drop, inD)
        pc_pre = None
        if pre:  # the router's proposals land before the demand copies (those are pf_pending)
            pend = jnp.any(visit.pf_ids[:, None] == jnp.where(missD, ids, -2)[None, :], axis=1)
            (r, occ, cur, pfu, max_occ), pc_pre = issue_batch(r, occ, cur, pfu, max_occ, visit, cap, l, pins, pend)
            pc_pre = pc_pre + (jnp.sum(pend & (visit.pf_ids >= 0), dtype=jnp.int32),)
            ncur = jnp.sum(cur)
            rD = jnp.where(valid, r[loc], ABSENT).astype(jnp.int16)   # hits stay (pinned), misses stay out
        if vpin:
            rPn = pins.ranks(r, ABSENT, jnp.int16)
            pn = rPn < GONE
        if general:  # the demand batch's counts against the pinned set and the current occupancy
            free = cap - occ
            m = occ - (jnp.sum(pn, dtype=jnp.int32) if vpin else nh)
            nev = jnp.clip(nm - free, 0, m)
            na = jnp.minimum(nm, free + nev)
        cm = jnp.sum(earlier & missD[None, :], axis=1, dtype=jnp.int32)
        admitD = missD & (cm < na)
        thresh = m - nev
        if vpin:  # victims' threshold and the victims above each pinned expert count the pin set
            rstar, ev_posPn = victim_threshold(rPn, pn, thresh)
            ev_posD = rD.astype(jnp.int32) - count_lower_than(rPn, pn, rD)
            nv_aboveP = jnp.clip(ev_posPn - thresh, 0, nev)
        else:
            rstar, ev_posD = victim_threshold(rD, resD, thresh)
        gone = (r >= rstar) & (r < GONE) & ~pins.mask
        nv_aboveD = jnp.clip(ev_posD - thresh, 0, nev)
        if fifo:
            r_c = r + na.astype(jnp.int16)
            rD_new = jnp.where(resD, rD - nv_aboveD + na, na - 1 - cm)
            if vpin:
                rP_new = rPn - nv_aboveP + na
            dp = resD | admitD
        else:
            curD = resD & (rD.astype(jnp.int32) < ncur) if ls else jnp.zeros((W,), bool)
            moved = resD & ~curD
            M = moved | admitD
            nM = jnp.sum(M, dtype=jnp.int32)
            ncd = jnp.sum(curD, dtype=jnp.int32)
            if vpin and ls:  # every pinned current expert (layer l) stays
                ncd = jnp.sum(pn & (rPn.astype(jnp.int32) < ncur), dtype=jnp.int32)
            cv = jnp.clip(ncur - ncd - thresh, 0, nev)             # current-tier victims
            top = jnp.zeros((), jnp.int32)
            if deep:  # the moved demand enters the current tier at the top of layer l's group
                cur = take_victims(cur, cv, onehot(l) * ncd)
                top = above(cur, l)
            rr = r - count_lt(jnp.where(moved, rD, ABSENT).astype(jnp.int16), r)
            rD_cur = rD - nv_aboveD - count_lower(rD, moved)
            if vpin:  # a pinned expert not used keeps its place: up by victims and moved above it
                rP_cur = rPn - nv_aboveP - count_lower_than(rD, moved, rPn)
            if deep:
                r_c = rr + jnp.where(rr >= top, nM, 0).astype(jnp.int16)
                rD_cur = rD_cur + jnp.where(rD_cur >= top, nM, 0)
                if vpin:
                    rP_cur = rP_cur + jnp.where(rP_cur >= top, nM, 0)
            else:  # nothing current outranks the visit's layer: the moved demand goes on top
                r_c = rr + nM.astype(jnp.int16)
                rD_cur = rD_cur + nM
                if vpin:
                    rP_cur = rP_cur + nM
            rD_moved = top + jnp.sum(M[None, :] & (ids[None, :] > ids[:, None]), axis=1, dtype=jnp.int32)
            rD_new = jnp.where(M, rD_moved, rD_cur)
            if vpin:
                rP_new = rP_cur
            dp = resD | admitD
            if deep:
                cur = cur + onehot(l) * nM
            elif ls:
                cur = cur - cv + nM
            ncur = jnp.sum(cur)
        r = jnp.where(r >= GONE, r, jnp.where(gone, GONE, r_c)).astype(jnp.int16)
        if vpin:
            r = r.at[pins.scat].set(jnp.where(pn, rP_new, rPn).astype(jnp.int16), mode="drop")
        if general:  # what is not used keeps its (possibly just updated) rank and pf mark
            r = r.at[loc_drop].set(jnp.where(dp, rD_new.astype(jnp.int16), r[loc]), mode="drop")
            pfu = jnp.where(gone, False, pfu)
            pfu = pfu.at[loc_drop].set(jnp.where(valid, False, pfu[loc]), mode="drop")
        else:
            r = r.at[loc_drop].set(jnp.where(dp, rD_new, r0D).astype(jnp.int16), mode="drop")
            pfu = jnp.where(gone, False, state.pfu).at[loc_drop].set(False, mode="drop")
        occ = occ - nev + na
        max_occ = jnp.maximum(max_occ, occ)
        # ---------------------------------------------------------------- instant prefetch after the use
        if pre:  # the batch ran before the demand
            pc = pc_pre
        else:
            (r, occ, cur, pfu, max_occ), pc = issue_batch(r, occ, cur, pfu, max_occ, visit, cap, l, pins, None)
        a, n_res, n_adm, nev2 = pc[:4]
        info = jnp.stack([full.nd, nh, full.nm, full.coll, nev + nev2, nm - na]).astype(jnp.int32)
        pinfo = jnp.stack([a, n_res, a - n_adm, useful, jnp.sum(drop, dtype=jnp.int32),
                           jnp.sum(jnp.where(drop, visit.pairs, 0)), jnp.sum(jnp.where(drop, visit.units, 0)),
                           *pc[4:]]).astype(jnp.int32)
        new = PfState(rank=r, occ=occ, cur=cur, pfu=pfu, per_layer=state.per_layer.at[:, l].add(info),
                      pf=state.pf.at[:, l].add(pinfo), max_occ=max_occ)
        return new, nm

    return init, step
