"""JAX kernel with asynchronous prefetch on a FIFO copy engine (``lru``, ``ls``, ``fifo``, ``lhu``;
global pool), composed from its pieces.

The kernel twin of :func:`specmd_jax.reference.simulate_timed` (``instant_prefetch=False``): copies
complete on one FIFO engine, late prefetches stall, arrivals are admitted in batches with the
visit's demand pinned (semantics: :mod:`specmd_jax.core.timing`). Hardware numbers are per
configuration (vmapped): transfer ticks and compute ticks. One step is one turn
(:mod:`specmd_jax.core.turns`):

1. rebase the clock at a pass start (ticks are relative to the pass start, so int32 ticks
   overflow only if one pass lasts over 2**31 ticks = 214 s; ``ovf`` records it and the runner
   raises);
2. re-route the visit's tokens (cache-aware routing, :mod:`specmd_jax.kernels.reroute`);
3. classify the demand (hit, late = its copy is queued, miss, collision) and apply the miss
   policy: the executed set is what is pinned and used (:mod:`specmd_jax.core.miss`);
4. queue the fetched misses' copies (:mod:`specmd_jax.kernels.queue`) and, at the router, issue
   the proposals (:mod:`specmd_jax.kernels.reading`);
5. admit every copy done when the demand is ready (:mod:`specmd_jax.kernels.admission`), use the
   executed residents (:mod:`specmd_jax.kernels.rerank`), issue the proposals after the use;
6. compute, then admit every copy done by the end of the turn.

State per configuration, dense over the ``N`` expert ids plus a ring of copy completion times
(:class:`~specmd_jax.kernels.async_state.AsyncState`): ``rank`` / ``pfu`` as in
:mod:`specmd_jax.kernels.instant` (contiguous protection ranks; prefetched-unused), the copy
queue (``qidx``, ``ring``, ``head``, ``tail``), the clock ``t`` and the engine's free time
``eng``.

Least-Stale (key: pass it last entered the current tier, layer, entry order; ``semantics``) keeps
the current tier as the top ``sum(cur)`` ranks, one contiguous block per layer, highest layer on
top. What asynchrony adds is that one arrival batch can hold prefetches for several layers,
including layers already executed (late arrivals), and each enters at the top of *its* layer's
block in arrival order: ``lc[x]`` numbers the copies of each layer in issue order (``icnt[L]``
issued, ``done[L]`` arrived per layer), and the engine completes copies in issue order, so a
batch holds a prefix of each layer's pending copies. Demanded copies arrive unmarked (below
every stale expert, as the reference's key -1) and their use moves them to the top of the visit
layer's block; a resident stale proposal is re-marked at issue.

LHU (HOBBIT '24; key: uses at the top level since insertion, last use, id) always runs on
weighted ranks (``hp[x]`` counts the uses): an arrival batch (0 uses, newest) enters directly
under the surviving residents with at least one use, while the 0-use residents move under it;
a use re-files each executed expert by its new count. With one level it is LFU. The other
policies with asynchronous timing run in the reference.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.counters import ASYNC_COUNTERS
from specmd_jax.kernels.admission import admit_batch
from specmd_jax.kernels.async_state import (FIELDS, NONE, AsyncParams, AsyncSpec, AsyncState, AsyncVisit, Layout,
                                            rank_sentinels)
from specmd_jax.kernels.demand import NCOUNT
from specmd_jax.kernels.queue import issue, queue_misses
from specmd_jax.kernels.reading import pin_set, proposals_first, turn_compute, visit_pins
from specmd_jax.kernels.rerank import use
from specmd_jax.kernels.reroute import route
from specmd_jax.policies import served_by

ASYNC_POLICIES = served_by("async")
MISS_KINDS = ("fetch", "fetch_lowest", "fetch_priority", "cascade")
__all__ = ["ASYNC_POLICIES", "AsyncParams", "AsyncSpec", "AsyncState", "AsyncVisit", "make_async_policy",
           "rank_sentinels"]


class Demand(NamedTuple):
    """A turn's demand against one configuration: ids and their indices, ranks, and its classes."""

    ids: Any
    demanded: Any
    loc: Any
    loc_drop: Any
    rD: Any
    hit: Any
    qD: Any        # issue numbers of the demand's queued copies (NONE otherwise)
    late_all: Any  # not resident, its copy queued
    miss_all: Any  # not resident, nothing queued
    nd: Any
    nh: Any
    nl: Any
    nm_all: Any
    coll: Any
    useful: Any


class Executed(NamedTuple):
    """The miss policy's outcome: what is dropped or substituted, what is fetched or waited for,
    and the executed set (``pids`` where ``pvalid``: the demand, or the hits plus substitutes)."""

    drop: Any
    subd: Any
    sub_lev: Any
    late: Any
    miss: Any
    valid: Any
    pids: Any
    pvalid: Any
    inD: Any


def rebase(k: Layout, st, visit):
    """At a pass start: clear "evicted in this pass", and rebase the clock, the ring and the
    engine's free time to the new pass start."""
    G_, A_, rdt = k.G_, k.A_, k.rdt
    shift = jnp.where(visit.new_pass, st["t"], 0)
    st["rank"] = lax.cond(visit.new_pass, lambda a: jnp.where(a == G_, A_, a).astype(rdt), lambda a: a, st["rank"])
    st["ring"] = lax.cond(visit.new_pass, lambda a: a - shift, lambda a: a, st["ring"])
    st["t"] = st["t"] - shift
    if k.ls:
        st["cur"] = jnp.where(visit.new_pass, 0, st["cur"])
    st["eng"] = st["eng"] - shift
    return st


def classify(k: Layout, st, ids) -> Demand:
    """Hits, late copies, misses and collisions of the demand ``ids`` (-1 padded)."""
    N, A_, G_, rdt = k.N, k.A_, k.G_, k.rdt
    demanded = ids >= 0
    loc = jnp.where(demanded, ids, 0)
    r = st["rank"]
    rD = jnp.where(demanded, r[loc], A_).astype(rdt)
    hit = rD < G_
    qD = jnp.where(demanded, st["qidx"][loc], NONE)
    late_all = demanded & ~hit & (qD != NONE)
    miss_all = demanded & ~hit & ~late_all
    nd = jnp.sum(demanded, dtype=jnp.int32)
    nh = jnp.sum(hit, dtype=jnp.int32)
    nl = jnp.sum(late_all, dtype=jnp.int32)
    return Demand(ids, demanded, loc, jnp.where(demanded, ids, N), rD, hit, qD, late_all, miss_all, nd, nh, nl,
                  nd - nh - nl, jnp.sum(miss_all & (rD == G_), dtype=jnp.int32),
                  jnp.sum(hit & st["pfu"][loc], dtype=jnp.int32) + nl)


def executed(k: Layout, st, visit, params, d: Demand) -> Executed:
    """The miss policy (:mod:`specmd_jax.core.miss`): ``substitute`` replaces each missing expert
    by the resident expert of the visit's layer, not demanded, with the closest running gate
    score (lowest id on ties; a ``[W, E]`` distance table shared by all configurations, masked by
    this configuration's residents); otherwise a missing expert ranked ``>= drop_rank`` is
    dropped, and the rest is fetched (or waited for)."""
    N, E, W = k.N, k.E, k.W
    l, ids = visit.layer, d.ids
    missing = d.late_all | d.miss_all
    if k.sub:
        blk = lax.dynamic_slice_in_dim(st["rank"], l * E, E)
        dem_blk = lax.dynamic_slice_in_dim(jnp.zeros((N,), bool).at[d.loc_drop].set(True, mode="drop"), l * E, E)
        cand = (blk < k.G_) & ~dem_blk
        own = visit.lscore[jnp.where(d.demanded, ids - l * E, 0)]
        dist = jnp.abs(visit.lscore[None, :] - own[:, None])
        best = jnp.argmin(jnp.where(cand[None, :], dist, jnp.iinfo(jnp.int32).max), axis=1).astype(jnp.int32)
        has = jnp.any(cand)
        subd = missing & has
        drop = missing & ~has
        sid = jnp.where(subd, l * E + best, -1)
        first = ~jnp.any(k.earlier & (sid[None, :] == sid[:, None]) & subd[None, :], axis=1)
        sub_ok = subd & first                                  # distinct substitutes
        sub_lev = k.level_of(st["ul"][jnp.where(subd, sid, 0)]) if k.mixed else jnp.zeros((W,), jnp.int32)
        late, miss = jnp.zeros_like(d.late_all), jnp.zeros_like(d.miss_all)
        valid = d.hit
        pids = jnp.concatenate([ids, sid])
        pvalid = jnp.concatenate([valid, sub_ok])
    else:
        drop = jnp.zeros_like(missing) if k.spec.full_demand else missing & (visit.rank >= params.drop_rank)
        subd = jnp.zeros_like(drop)
        sub_lev = jnp.zeros((W,), jnp.int32)
        late, miss = d.late_all & ~drop, d.miss_all & ~drop
        valid = d.demanded & ~drop
        pids, pvalid = ids, valid
    if k.spec.full_demand and not k.sub:  # the demand's mask, the same for every configuration
        inD = jnp.zeros((N,), bool).at[d.loc_drop].set(True, mode="drop")
    else:
        inD = jnp.zeros((N,), bool).at[jnp.where(pvalid, pids, N)].set(True, mode="drop")
    return Executed(drop, subd, sub_lev, late, miss, valid, pids, pvalid, inD)


def miss_levels(k: Layout, visit, params, nd):
    """int32[W] the precision level each fetched miss is copied at (:mod:`specmd_jax.core.miss`;
    waited-for copies are prefetches: level 0)."""
    W, NL = k.W, k.NL
    if k.kind == "fetch_lowest":
        return jnp.full((W,), NL - 1, jnp.int32)
    if k.kind == "fetch_priority":  # a percentile of the visit's demand (its turns share it)
        cut = params.pct_milli * (nd if visit.vdem is None else visit.vdem) // 100000
        return jnp.where(visit.spos < cut, jnp.minimum(params.degrade, NL - 1), 0).astype(jnp.int32)
    if k.kind == "cascade":
        return jnp.minimum(jnp.sum(visit.score[:, None] < params.cas_th[None, :], axis=1, dtype=jnp.int32), NL - 1)
    return jnp.zeros((W,), jnp.int32)


def make_async_policy(spec: AsyncSpec):
    """``(init(params) -> AsyncState, step(state, visit, params, tabs) -> (state, t_end))``."""
    if spec.policy not in ASYNC_POLICIES:
        raise ValueError(f"the asynchronous engine supports {ASYNC_POLICIES}; {spec.policy!r} runs in the "
                         "reference (specmd_jax.reference.simulate_timed)")
    if spec.miss_kind not in MISS_KINDS:
        raise ValueError(f"unknown miss kind {spec.miss_kind!r}")
    if spec.issue not in ("after_use", "at_router"):
        raise ValueError(f"unknown prefetch issue point {spec.issue!r}")
    if spec.pin_width and (spec.substitute or spec.routing):
        raise ValueError("a separate pinned set (execution='expert', pin='visit') goes with neither substitute nor "
                         "cache-aware routing")
    k = Layout(spec)
    L, N, W = k.L, k.N, k.W

    def init(params: AsyncParams) -> AsyncState:
        del params
        z = jnp.zeros((), jnp.int32)
        ls, mixed = k.ls, k.mixed
        return AsyncState(rank=jnp.full((N,), k.A_, k.rdt), occ=z, pfu=jnp.zeros((N,), bool),
                          qidx=jnp.full((N,), NONE, jnp.int32), ring=jnp.zeros((N,), jnp.int32), head=z, tail=z,
                          t=z, eng=z, per_layer=jnp.zeros((NCOUNT, L), jnp.int32),
                          pf=jnp.zeros((len(ASYNC_COUNTERS), L), jnp.int32), max_occ=z,
                          ovf=jnp.zeros((), bool), cur=jnp.zeros((L if ls else 0,), jnp.int32),
                          lc=jnp.zeros((N if ls else 0,), jnp.int32), icnt=jnp.zeros((L if ls else 0,), jnp.int32),
                          done=jnp.zeros((L if ls else 0,), jnp.int32), ul=jnp.zeros((N if mixed else 0,), jnp.int32),
                          hp=jnp.zeros((N if k.lhu else 0,), jnp.int32))

    def step(state: AsyncState, visit: AsyncVisit, params: AsyncParams, tabs=None):
        """One turn (the module docstring's six stages)."""
        st = rebase(k, {f: getattr(state, f) for f in FIELDS}, visit)
        l, t = visit.layer, st["t"]
        cap = params.capacity.astype(jnp.int32)
        xfer = params.xfer.astype(jnp.int32)
        if spec.routing:
            visit, npairs, rerouted = route(k, visit, st["rank"], params.lam, tabs)
        else:
            npairs, rerouted = visit.pairs, (0, 0, 0)
        d = classify(k, st, visit.ids)
        x = executed(k, st, visit, params, d)
        # the pinned set of every batch: the executed set, or the visit's whole demand
        pins = visit_pins(visit.pins, N) if spec.pin_width else pin_set(x.pids, x.pvalid, N, x.inD)
        D = (d.ids, x.valid, d.loc, d.loc_drop, pins.mask, visit.pins if spec.pin_width else x.pids, pins.valid)
        lvl = miss_levels(k, visit, params, d.nd)
        xj = params.xfer_lv[lvl] if k.mixed else jnp.broadcast_to(xfer, (W,))
        st, done_m, q_m, start = queue_misses(k, st, d.ids, x.miss, xj, t, l)
        if proposals_first(spec.issue):  # the router issues the plan right after its demand copies
            st, pfc = issue(k, st, visit, t, xfer)
        done_l = st["ring"][jnp.where(x.late, d.qD, 0) % N]
        t_ready = jnp.maximum(t, jnp.max(jnp.where(x.miss, done_m, jnp.where(x.late, done_l, t))))
        dem_q = jnp.where(x.late, d.qD, jnp.where(x.miss, q_m, NONE))
        # executed levels (quality proxies): hits at the level they hold, fetched at lvl, waited at 0
        lev_hit = k.level_of(st["ul"][d.loc]) if k.mixed else jnp.zeros((W,), jnp.int32)
        lev = jnp.where(d.hit, lev_hit, jnp.where(x.miss, lvl, 0))
        dem_u = jnp.where(x.late, k.u0, k.UNITS[lvl])
        st, (ev1, byp, arr1, drop1) = admit_batch(k, st, t_ready, cap, D, dem_q, dem_u, l)
        st = use(k, st, x.pids, x.pvalid, l)
        st["pfu"] = st["pfu"].at[jnp.where(x.valid, d.ids, N)].set(False, mode="drop")
        if not proposals_first(spec.issue):  # prefetch issue at t_ready (overlaps the layer's compute)
            st, pfc = issue(k, st, visit, t_ready, xfer)
        comp = jnp.where(visit.prefill, params.c_pre0 + visit.tokens * params.c_pre1, params.c_dec).astype(jnp.int32)
        comp = jnp.where(visit.live, turn_compute(comp, visit, params.c_exp), 0)
        t_end = t_ready + comp
        st, (ev2, _, arr2, drop2) = admit_batch(k, st, t_end, cap, D, None, None, l)
        st["t"] = t_end
        # int32 ticks relative to the pass start: a sum that wraps becomes smaller than its base
        n_iss, n_res, n_pend, iss_ovf = pfc
        st["ovf"] = st["ovf"] | (t_ready < t) | (t_end < t_ready) | jnp.any(x.miss & (done_m < start)) | iss_ovf
        info = jnp.stack([d.nd, d.nh, d.nm_all, d.coll, ev1 + ev2, byp]).astype(jnp.int32)
        pinfo = counters(k, visit, d, x, lvl, lev, npairs, rerouted,
                         (n_iss, n_res, n_pend, arr1 + arr2, drop1 + drop2))
        st["per_layer"] = st["per_layer"].at[:, l].add(info)
        st["pf"] = st["pf"].at[:, l].add(pinfo)
        return AsyncState(**st), t_end

    return init, step


def counters(k: Layout, visit, d: Demand, x: Executed, lvl, lev, npairs, rerouted, queue):
    """int32[len(ASYNC_COUNTERS)] of one turn (:data:`specmd_jax.core.counters.ASYNC_COUNTERS`)."""
    n_iss, n_res, n_pend, arrived, dropped = queue
    drop, subd, valid, miss = x.drop, x.subd, x.valid, x.miss
    BITS, UNITS = k.BITS, k.UNITS
    return jnp.stack([d.nl, n_iss, n_res, n_pend, arrived, dropped, d.useful, jnp.sum(drop, dtype=jnp.int32),
                      jnp.sum(jnp.where(drop, visit.pairs, 0)), jnp.sum(jnp.where(drop, visit.units, 0)),
                      jnp.sum(miss, dtype=jnp.int32), jnp.sum(subd, dtype=jnp.int32),
                      jnp.sum(jnp.where(subd, visit.pairs, 0)), jnp.sum(jnp.where(subd, visit.units, 0)),
                      jnp.sum(jnp.where(valid & (lev == 0), visit.units, 0)),
                      jnp.sum(jnp.where(valid | subd, npairs, 0)),
                      jnp.sum(jnp.where(valid, npairs * BITS[lev], 0))
                      + jnp.sum(jnp.where(subd, npairs * BITS[x.sub_lev], 0)),
                      jnp.sum(jnp.where(miss, UNITS[lvl], 0)) + n_iss * k.u0, *rerouted]).astype(jnp.int32)
