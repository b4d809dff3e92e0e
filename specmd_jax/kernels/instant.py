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
program each). A scan step is a *turn* (:mod:`specmd_jax.core.turns`): a whole visit, or one expert
of it in router order (``execution="expert"``: demand width 1, and the visit's proposals sit on
one of its turns, whose batch runs under a ``lax.cond`` on the shared ``PfVisit.issue`` flag so
the other turns skip it). A turn classifies its demand (and drops), then

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

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.timing import EXECUTIONS, PREFETCH_ISSUES
from specmd_jax.core.counters import INSTANT_COUNTERS
from specmd_jax.kernels.demand import NCOUNT
from specmd_jax.kernels.ranks import (ABSENT, GONE, above, classify_demand, count_lower, count_lower_than, count_lt,
                                        suffix, victim_threshold, take_victims)
from specmd_jax.kernels.pytree import pytree_dataclass
from specmd_jax.policies import served_by

PF_POLICIES = served_by("instant")


@pytree_dataclass
class PfParams:
    """Numeric parameters of one configuration (vmappable): ``capacity`` slots and ``drop_rank``,
    the ``drop_priority`` threshold (a missing expert whose best router rank in the visit is
    ``>= drop_rank`` is dropped; :mod:`specmd_jax.core.miss`; ``fetch``: a threshold no rank reaches)."""

    capacity: Any
    drop_rank: Any


@pytree_dataclass
class PfState:
    """Per-configuration state.

    Attributes:
        rank: int16[N] protection rank (``GONE``/``ABSENT`` sentinels), as in :mod:`specmd_jax.kernels.demand`.
        occ: int32[] occupancy.
        cur: int32[L] Least-Stale's current tier per layer (it fills the top ``sum(cur)`` ranks,
            layer by layer from the last layer down); zeros for other policies.
        pfu: bool[N] resident, prefetched and not demanded since.
        per_layer: int32[6, L] ``engine.DEMAND_COUNTERS`` by visit layer.
        pf: int32[len(pf_counter_names(spec)), L] :func:`pf_counter_names` by visit layer.
        max_occ: int32[].
    """

    rank: Any
    occ: Any
    cur: Any
    pfu: Any
    per_layer: Any
    pf: Any
    max_occ: Any


@pytree_dataclass
class PfVisit:
    """One turn's inputs (shared by all configurations; a turn is a whole visit under
    ``execution="visit"``): ``ids`` int32[W] demand (ascending, -1 padded), ``pf_ids`` int32[Q]
    proposals in issue order (-1 padded; -1 everywhere on a turn that issues nothing)."""

    layer: Any
    new_pass: Any
    ids: Any
    pf_ids: Any
    rank: Any   # int32[W] best router rank of each demanded id in the visit
    pairs: Any  # int32[W] tokens routing it
    units: Any  # int32[W] its summed quantised router weight
    pin: Any = None    # int32[pin_width] the visit's whole demand (PfSpec.pin_width > 0), else None
    issue: Any = None  # bool[]: this turn carries the visit's proposals (execution="expert"), else None


class PfSpec(NamedTuple):
    """Static structure of a compiled instant-prefetch engine (hashable; one compile per spec).

    The execution reading is static: ``execution``, ``issue`` and the pin (``pin_width``) each
    select a different program (module docstring); the defaults are today's reading.
    """

    policy: str
    num_layers: int
    num_experts: int
    width: int
    prefetch_width: int
    depth: int = 1  # plan lookahead; > 1 needs Least-Stale's per-layer placement (slower)
    full_demand: bool = True  # no drop thresholds: the executed set is the demand (one classification)
    execution: str = "visit"  # "expert": turns of one expert; proposals on one turn (PfVisit.issue)
    issue: str = "after_use"  # "at_router": a turn admits its proposals before its demand arrives
    pin_width: int = 0  # 0: pinned = the turn's executed demand; > 0: width of PfVisit.pin (expert, pin=visit)


def pf_counter_names(spec: PfSpec) -> tuple:
    """Rows of :attr:`PfState.pf` under ``spec``: :data:`INSTANT_COUNTERS`, plus ``pf_pending``
    when proposals are issued at the router (a proposal whose demand copy the turn just queued)."""
    return INSTANT_COUNTERS + (("pf_pending",) if spec.issue == "at_router" else ())


def make_pf_policy(spec: PfSpec):
    """``(init(params) -> PfState, step(state, visit, params) -> (state, misses))``."""
    if spec.policy not in PF_POLICIES:
        raise ValueError(f"the prefetch engine supports {PF_POLICIES}; {spec.policy!r} runs in the "
                         "reference only (specmd_jax.reference.simulate_timed)")
    if spec.execution not in EXECUTIONS or spec.issue not in PREFETCH_ISSUES:
        raise ValueError(f"execution must be one of {EXECUTIONS} and issue one of {PREFETCH_ISSUES}, got "
                         f"{spec.execution!r}, {spec.issue!r}")
    if spec.pin_width and spec.execution != "expert":
        raise ValueError("a visit pin set (pin_width > 0) is a reading of execution='expert' only")
    L, E, W, Q = spec.num_layers, spec.num_experts, spec.width, spec.prefetch_width
    N = L * E
    ls, fifo = spec.policy == "ls", spec.policy == "fifo"
    pre = spec.issue == "at_router"      # proposals admitted before the turn's demand arrives
    vpin = spec.pin_width > 0            # the visit's whole demand is pinned (not only the turn's)
    sparse = spec.execution == "expert"  # proposals on one turn of a visit: the batch under a cond
    general = pre or vpin                # today's reading is the program it always was
    # with a one-layer lookahead issued after the use every entry lands in the highest current
    # layer, i.e. on top of the whole tier, so the per-layer tables reduce to scalars (saves two
    # [N] passes per visit). At the router, layer l + 1's proposals enter above layer l's block
    # before l's demand is used: per-layer blocks.
    deep = ls and (spec.depth > 1 or pre)
    NPF = len(pf_counter_names(spec))
    earlier = jnp.arange(W)[None, :] < jnp.arange(W)[:, None]     # [W, W]: j' before j
    earlierQ = jnp.arange(Q)[None, :] < jnp.arange(Q)[:, None]    # [Q, Q]
    laterQ = jnp.arange(Q)[None, :] > jnp.arange(Q)[:, None]
    def per_id(table):
        """[L] per-layer values -> [N] per id (ids are layer-major): a broadcast, not a gather
        (a config-dependent gather of N elements is slow on XLA:CPU)."""
        return jnp.broadcast_to(table[:, None], (L, E)).reshape(N)

    def onehot(l):
        return (jnp.arange(L) == l).astype(jnp.int32)

    def init(params: PfParams) -> PfState:
        del params
        return PfState(rank=jnp.full((N,), ABSENT, jnp.int16), occ=jnp.zeros((), jnp.int32),
                       cur=jnp.zeros((L if deep else 1,), jnp.int32), pfu=jnp.zeros((N,), bool),
                       per_layer=jnp.zeros((NCOUNT, L), jnp.int32), pf=jnp.zeros((NPF, L), jnp.int32),
                       max_occ=jnp.zeros((), jnp.int32))

    def prefetch(r, occ, cur, ncur, pfu, max_occ, visit, cap, l, pins, block):
        """Admit the turn's proposals as one instant arrival batch: resident ones are counted (and
        re-marked current by Least-Stale), the others are admitted in issue order, evicting the
        lowest-ranked residents outside the pinned set ``pins`` = (ranks of the pin ids given the
        ranks, shared scatter index, shared gather index, [N] membership mask). ``block``: bool[Q]
        proposals not issued (their copy is queued), or None. Returns the updated
        (r, occ, cur, pfu, max_occ) and (issued, resident, admitted, evictions)."""
        pin_ranks, pscat, pgat, in_pin = pins
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
        rDp = pin_ranks(r)
        pin = rDp < GONE
        npin = jnp.sum(pin, dtype=jnp.int32)
        free2 = cap - occ
        m2 = occ - npin
        n_adm = jnp.minimum(a, jnp.maximum(free2, 0) + m2)
        nev2 = jnp.maximum(0, n_adm - jnp.maximum(free2, 0))
        thresh2 = m2 - nev2
        rstar2, ev_posP = victim_threshold(rDp, pin, thresh2)
        gone2 = (r >= rstar2) & (r < GONE) & ~in_pin
        ca = jnp.sum(earlierQ & A[None, :], axis=1, dtype=jnp.int32)
        adm = A & (ca < n_adm)
        if deep:  # new prefetches: current, top of their layer's group (later proposals higher)
            npc = jnp.sum(pin & (rDp.astype(jnp.int32) < ncur), dtype=jnp.int32)
            cur = take_victims(cur, jnp.clip(ncur - npc - thresh2, 0, nev2), onehot(l) * npc)
            Acnt = jnp.zeros((L,), jnp.int32).at[pl].add(adm.astype(jnp.int32))
            up = jnp.where(r < ncur, per_id(suffix(Acnt)), n_adm)
            # a pinned current expert (layer l) moves down by the entries at or above layer l; after
            # the use every pinned expert is current, at the router a stale one moves down by all
            up_pin = jnp.where(rDp < ncur, suffix(Acnt)[l], n_adm) if pre else suffix(Acnt)[l]
            r_pin = rDp - jnp.clip(ev_posP - thresh2, 0, nev2) + up_pin
            cur = cur + Acnt
            r_adm = above(cur, pl) + jnp.sum(laterQ & sameQ & adm[None, :], axis=1, dtype=jnp.int32)
            ncur = jnp.sum(cur)
        else:
            if ls:  # one-layer lookahead: new prefetches go on top of everything
                npc = jnp.sum(pin & (rDp.astype(jnp.int32) < ncur), dtype=jnp.int32)
                cur = cur - jnp.clip(ncur - npc - thresh2, 0, nev2) + n_adm
            up = n_adm
            r_pin = rDp + n_adm - jnp.clip(ev_posP - thresh2, 0, nev2)
            r_adm = n_adm - 1 - ca
        r = jnp.where(r >= GONE, r, jnp.where(gone2, GONE, r + up)).astype(jnp.int16)
        r = r.at[pscat].set(jnp.where(pin, r_pin.astype(jnp.int16), r[pgat]), mode="drop")
        r = r.at[pdrop].set(jnp.where(adm, r_adm.astype(jnp.int16), r[pidx]), mode="drop")
        pfu = jnp.where(gone2, False, pfu)
        pfu = pfu.at[pdrop].set(adm | pfu[pidx], mode="drop")
        occ = occ - nev2 + n_adm
        max_occ = jnp.maximum(max_occ, occ)
        return (r, occ, cur, pfu, max_occ), (a, n_res, n_adm, nev2)

    def issue_batch(r, occ, cur, ncur, pfu, max_occ, visit, cap, l, pins, block):
        """:func:`prefetch` on the turns that carry proposals: every turn under ``visit``, and
        under ``expert`` a real branch on the shared flag (the other turns skip the batch)."""
        if not sparse:
            return prefetch(r, occ, cur, ncur, pfu, max_occ, visit, cap, l, pins, block)

        def run(c):
            out, cnt = prefetch(*c[:3], jnp.sum(c[2]), *c[3:], visit, cap, l, pins, block)
            return out, jnp.stack(cnt).astype(jnp.int32)

        out, cnt = lax.cond(visit.issue, run, lambda c: (c, jnp.zeros((4,), jnp.int32)),
                            (r, occ, cur, pfu, max_occ))
        return out, tuple(cnt[i] for i in range(4))

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
        if vpin:
            pval = visit.pin >= 0
            ploc = jnp.where(pval, visit.pin, 0)
            pscat = jnp.where(pval, visit.pin, N)
            in_pin = jnp.zeros((N,), bool).at[pscat].set(True, mode="drop")
            pins = (lambda rr: jnp.where(pval, rr[ploc], ABSENT).astype(jnp.int16), pscat, ploc, in_pin)
        else:
            pins = (lambda rr: jnp.where(valid, rr[loc], ABSENT).astype(jnp.int16), loc_drop, loc, inD)
        pc_pre = None
        if pre:  # the router's proposals land before the demand copies (those are pf_pending)
            pend = jnp.any(visit.pf_ids[:, None] == jnp.where(missD, ids, -2)[None, :], axis=1)
            (r, occ, cur, pfu, max_occ), pc_pre = issue_batch(r, occ, cur, ncur, pfu, max_occ, visit, cap, l, pins,
                                                              pend)
            pc_pre = pc_pre + (jnp.sum(pend & (visit.pf_ids >= 0), dtype=jnp.int32),)
            ncur = jnp.sum(cur)
            rD = jnp.where(valid, r[loc], ABSENT).astype(jnp.int16)   # hits stay (pinned), misses stay out
        if vpin:
            rPn = pins[0](r)
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
        gone = (r >= rstar) & (r < GONE) & ~pins[3]
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
            r = r.at[pscat].set(jnp.where(pn, rP_new, rPn).astype(jnp.int16), mode="drop")
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
        if pre:
            pc = pc_pre
        else:
            (r, occ, cur, pfu, max_occ), pc = issue_batch(r, occ, cur, ncur, pfu, max_occ, visit, cap, l, pins, None)
        a, n_res, n_adm, nev2 = pc[:4]
        info = jnp.stack([full.nd, nh, full.nm, full.coll, nev + nev2, nm - na]).astype(jnp.int32)
        pinfo = jnp.stack([a, n_res, a - n_adm, useful, jnp.sum(drop, dtype=jnp.int32),
                           jnp.sum(jnp.where(drop, visit.pairs, 0)), jnp.sum(jnp.where(drop, visit.units, 0)),
                           *pc[4:]]).astype(jnp.int32)
        new = PfState(rank=r, occ=occ, cur=cur, pfu=pfu, per_layer=state.per_layer.at[:, l].add(info),
                      pf=state.pf.at[:, l].add(pinfo), max_occ=max_occ)
        return new, nm

    return init, step
