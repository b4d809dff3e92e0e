"""JAX engine with asynchronous prefetch on a FIFO copy engine (``lru``, ``ls``, ``fifo``, ``lhu``;
global pool).

The kernel twin of :func:`specmd_jax.reference.simulate_timed` (``instant_prefetch=False``): copies
complete on one FIFO engine, late prefetches stall, arrivals are admitted in batches with the
visit's demand pinned (semantics: :mod:`specmd_jax.core.timing`). Hardware numbers are per
configuration (vmapped): transfer ticks and compute ticks.

State per configuration, dense over the ``N`` expert ids plus a ring of copy completion times:

* ``rank`` / ``pfu``: as in :mod:`specmd_jax.kernels.instant` (contiguous protection ranks; prefetched-unused);
* ``qidx[x]``: the issue number of ``x``'s queued copy (``NONE`` if none); ``ring[k mod N]``: the
  completion tick of copy ``k``. At most ``N`` copies are ever queued (one per expert), and a
  FIFO engine completes copies in issue order, so ``ring`` is sorted over the live window
  ``[head, tail)``: an arrival batch ("everything done by T") is the window's prefix found by a
  binary search, its members are ``head <= qidx < head + count`` (elementwise), and a member's
  arrival order is ``qidx - head``. No per-configuration sort or count over ``N`` is needed.
* ``t``, ``eng``: the clock and the engine's free time, relative to the current pass start
  (rebased at each pass, so int32 ticks overflow only if one pass lasts over 2**31 ticks = 214 s;
  ``ovf`` records it and the runner raises).

Least-Stale (key: pass it last entered the current tier, layer, entry order; ``semantics``) keeps
the current tier as the top ``sum(cur)`` ranks, one contiguous block per layer, highest layer on
top (as :mod:`specmd_jax.kernels.instant`'s deep path). What asynchrony adds is that one arrival batch can hold
prefetches for several layers, including layers already executed (late arrivals), and each
enters at the top of *its* layer's block in arrival order. Ranks inside a block need a prefetch's
arrival order among the batch members of its layer, found elementwise: ``lc[x]`` numbers the
copies of each layer in issue order (``icnt[L]`` issued, ``done[L]`` arrived per layer), and the
engine completes copies in issue order, so a batch holds a prefix of each layer's pending copies
and ``x``'s place in it is ``lc[x] - done[layer]`` minus the demanded members ahead of it.
Demanded copies arrive unmarked (below every stale expert, as the reference's key -1) and their
use moves them to the top of the visit layer's block; a resident stale proposal is re-marked at
issue.

LHU (HOBBIT '24; key: uses at the top level since insertion, last use, id) always runs on
weighted ranks (``hp[x]`` counts the uses): an arrival batch (0 uses, newest) enters directly
under the surviving residents with at least one use, which keep their ranks, while the 0-use
residents move under it; a use re-files each executed expert above every other resident with
at most its new count and under those with more (a ``[W, N]`` comparison per configuration).
With one level it is LFU. The other policies with asynchronous timing run in the reference.

Cache-aware routing (``AsyncSpec.routing``; :mod:`specmd_jax.core.routing`): the demand of a visit
then depends on the configuration. Before anything else a step re-routes the visit's tokens
(rows ``[row0, row0 + nrows)`` of the trace's candidate tables, passed once as ``tabs``) against
the layer's residents at the visit start, one token per loop trip: each candidate's rank is the
count of candidates with a larger key ``(z', lower recorded rank, lower id)``, a ``[C, C]``
comparison; ``lam`` is per configuration (vmapped), ``delta`` per visit. The new demand is
compacted into the ``W`` slots of the visit (ascending ids) with its best rank, best weight
units and recorded pairs/units, so everything after it is the standard step; the rerouting
counters (tokens changed, recorded pairs and units rerouted) join the quality proxies.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.counters import ASYNC_COUNTERS
from specmd_jax.kernels.demand import NCOUNT
from specmd_jax.kernels.ranks import ABSENT, GONE, above, count_lt, suffix, victim_threshold, take_victims
from specmd_jax.kernels.pytree import pytree_dataclass, replace
from specmd_jax.policies import served_by
from specmd_jax.core.semantics import SB_SCALE

ASYNC_POLICIES = served_by("async")
NONE = jnp.iinfo(jnp.int32).max


@pytree_dataclass
class AsyncParams:
    """Numeric parameters of one configuration (vmappable): ``capacity`` slots, ``xfer`` ticks per
    copy, compute ticks per layer: ``c_dec`` (decode), ``c_pre0`` + ``c_pre1`` per prompt token;
    ``drop_rank``: the ``drop_priority`` miss policy's threshold (a demanded expert that is not
    resident and whose best router rank in the visit is ``>= drop_rank`` is dropped:
    :mod:`specmd_jax.core.miss`); ``fetch`` is a threshold no rank reaches."""

    capacity: Any
    xfer: Any
    c_dec: Any
    c_pre0: Any
    c_pre1: Any
    drop_rank: Any
    xfer_lv: Any = None    # int32[levels] ticks per copy at each precision level (xfer_lv[0] == xfer)
    pct_milli: Any = None  # fetch_priority: percentile in thousandths
    degrade: Any = None    # fetch_priority: level the degraded experts are fetched at
    cas_th: Any = None     # int32[cascade_len] cascade thresholds in router-weight units
    lam: Any = None        # float32 cache-aware routing strength (AsyncSpec.routing)
    c_exp: Any = None      # int32 ticks of one expert's compute (Hardware.expert_us), -1: the layer's numbers


@pytree_dataclass
class AsyncState:
    rank: Any
    occ: Any
    pfu: Any
    qidx: Any
    ring: Any
    head: Any
    tail: Any
    t: Any
    eng: Any
    per_layer: Any
    pf: Any
    max_occ: Any
    ovf: Any
    cur: Any   # int32[L] Least-Stale current tier per layer ([0] for other policies)
    lc: Any    # int32[N] per-layer issue number of x's queued copy (ls; else [0])
    icnt: Any  # int32[L] copies issued per layer (ls; else [0])
    done: Any  # int32[L] copies arrived per layer (ls; else [0])
    ul: Any    # int32[N] units of each resident (mixed precision; else [0])
    hp: Any    # int32[N] uses at the top level since insertion (lhu; else [0])


_FIELDS = ("rank", "occ", "pfu", "qidx", "ring", "head", "tail", "t", "eng", "per_layer", "pf", "max_occ", "ovf",
           "cur", "lc", "icnt", "done", "ul", "hp")


@pytree_dataclass
class AsyncVisit:
    """Shared inputs of one visit: ``layer``, ``new_pass``, ``prefill`` (bool), ``tokens``,
    ``ids`` int32[W] demand (ascending), ``pf_ids`` int32[Q] proposals in issue order, ``live``
    (False on the padding steps that fill a chunk: no compute, so the clock stands still)."""

    live: Any
    layer: Any
    new_pass: Any
    prefill: Any
    tokens: Any
    ids: Any
    pf_ids: Any
    rank: Any   # int32[W] best router rank of each demanded id in the visit
    pairs: Any  # int32[W] tokens routing it
    units: Any  # int32[W] its summed quantised router weight
    lscore: Any  # int32[E] running gate score of the visit layer's experts after the visit
                 # (``substitute``; shape [1] otherwise)
    score: Any = None  # int32[W] best quantised router weight of each demanded id (miss levels)
    spos: Any = None   # int32[W] its position in the demand sorted by (score, id) ascending
    row0: Any = None   # cache-aware routing (AsyncSpec.routing): first routed row of the visit,
    nrows: Any = None  # its number of rows (tokens)
    delta: Any = None  # float32 the layer's logit gap mean before the visit (routing.gap_means)
    turn: Any = None   # int32 the step's turn in its visit (specmd_jax.core.turns; 0 under execution="visit")
    nturns: Any = None  # int32 turns of its visit (1 under execution="visit")
    vdem: Any = None   # int32 the visit's demand count (fetch_priority's percentile, expert_us compute)
    pins: Any = None   # int32[pin_width] the visit's demand (-1 padded) when AsyncSpec.pin_width > 0


class AsyncSpec(NamedTuple):
    policy: str
    num_layers: int
    num_experts: int
    width: int
    prefetch_width: int
    substitute: bool = False  # miss policy ``substitute`` (else fetch / drop_priority by drop_rank)
    units: tuple = (1,)       # units per precision level (specmd_jax.core.miss.Precision.units), highest first
    miss_kind: str = "fetch"  # fetch (with drop_rank) | fetch_lowest | fetch_priority | cascade
    cascade_len: int = 0      # number of cascade thresholds
    bits: tuple = (16,)       # bits per precision level (quality proxies)
    full_demand: bool = True  # no configuration drops or substitutes: the executed set is the demand,
                              # shared by all configurations (a cheaper pinning mask)
    routing: bool = False     # cache-aware routing: each configuration re-routes the visit's tokens
    top_k: int = 0            # K (routing only)
    issue: str = "after_use"  # prefetch_issue of the reading: "after_use" | "at_router" (timing.Reading)
    pin_width: int = 0        # > 0: a separate pinned set of this width per step (AsyncVisit.pins: the
                              # visit's demand, execution="expert" with pin="visit"); 0: the step's executed set


def rank_sentinels(spec: "AsyncSpec") -> tuple:
    """``(dtype, ABSENT, GONE)`` of the rank table: int16 slot ranks, or int32 weighted ranks
    (mixed precision: units of the more protected residents) with sentinels above any sum."""
    if len(spec.units) == 1 and spec.units[0] == 1 and spec.policy != "lhu":
        return jnp.int16, ABSENT, GONE
    return jnp.int32, 2 ** 30 + 1, 2 ** 30


def make_async_policy(spec: AsyncSpec):
    """``(init(params) -> AsyncState, step(state, visit, params) -> (state, t_end))``."""
    if spec.policy not in ASYNC_POLICIES:
        raise ValueError(f"the asynchronous engine supports {ASYNC_POLICIES}; {spec.policy!r} runs in the "
                         "reference (specmd_jax.reference.simulate_timed)")
    L, E, W, Q = spec.num_layers, spec.num_experts, spec.width, spec.prefetch_width
    N = L * E
    rdt, A_, G_ = rank_sentinels(spec)
    lru, ls, lhu = spec.policy == "lru", spec.policy == "ls", spec.policy == "lhu"
    sub = spec.substitute
    mixed = rdt == jnp.int32          # weighted ranks: units of the more protected residents
    UNITS = jnp.asarray(spec.units, jnp.int32)
    BITS = jnp.asarray(spec.bits, jnp.int32)
    u0, NL, kind = int(spec.units[0]), len(spec.units), spec.miss_kind
    if kind not in ("fetch", "fetch_lowest", "fetch_priority", "cascade"):
        raise ValueError(f"unknown miss kind {kind!r}")
    if spec.issue not in ("after_use", "at_router"):
        raise ValueError(f"unknown prefetch issue point {spec.issue!r}")
    if spec.pin_width and (sub or spec.routing):
        raise ValueError("a separate pinned set (execution='expert', pin='visit') goes with neither substitute nor "
                         "cache-aware routing")
    # the pinned set is not the step's own demand: pinned residents and admitted demand copies are
    # scattered separately, and a batch member of the pinned set that is not the step's own copy
    # is a prefetch (a later turn's expert)
    separate = sub or spec.pin_width > 0
    laterQ = jnp.arange(Q)[None, :] > jnp.arange(Q)[:, None]
    layer_of = jnp.arange(N) // E

    def per_id(table):
        """[L] per-layer values -> [N] per id (a broadcast; ids are layer-major)."""
        return jnp.broadcast_to(table[:, None], (L, E)).reshape(N)

    def per_layer_count(mask):
        """int32[L] members of a bool[N] mask per layer."""
        return jnp.sum(mask.reshape(L, E), axis=1, dtype=jnp.int32)
    earlier = jnp.arange(W)[None, :] < jnp.arange(W)[:, None]
    incl = jnp.arange(W)[None, :] <= jnp.arange(W)[:, None]       # [j, j'] j' <= j
    later = jnp.arange(W)[None, :] > jnp.arange(W)[:, None]       # [j, j'] j' > j

    def wsum(a, w, r, greater: bool):
        """int32[N]: ``sum_j w[j] * (a[j] > r[x])`` (or ``<``) for every x; rows 8 at a time."""
        def part(aa, ww):
            cmp = aa[:, None] > r[None, :] if greater else aa[:, None] < r[None, :]
            return jnp.sum(jnp.where(cmp, ww[:, None], 0), axis=0, dtype=jnp.int32)
        n = a.shape[0]
        if n <= 16:
            return part(a, w)
        g = n // 8
        tail = part(a[g * 8:], w[g * 8:])
        return lax.fori_loop(0, g, lambda i, acc: acc + part(lax.dynamic_slice_in_dim(a, i * 8, 8),
                                                             lax.dynamic_slice_in_dim(w, i * 8, 8)), tail)

    def level_of(u):
        """Precision level of residents holding ``u`` units (levels have distinct units)."""
        return jnp.sum(UNITS[None, :] > u[:, None], axis=1, dtype=jnp.int32)
    earlierQ = jnp.arange(Q)[None, :] < jnp.arange(Q)[:, None]
    nbits = max(1, int(N).bit_length())

    def init(params: AsyncParams) -> AsyncState:
        del params
        z = jnp.zeros((), jnp.int32)
        return AsyncState(rank=jnp.full((N,), A_, rdt), occ=z, pfu=jnp.zeros((N,), bool),
                          qidx=jnp.full((N,), NONE, jnp.int32), ring=jnp.zeros((N,), jnp.int32), head=z, tail=z,
                          t=z, eng=z, per_layer=jnp.zeros((NCOUNT, L), jnp.int32),
                          pf=jnp.zeros((len(ASYNC_COUNTERS), L), jnp.int32), max_occ=z,
                          ovf=jnp.zeros((), bool), cur=jnp.zeros((L if ls else 0,), jnp.int32),
                          lc=jnp.zeros((N if ls else 0,), jnp.int32), icnt=jnp.zeros((L if ls else 0,), jnp.int32),
                          done=jnp.zeros((L if ls else 0,), jnp.int32), ul=jnp.zeros((N if mixed else 0,), jnp.int32),
                          hp=jnp.zeros((N if lhu else 0,), jnp.int32))

    def count_done(ring, head, tail, T):
        """#{k in [head, tail) : ring[k mod N] <= T} (ring is sorted over the window)."""
        def body(_, lh):
            lo, hi = lh
            mid = (lo + hi) // 2
            ok = ring[mid % N] <= T
            go = lo < hi
            return jnp.where(go & ok, mid + 1, lo), jnp.where(go & ~ok, mid, hi)
        lo, _ = lax.fori_loop(0, nbits + 1, body, (head, tail))
        return lo - head

    def batch(st, T, valid, dem_q):
        """Copies done by ``T``: ``(count, members bool[N], D's copies among them bool[W])``."""
        c = count_done(st["ring"], st["head"], st["tail"], T)
        head, qidx = st["head"], st["qidx"]
        inb = (qidx >= head) & (qidx < head + c)                       # members, elementwise
        if dem_q is None:
            return c, inb, jnp.zeros((W,), bool)
        return c, inb, valid & (dem_q >= head) & (dem_q < head + c)   # D's copies in this batch

    def arrival_order(st, demb, dem_q):
        """int32[N]: each batch member's place among the batch's prefetches (issue order minus D's
        copies issued earlier)."""
        o = st["qidx"] - st["head"]
        if dem_q is not None and W:
            dq = jnp.where(demb, dem_q, NONE)
            o = o - jnp.sum(dq[:, None] < st["qidx"][None, :], axis=0, dtype=jnp.int32)
        return o

    def layer_place(st, demb, dem_q, loc, l):
        """int32[N] (Least-Stale): a prefetch's place among its layer's batch members (issue order
        = arrival order), minus D's copies of layer ``l`` ahead of it."""
        w = st["lc"] - per_id(st["done"])
        if dem_q is not None:
            dlc = jnp.where(demb, st["lc"][loc], NONE)
            w = w - jnp.where(layer_of == l, jnp.sum(dlc[:, None] < st["lc"][None, :], axis=0, dtype=jnp.int32), 0)
        return w

    def own_mask(inD, ids, demb):
        """bool[N]: the batch members that are the step's own demand copies (the others are
        prefetches). With the pinned set = the executed demand that is ``inD`` itself (a
        pinned expert in a batch is one of the step's copies); with a separate pinned set, the
        step's copies in the batch (``demb``)."""
        if not spec.pin_width:
            return inD
        return jnp.zeros((N,), bool).at[jnp.where(demb, ids, N)].set(True, mode="drop")

    def admit(st, T, cap, D, dem_q, l):
        """Arrival batch of every copy done by ``T``; ``D`` (ids, valid, loc, loc_drop, inD) pinned.
        ``dem_q`` int32[W]: issue numbers of D's queued copies (NONE otherwise), or ``None`` when
        the batch cannot hold any (after the demand has been served: a static shortcut)."""
        r, occ, pfu, qidx = st["rank"], st["occ"], st["pfu"], st["qidx"]
        ids, valid, loc, loc_drop, inD, pids, pvalid = D
        head = st["head"]
        c, inb, demb = batch(st, T, valid, dem_q)
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
        o = arrival_order(st, demb, dem_q)
        pf_in = inb & ~own_mask(inD, ids, demb)
        pf_adm = pf_in & (o < n_pf_adm)
        j = jnp.sum(earlier & demb[None, :], axis=1, dtype=jnp.int32)
        dem_adm = demb & (j < n_dem_adm)
        occ_new = occ - nev + n_adm
        if ls:
            # current-tier victims leave from the bottom (lowest layers first, skipping the pinned)
            cur, ncur = st["cur"], jnp.sum(st["cur"])
            pin_cur = pin & (rDp.astype(jnp.int32) < ncur)
            npc = jnp.sum(pin_cur, dtype=jnp.int32)
            cur = take_victims(cur, jnp.clip(ncur - npc - thresh, 0, nev), (jnp.arange(L) == l) * npc)
            acnt = per_layer_count(pf_adm)
            sfx = suffix(acnt)                       # entries landing above a current expert of layer m
            cur2 = cur + acnt
            # a prefetch's place among its layer's batch members (issue order = arrival order)
            w = layer_place(st, demb, dem_q, loc, l)
            r_pf = per_id(suffix(cur2) - cur2 + acnt - 1) - w          # top of its layer's block
            r_keep = r + jnp.where(r < ncur, per_id(sfx), n_pf_adm)
            r2 = jnp.where(r >= G_, r, jnp.where(gone, G_, r_keep)).astype(rdt)
            r2 = jnp.where(pf_adm, r_pf, r2).astype(rdt)
            # pinned: past the victims below them, under the entries above; demanded copies arrive
            # unmarked (key -1): the bottom, ascending id lowest
            newP = rDp - jnp.clip(ev_pos - thresh, 0, nev) + jnp.where(pin_cur, sfx[l], n_pf_adm)
            newA = occ_new - 1 - j
            st = dict(st, cur=cur2, done=st["done"] + per_layer_count(inb))
        else:
            r2 = jnp.where(r >= G_, r, jnp.where(gone, G_, r + n_adm.astype(rdt))).astype(rdt)
            r2 = jnp.where(pf_adm, (n_pf_adm - 1 - o).astype(rdt), r2)
            # pinned hits below R* move up past the victims; demanded arrivals: ascending id, under the prefetches
            newP = rDp + n_adm - jnp.clip(ev_pos - thresh, 0, nev)
            newA = n_pf_adm + n_dem_adm - 1 - j
        if separate:  # pinned residents and the admitted demand copies: two scatters
            r2 = r2.at[jnp.where(pin, pids, N)].set(newP.astype(rdt), mode="drop")
            r2 = r2.at[jnp.where(dem_adm, ids, N)].set(newA.astype(rdt), mode="drop")
        else:  # the pinned are the demand's residents: one scatter at the demand's ids
            r2 = r2.at[loc_drop].set(jnp.where(pin, newP, jnp.where(dem_adm, newA, r2[loc])).astype(rdt), mode="drop")
        pfu = jnp.where(gone, False, pfu) | pf_adm
        qidx = jnp.where(inb, NONE, qidx)
        occ = occ_new
        new = dict(st, rank=r2, occ=occ, pfu=pfu, qidx=qidx, head=head + c, max_occ=jnp.maximum(st["max_occ"], occ))
        return new, (nev, n_dem - n_dem_adm, n_pf, n_pf - n_pf_adm)

    def admit_w(st, T, cap, D, dem_q, dem_u, l):
        """:func:`admit` with precision levels (``specmd_jax.core.miss``: byte-capacity eviction):
        ranks are *weighted* (units of the more protected residents), the batch is admitted as
        its longest fitting prefix (demand copies first, ascending id, then prefetches of ``u0``
        units each), and the victims are the fewest least protected evictables freeing enough."""
        r, occ, pfu, qidx, ul = st["rank"], st["occ"], st["pfu"], st["qidx"], st["ul"]
        ids, valid, loc, loc_drop, inD, pids, pvalid = D
        head = st["head"]
        c, inb, demb = batch(st, T, valid, dem_q)
        du = jnp.zeros((W,), jnp.int32) if dem_q is None else jnp.where(demb, dem_u, 0)
        n_dem = jnp.sum(demb, dtype=jnp.int32)
        n_pf = c - n_dem
        ploc = jnp.where(pvalid, pids, 0)
        rP = jnp.where(pvalid, r[ploc], A_)
        pin = rP < G_
        pu = jnp.where(pin, ul[ploc], 0)
        free = jnp.maximum(cap - occ, 0)
        room = free + occ - jnp.sum(pu)
        cum = jnp.sum(jnp.where(incl, du[None, :], 0), axis=1)            # ascending id, inclusive
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
        o = arrival_order(st, demb, dem_q)
        pf_adm = inb & ~own_mask(inD, ids, demb) & (o < n_pf_adm)
        if ls:
            # the current tier's blocks hold units; its victims leave from the bottom (lowest
            # layers first, skipping the pinned), the rest of the freed units were stale
            cur, ncur = st["cur"], jnp.sum(st["cur"])
            pin_cur = pin & (rP < ncur)
            pcu = jnp.sum(jnp.where(pin_cur, pu, 0))
            stale_ev = occ - ncur - jnp.sum(jnp.where(pin & ~pin_cur, pu, 0))
            cur = take_victims(cur, jnp.maximum(freed - stale_ev, 0), (jnp.arange(L) == l) * pcu)
            au = per_layer_count(pf_adm) * u0
            sfx = suffix(au)
            cur2 = cur + au
            w = layer_place(st, demb, dem_q, loc, l)
            r2 = jnp.where(~res, r, jnp.where(gone, G_, r + jnp.where(r < ncur, per_id(sfx), n_pf_adm * u0)))
            r2 = jnp.where(pf_adm, per_id(suffix(cur2) - cur2 + au - u0) - w * u0, r2)
            newP = rP - victims_above + jnp.where(pin_cur, sfx[l], n_pf_adm * u0)
            newA = occ - freed + adm_u - cum                  # unmarked: the bottom, ascending id lowest
            st = dict(st, cur=cur2, done=st["done"] + per_layer_count(inb))
        elif lhu:
            # key (top-level uses, last use, id): arrivals (0 uses, newest) enter right under the
            # surviving residents with >= 1 use, which keep their ranks; the 0-use ones go under them
            hp = st["hp"]
            zero = hp == 0
            P = jnp.sum(jnp.where(res & ~gone & ~zero, ul, 0))
            r2 = jnp.where(~res, r, jnp.where(gone, G_, r + jnp.where(zero, adm_u, 0)))
            r2 = jnp.where(pf_adm, P + (n_pf_adm - 1 - o) * u0, r2)
            newP = rP - victims_above + jnp.where(hp[ploc] == 0, adm_u, 0)
            newA = P + n_pf_adm * u0 + jnp.sum(jnp.where(later & dem_adm[None, :], du[None, :], 0), axis=1)
            st = dict(st, hp=jnp.where(pf_adm, 0, hp).at[jnp.where(dem_adm, ids, N)].set(0, mode="drop"))
        else:
            r2 = jnp.where(~res, r, jnp.where(gone, G_, r + adm_u))
            r2 = jnp.where(pf_adm, (n_pf_adm - 1 - o) * u0, r2)
            newP = rP - victims_above + adm_u
            newA = n_pf_adm * u0 + jnp.sum(jnp.where(later & dem_adm[None, :], du[None, :], 0), axis=1)
        r2 = r2.at[jnp.where(pin, pids, N)].set(newP, mode="drop")
        r2 = r2.at[jnp.where(dem_adm, ids, N)].set(newA, mode="drop")
        ul2 = jnp.where(pf_adm, u0, ul).at[jnp.where(dem_adm, ids, N)].set(du, mode="drop")
        occ_new = occ - freed + adm_u
        new = dict(st, rank=r2.astype(rdt), ul=ul2, occ=occ_new, pfu=jnp.where(gone, False, pfu) | pf_adm,
                   qidx=jnp.where(inb, NONE, qidx), head=head + c, max_occ=jnp.maximum(st["max_occ"], occ_new))
        return new, (nev, n_dem - n_dem_adm, n_pf, n_pf - n_pf_adm)

    def route(visit, r, lam, tabs):
        """Cache-aware routing of the visit's tokens against this configuration's residents
        (:mod:`specmd_jax.core.routing`, exactly): the demand (``ids`` ascending in ``W`` slots) and
        its per-id details, and the visit's rerouting counters. One token per loop trip: a
        ``[C, C]`` comparison of the candidates' keys (z', recorded rank, id)."""
        K = spec.top_k
        l = visit.layer
        cached = lax.dynamic_slice_in_dim(r, l * E, E) < G_
        anyc = jnp.any(cached)
        bias = lax.optimization_barrier(lam.astype(jnp.float32) * visit.delta.astype(jnp.float32))
        BIG = jnp.int32(2 ** 30)  # = core.miss.NO_DROP: the rank of padding

        def token(i, c):
            dm, smax, rmin, rp, ru_s, npr, rer_p, rer_u, chg = c
            row = lambda k: lax.dynamic_index_in_dim(tabs[k], visit.row0 + i, keepdims=False)  # noqa: E731
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
                    rmin.at[cid].min(jnp.where(sel, nrank, BIG)), rp.at[cid].add(keep.astype(jnp.int32)),
                    ru_s.at[cid].add(jnp.where(keep, ru, 0)), npr.at[cid].add(sel.astype(jnp.int32)),
                    rer_p + jnp.sum(rec & ~sel, dtype=jnp.int32), rer_u + jnp.sum(jnp.where(rec & ~sel, ru, 0)),
                    chg + changed.astype(jnp.int32))

        zi = jnp.zeros((E,), jnp.int32)
        z0 = jnp.zeros((), jnp.int32)
        dm, smax, rmin, rp, ru_s, npr, rer_p, rer_u, chg = lax.fori_loop(
            0, visit.nrows, token, (jnp.zeros((E,), bool), zi, jnp.full((E,), BIG), zi, zi, zi, z0, z0, z0))
        # compaction: the demanded experts in ascending id into W slots
        pos = jnp.cumsum(dm.astype(jnp.int32)) - 1
        oh = dm[None, :] & (pos[None, :] == jnp.arange(W)[:, None])           # [W, E]
        has = jnp.any(oh, axis=1)
        pick = lambda a: jnp.sum(jnp.where(oh, a[None, :], 0), axis=1, dtype=jnp.int32)  # noqa: E731
        ids = jnp.where(has, l * E + pick(jnp.arange(E, dtype=jnp.int32)), -1)
        score = pick(smax)
        key_lt = (score[None, :] < score[:, None]) | ((score[None, :] == score[:, None]) & (ids[None, :] < ids[:, None]))
        spos = jnp.sum(key_lt & has[None, :], axis=1, dtype=jnp.int32)
        visit = replace(visit, ids=ids, rank=jnp.where(has, pick(rmin), BIG), pairs=pick(rp), units=pick(ru_s),
                              score=score, spos=spos)
        return visit, pick(npr), (chg, rer_p, rer_u)

    def issue(st, visit, t_issue, xfer):
        """Issue the step's proposals at ``t_issue``, in order: a resident one is skipped
        (Least-Stale re-marks it current), one already queued is skipped, the others are queued
        on the FIFO engine. Returns the state and ``(issued, resident, pending, wrapped)``."""
        pv = visit.pf_ids >= 0
        pidx = jnp.where(pv, visit.pf_ids, 0)
        resP = pv & (st["rank"][pidx] < G_)
        pendP = pv & ~resP & (st["qidx"][pidx] != NONE)
        iss = pv & ~resP & ~pendP
        n_iss = jnp.sum(iss, dtype=jnp.int32)
        pl = jnp.where(pv, visit.pf_ids // E, 0)                           # proposals' layers
        sameQ = pl[None, :] == pl[:, None]
        pdrop = jnp.where(pv, visit.pf_ids, N)
        if ls:
            # a resident stale proposal is re-marked current: top of its layer's block, later higher
            r, cur = st["rank"], st["cur"]
            ncur = jnp.sum(cur)
            rP = jnp.where(pv, r[pidx], A_).astype(rdt)
            R = resP & (rP.astype(jnp.int32) >= ncur)
            if mixed:  # in units: the re-marked experts hold their own levels
                ru = jnp.where(R, st["ul"][pidx], 0)
                rcnt = jnp.zeros((L,), jnp.int32).at[pl].add(ru)
                up_st = jnp.sum(ru) - wsum(jnp.where(R, rP, A_), ru, r, False)
                later_same = jnp.sum(jnp.where(laterQ & sameQ & R[None, :], ru[None, :], 0), axis=1)
            else:
                nR = jnp.sum(R, dtype=jnp.int32)
                rcnt = jnp.zeros((L,), jnp.int32).at[pl].add(R.astype(jnp.int32))
                up_st = nR.astype(rdt) - count_lt(jnp.where(R, rP, A_).astype(rdt), r)
                later_same = jnp.sum(laterQ & sameQ & R[None, :], axis=1, dtype=jnp.int32)
            r = jnp.where(r < ncur, r + per_id(suffix(rcnt)), jnp.where(r < G_, r + up_st, r)).astype(rdt)
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

    def step(state: AsyncState, visit: AsyncVisit, params: AsyncParams, tabs=None):
        st = {k: getattr(state, k) for k in _FIELDS}
        l = visit.layer
        cap = params.capacity.astype(jnp.int32)
        xfer = params.xfer.astype(jnp.int32)
        # pass start: clear "evicted in this pass", rebase the clock
        shift = jnp.where(visit.new_pass, st["t"], 0)
        st["rank"] = lax.cond(visit.new_pass, lambda a: jnp.where(a == G_, A_, a).astype(rdt),
                              lambda a: a, st["rank"])
        st["ring"] = lax.cond(visit.new_pass, lambda a: a - shift, lambda a: a, st["ring"])
        st["t"] = st["t"] - shift
        if ls:
            st["cur"] = jnp.where(visit.new_pass, 0, st["cur"])
        st["eng"] = st["eng"] - shift
        t = st["t"]
        if spec.routing:
            visit, npairs, rerouted = route(visit, st["rank"], params.lam, tabs)
        else:
            npairs, rerouted = visit.pairs, (0, 0, 0)
        ids = visit.ids
        demanded = ids >= 0
        loc = jnp.where(demanded, ids, 0)
        loc_drop = jnp.where(demanded, ids, N)
        r = st["rank"]
        rD = jnp.where(demanded, r[loc], A_).astype(rdt)
        hit = rD < G_
        qD = jnp.where(demanded, st["qidx"][loc], NONE)
        late_all = demanded & ~hit & (qD != NONE)
        miss_all = demanded & ~hit & ~late_all
        nd = jnp.sum(demanded, dtype=jnp.int32)
        nh = jnp.sum(hit, dtype=jnp.int32)
        nl = jnp.sum(late_all, dtype=jnp.int32)
        nm_all = nd - nh - nl
        coll = jnp.sum(miss_all & (rD == G_), dtype=jnp.int32)
        useful = jnp.sum(hit & st["pfu"][loc], dtype=jnp.int32) + nl
        # miss policy: the executed set (hits, fetched and waited-for experts, substitutes) is what
        # is pinned and used (specmd_jax.core.miss)
        missing = late_all | miss_all
        if sub:
            # the resident expert of layer l, not demanded, with the closest running gate score
            # (lowest id on ties): a [W, E] distance table shared by all configurations, masked
            # by this configuration's residents
            blk = lax.dynamic_slice_in_dim(r, l * E, E)
            dem_blk = lax.dynamic_slice_in_dim(jnp.zeros((N,), bool).at[loc_drop].set(True, mode="drop"), l * E, E)
            cand = (blk < G_) & ~dem_blk
            own = visit.lscore[jnp.where(demanded, ids - l * E, 0)]
            dist = jnp.abs(visit.lscore[None, :] - own[:, None])
            best = jnp.argmin(jnp.where(cand[None, :], dist, jnp.iinfo(jnp.int32).max), axis=1).astype(jnp.int32)
            has = jnp.any(cand)
            subd = missing & has
            drop = missing & ~has
            sid = jnp.where(subd, l * E + best, -1)
            first = ~jnp.any(earlier & (sid[None, :] == sid[:, None]) & subd[None, :], axis=1)
            sub_ok = subd & first                                  # distinct substitutes
            sub_lev = level_of(st["ul"][jnp.where(subd, sid, 0)]) if mixed else jnp.zeros((W,), jnp.int32)
            late, miss = jnp.zeros_like(late_all), jnp.zeros_like(miss_all)
            valid = hit
            pids = jnp.concatenate([ids, sid])
            pvalid = jnp.concatenate([valid, sub_ok])
        else:
            drop = jnp.zeros_like(missing) if spec.full_demand else missing & (visit.rank >= params.drop_rank)
            subd = jnp.zeros_like(drop)
            sub_lev = jnp.zeros((W,), jnp.int32)
            late, miss = late_all & ~drop, miss_all & ~drop
            valid = demanded & ~drop
            pids, pvalid = ids, valid
        nm = jnp.sum(miss, dtype=jnp.int32)
        if spec.full_demand and not sub:  # the demand's mask, the same for every configuration
            inD = jnp.zeros((N,), bool).at[loc_drop].set(True, mode="drop")
        else:
            inD = jnp.zeros((N,), bool).at[jnp.where(pvalid, pids, N)].set(True, mode="drop")
        ploc = jnp.where(pvalid, pids, 0)   # the executed set (used below)
        if spec.pin_width:  # the visit's demand is pinned, not only this turn's expert
            pv_ = visit.pins >= 0
            D = (ids, valid, loc, loc_drop, jnp.zeros((N,), bool).at[jnp.where(pv_, visit.pins, N)].set(True, mode="drop"),
                 visit.pins, pv_)
        else:
            D = (ids, valid, loc, loc_drop, inD, pids, pvalid)
        # precision level of each fetched miss (specmd_jax.core.miss; waited-for copies are prefetches: 0)
        if kind == "fetch_lowest":
            lvl = jnp.full((W,), NL - 1, jnp.int32)
        elif kind == "fetch_priority":  # a percentile of the visit's demand (its turns share it)
            cut = params.pct_milli * (nd if visit.vdem is None else visit.vdem) // 100000
            lvl = jnp.where(visit.spos < cut, jnp.minimum(params.degrade, NL - 1), 0).astype(jnp.int32)
        elif kind == "cascade":
            lvl = jnp.minimum(jnp.sum(visit.score[:, None] < params.cas_th[None, :], axis=1, dtype=jnp.int32), NL - 1)
        else:
            lvl = jnp.zeros((W,), jnp.int32)
        xj = params.xfer_lv[lvl] if mixed else jnp.broadcast_to(xfer, (W,))
        # demand copies, ascending id, behind everything queued
        start = jnp.maximum(t, st["eng"])
        k = jnp.sum(earlier & miss[None, :], axis=1, dtype=jnp.int32)
        done_m = start + jnp.sum(jnp.where(incl & miss[None, :], xj[None, :], 0), axis=1)
        q_m = st["tail"] + k
        st["qidx"] = st["qidx"].at[jnp.where(miss, ids, N)].set(q_m, mode="drop")
        if ls:  # per-layer issue numbers (the demand is all of layer l)
            st["lc"] = st["lc"].at[jnp.where(miss, ids, N)].set(st["icnt"][l] + k, mode="drop")
            st["icnt"] = st["icnt"].at[l].add(nm)
        st["ring"] = st["ring"].at[jnp.where(miss, q_m % N, N)].set(done_m, mode="drop")
        st["tail"] = st["tail"] + nm
        st["eng"] = jnp.where(nm > 0, start + jnp.sum(jnp.where(miss, xj, 0)), st["eng"])
        if spec.issue == "at_router":  # the router issues the plan right after its demand copies
            st, pfc = issue(st, visit, t, xfer)
        done_l = st["ring"][jnp.where(late, qD, 0) % N]
        t_ready = jnp.maximum(t, jnp.max(jnp.where(miss, done_m, jnp.where(late, done_l, t))))
        dem_q = jnp.where(late, qD, jnp.where(miss, q_m, NONE))
        # executed levels (quality proxies): hits at the level they hold, fetched at lvl, waited at 0
        lev_hit = level_of(st["ul"][loc]) if mixed else jnp.zeros((W,), jnp.int32)
        lev = jnp.where(hit, lev_hit, jnp.where(miss, lvl, 0))
        if mixed:
            st, (ev1, byp, arr1, drop1) = admit_w(st, t_ready, cap, D, dem_q, jnp.where(late, u0, UNITS[lvl]), l)
        else:
            st, (ev1, byp, arr1, drop1) = admit(st, t_ready, cap, D, dem_q, l)
        # use: LRU moves the resident demand to the top (ids ascending, lowest id lowest)
        if lhu:
            # use: the executed residents take key (uses + held at the top level, now, id): above
            # every other resident with at most as many uses, under those with more
            r, hp, ul = st["rank"], st["hp"], st["ul"]
            rU = jnp.where(pvalid, r[ploc], A_)
            used = rU < G_
            uu = jnp.where(used, ul[ploc], 0)
            hpn = jnp.where(used, hp[ploc] + (level_of(ul[ploc]) == 0), -1)
            res = r < G_
            usedN = jnp.zeros((N,), bool).at[jnp.where(used, pids, N)].set(True, mode="drop")
            up = jnp.sum(jnp.where(used[:, None] & (hpn[:, None] >= hp[None, :]), uu[:, None], 0), axis=0)
            rc = jnp.where(res, r - wsum(rU, uu, r, False) + up, r)
            others = jnp.where(res & ~usedN, ul, 0)
            gt_other = jnp.sum(jnp.where(hp[None, :] > hpn[:, None], others[None, :], 0), axis=1)
            gt_used = jnp.sum(jnp.where(used[None, :] & ((hpn[None, :] > hpn[:, None]) | (
                (hpn[None, :] == hpn[:, None]) & (pids[None, :] > pids[:, None]))), uu[None, :], 0), axis=1)
            st["rank"] = rc.at[jnp.where(used, pids, N)].set(gt_other + gt_used, mode="drop").astype(rdt)
            st["hp"] = hp.at[jnp.where(used, pids, N)].set(hpn, mode="drop")
        elif lru and mixed:
            r = st["rank"]
            rU = jnp.where(pvalid, r[ploc], A_)
            used = rU < G_
            uu = jnp.where(used, st["ul"][ploc], 0)
            rc = jnp.where(r < G_, r - wsum(rU, uu, r, False) + jnp.sum(uu), r)
            top = jnp.sum(jnp.where(used[None, :] & (pids[None, :] > pids[:, None]), uu[None, :], 0), axis=1)
            st["rank"] = rc.at[jnp.where(used, pids, N)].set(top, mode="drop").astype(rdt)
        elif lru:
            r = st["rank"]
            rU = jnp.where(pvalid, r[ploc], A_).astype(rdt)
            used = rU < G_
            nU = jnp.sum(used, dtype=jnp.int32)
            below = count_lt(jnp.where(used, rU, A_).astype(rdt), r)   # used ones above x
            rc = jnp.where(r < G_, r - below + nU.astype(rdt), r).astype(rdt)
            top = jnp.sum(used[None, :] & (pids[None, :] > pids[:, None]), axis=1, dtype=jnp.int32)
            st["rank"] = rc.at[jnp.where(used, pids, N)].set(top.astype(rdt), mode="drop")
        elif ls and mixed:  # as below, in units
            r, cur = st["rank"], st["cur"]
            ncur = jnp.sum(cur)
            rU = jnp.where(pvalid, r[ploc], A_)
            moved = (rU < G_) & (rU >= ncur)
            mu = jnp.where(moved, st["ul"][ploc], 0)
            top = above(cur, l)
            rr = r - wsum(jnp.where(moved, rU, A_), mu, r, False)
            rc = jnp.where(r < G_, rr + jnp.where(rr >= top, jnp.sum(mu), 0), r)
            rD_moved = top + jnp.sum(jnp.where(moved[None, :] & (pids[None, :] > pids[:, None]), mu[None, :], 0), axis=1)
            st["rank"] = rc.at[jnp.where(moved, pids, N)].set(rD_moved, mode="drop").astype(rdt)
            st["cur"] = cur.at[l].add(jnp.sum(mu))
        elif ls:
            # use: the demand not yet current enters the tier at the top of layer l's block
            # (one entry number: ascending id, lowest id lowest); current ones keep their place
            r, cur = st["rank"], st["cur"]
            ncur = jnp.sum(cur)
            rU = jnp.where(pvalid, r[ploc], A_).astype(rdt)
            moved = (rU < G_) & (rU.astype(jnp.int32) >= ncur)
            nM = jnp.sum(moved, dtype=jnp.int32)
            top = above(cur, l)
            rr = r - count_lt(jnp.where(moved, rU, A_).astype(rdt), r)
            rc = jnp.where(r < G_, rr + jnp.where(rr >= top, nM, 0).astype(rdt), r).astype(rdt)
            rD_moved = top + jnp.sum(moved[None, :] & (pids[None, :] > pids[:, None]), axis=1, dtype=jnp.int32)
            st["rank"] = rc.at[jnp.where(moved, pids, N)].set(rD_moved.astype(rdt), mode="drop")
            st["cur"] = cur.at[l].add(nM)
        st["pfu"] = st["pfu"].at[jnp.where(valid, ids, N)].set(False, mode="drop")
        if spec.issue == "after_use":  # prefetch issue at t_ready (overlaps the layer's compute)
            st, pfc = issue(st, visit, t_ready, xfer)
        comp = jnp.where(visit.prefill, params.c_pre0 + visit.tokens * params.c_pre1, params.c_dec).astype(jnp.int32)
        if visit.nturns is not None:  # this turn's share of the layer (timing.turn_share)
            if params.c_exp is not None:
                comp = jnp.where(params.c_exp >= 0, params.c_exp * visit.vdem, comp).astype(jnp.int32)
            n_t = jnp.maximum(visit.nturns, 1)
            comp = comp // n_t + (visit.turn < comp % n_t).astype(jnp.int32)
        comp = jnp.where(visit.live, comp, 0)
        t_end = t_ready + comp
        if mixed:
            st, (ev2, _, arr2, drop2) = admit_w(st, t_end, cap, D, None, None, l)
        else:
            st, (ev2, _, arr2, drop2) = admit(st, t_end, cap, D, None, l)
        st["t"] = t_end
        # int32 ticks relative to the pass start: a sum that wraps becomes smaller than its base
        n_iss, n_res, n_pend, iss_ovf = pfc
        st["ovf"] = st["ovf"] | (t_ready < t) | (t_end < t_ready) | jnp.any(miss & (done_m < start)) | iss_ovf
        info = jnp.stack([nd, nh, nm_all, coll, ev1 + ev2, byp]).astype(jnp.int32)
        pinfo = jnp.stack([nl, n_iss, n_res, n_pend,
                           arr1 + arr2, drop1 + drop2, useful, jnp.sum(drop, dtype=jnp.int32),
                           jnp.sum(jnp.where(drop, visit.pairs, 0)), jnp.sum(jnp.where(drop, visit.units, 0)),
                           nm, jnp.sum(subd, dtype=jnp.int32), jnp.sum(jnp.where(subd, visit.pairs, 0)),
                           jnp.sum(jnp.where(subd, visit.units, 0)),
                           jnp.sum(jnp.where(valid & (lev == 0), visit.units, 0)),
                           jnp.sum(jnp.where(valid | subd, npairs, 0)),
                           jnp.sum(jnp.where(valid, npairs * BITS[lev], 0))
                           + jnp.sum(jnp.where(subd, npairs * BITS[sub_lev], 0)),
                           jnp.sum(jnp.where(miss, UNITS[lvl], 0)) + n_iss * u0, *rerouted]).astype(jnp.int32)
        st["per_layer"] = st["per_layer"].at[:, l].add(info)
        st["pf"] = st["pf"].at[:, l].add(pinfo)
        return AsyncState(**st), t_end

    return init, step
