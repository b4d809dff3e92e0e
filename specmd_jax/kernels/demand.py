"""The JAX eviction engine: one pure ``step`` per (configuration, scan step).

State is dense over expert ids (``N = L * E``) and holds, per pool (the global cache, or one
cache per layer), a *contiguous protection rank* of the residents: ``rank[x] = #{residents more
protected than x}`` (0 = evicted last), ``ABSENT`` for non-residents. With contiguous ranks the
``n`` victims of a step are found elementwise ("the ``n`` evictable residents with the highest
rank"), with no per-config reduction or gather (XLA:CPU reductions and config-dependent gathers
are slow: docs/performance.md). Policies differ only in how a step re-ranks:

``mtt`` (move to top; ``lru``, ``ls``)
    demanded experts go to the top, lowest id least protected among them. For ``ls`` this is
    exact in demand-only replay: a demanded expert's Least-Stale key (current pass, its layer,
    step) dominates every resident's key, so Least-Stale *is* LRU at visit granularity here;
    the reference implements the full key and the tests check the equality.
``ins`` (insertion order; ``fifo``, ``random``)
    hits keep their place; admitted experts go on top. ``random`` picks victim positions by
    Floyd's algorithm with a counter hash (same numbers as the reference).
``keyed`` (``belady``, ``sb``: trace-determined keys shared by all configurations; ``lfu``:
    per-configuration keys)
    new ranks of the demanded experts are counts of more-protected survivors: a dense matmul
    against a shared ``[W, N]`` comparison matrix for shared keys, a reduction for ``lfu``.
``fld``
    victims by layer distance (counts per layer, then lowest ids in a layer via a small
    triangular matmul); ranks only mark residency.

Each kind's re-rank is :mod:`specmd_jax.kernels.reranks`; the step here classifies the demand,
admits and writes the new ranks and counters.

All numbers (capacity, seed) are data in :class:`Params`; shapes and the policy are static.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.pytree import pytree_dataclass
from specmd_jax.kernels.ranks import ABSENT, GONE, classify_demand, wsum
from specmd_jax.kernels.reranks import DemandStep, rerank
from specmd_jax.core.semantics import INF_STEP
from specmd_jax.policies import served_by

NCOUNT = len(DEMAND_COUNTERS)
KIND = {"lru": "mtt", "ls": "mtt", "fifo": "ins", "random": "ins", "belady": "keyed",
        "sb": "keyed", "lfu": "keyed", "lfu_history": "keyed", "fld": "fld"}
COUNTED = {"lfu", "lfu_history"}     # per-configuration use counts (since insertion / since the trace start)
SCAN_POLICIES = served_by("scan")
SHARED_KEY = {"belady", "sb"}


@pytree_dataclass
class Params:
    """Numeric parameters of one configuration (vmappable leaves).

    Attributes:
        capacity: int32[] cache slots (total over layers in partitioned mode).
        seed: uint32[] seed of the ``random`` policy (ignored by the others).
    """

    capacity: Any
    seed: Any


@pytree_dataclass
class CacheState:
    """Per-configuration state.

    Attributes:
        rank: int16[N] protection rank within the pool for residents; ``GONE`` if evicted
            earlier in the current pass, ``ABSENT`` otherwise (one array keeps both, halving
            the memory traffic of a step).
        occ: int32[P] occupancy per pool (``P`` = 1 global, ``L`` partitioned).
        freq: int32[N] uses since insertion (``lfu``) or since the trace start (``lfu_history``);
            else shape [0]. The last-use
            tie-break needs no table: the rank order already holds it.
        per_layer: int32[6, L] counters (``DEMAND_COUNTERS``) by the layer of the visit (the
            totals are their sums).
        max_occ: int32[] largest pool occupancy seen after any step.
        dec_hits: int32[] hits in decode passes (the prefill's are the rest).
    """

    rank: Any
    occ: Any
    freq: Any
    per_layer: Any
    max_occ: Any
    dec_hits: Any


@pytree_dataclass
class Visit:
    """One scan step's inputs, shared by all configurations (see ``visits.StepArrays``)."""

    step: Any
    pass_: Any
    layer: Any
    new_pass: Any
    ids: Any
    units: Any
    next_use: Any
    decode: Any            # bool: the step belongs to a decode pass (its hits are also counted apart)


class Spec(NamedTuple):
    """Static structure of a compiled engine (hashable; one compile per distinct Spec)."""

    policy: str
    num_layers: int
    num_experts: int
    width: int
    partitioned: bool


class Policy(NamedTuple):
    """A policy as pure functions (optax-style): ``init(params) -> state``,
    ``shared_init() -> shared``, ``shared_step(shared, visit) -> shared`` (trace-determined
    state common to all configurations), ``step(state, visit, shared, params) -> (state, info)``."""

    name: str
    init: Any
    shared_init: Any
    shared_step: Any
    step: Any


def make_policy(spec: Spec) -> Policy:
    """Build the pure ``init``/``step`` functions of ``spec.policy`` for ``spec``'s shapes."""
    if spec.policy not in SCAN_POLICIES:
        raise ValueError(f"the scan kernel serves {SCAN_POLICIES}; {spec.policy!r} runs in the reference")
    L, E, W = spec.num_layers, spec.num_experts, spec.width
    N = L * E
    kind = KIND[spec.policy]
    part = spec.partitioned
    M = E if part else N  # pool size
    lfu = spec.policy in COUNTED

    def init(params: Params) -> CacheState:
        del params
        z = jnp.zeros((N if lfu else 0,), jnp.int32)
        return CacheState(rank=jnp.full((N,), ABSENT, jnp.int16), occ=jnp.zeros((L if part else 1,), jnp.int32),
                          freq=z,
                          per_layer=jnp.zeros((NCOUNT, L), jnp.int32),
                          max_occ=jnp.zeros((), jnp.int32), dec_hits=jnp.zeros((), jnp.int32))

    def shared_init():
        if spec.policy in SHARED_KEY:
            return jnp.full((N,), -INF_STEP if spec.policy == "belady" else 0, jnp.int32)
        return jnp.zeros((0,), jnp.int32)

    def shared_step(shared, visit: Visit):
        if spec.policy not in SHARED_KEY:
            return shared
        valid = visit.ids >= 0
        idx = jnp.where(valid, visit.ids, N)
        if spec.policy == "belady":
            return shared.at[idx].set(-visit.next_use, mode="drop")
        return shared.at[idx].add(visit.units, mode="drop")

    def pool(x, l):
        return lax.dynamic_slice_in_dim(x, l * E, E) if part else x

    def unpool(x, new, l):
        return lax.dynamic_update_slice_in_dim(x, new, l * E, 0) if part else new

    def step(state: CacheState, visit: Visit, shared, params: Params):
        l = visit.layer
        base = l * E if part else 0
        valid = visit.ids >= 0
        loc = jnp.where(valid, visit.ids - base, 0)
        loc_drop = jnp.where(valid, visit.ids - base, M)
        # forget "evicted in this pass" at a pass start; a real branch (the predicate is shared
        # by all configurations), so the other L-1 visits of a pass skip the full-array pass.
        # (Folding it into the step's one pass over the ranks made the step 2x slower here.)
        rank_all = lax.cond(visit.new_pass, lambda a: jnp.where(a == GONE, ABSENT, a).astype(jnp.int16),
                            lambda a: a, state.rank)
        r = pool(rank_all, l)
        pidx = l if part else 0
        occ = state.occ[pidx]
        if part:
            cap = params.capacity // L + (l < params.capacity % L).astype(jnp.int32)
        else:
            cap = params.capacity
        cap = cap.astype(jnp.int32)

        inD = jnp.zeros((M,), bool).at[loc_drop].set(True, mode="drop")
        r0D, rD, resD, missD, nd, nh, nm, coll, m, nev, na = classify_demand(r, loc, valid, occ, cap)
        rD = jnp.where(resD, rD, ABSENT).astype(jnp.int16)
        resident = r < GONE
        # admission: the first `na` missing ids (ids ascending within the step). Per-configuration
        # [W] work is written as W unrolled elementwise terms (wsum): under vmap they are
        # vectorised over the configurations, where a [W, W] reduction along the short W axis
        # is scalar code on XLA:CPU (measured: 15-25% of the whole FIFO step).
        cm = wsum([(jnp.arange(W) > j) & missD[j] for j in range(W - 1)], (W,))
        admitD = missD & (cm < na)
        Dp = resD | admitD
        occ_new = occ - nev + na
        s = DemandStep(spec=spec, kind=kind, l=l, base=base, r=r, rD=rD, resD=resD, valid=valid, loc=loc, inD=inD,
                       resident=resident, evictable=resident & ~inD, m=m, nev=nev, na=na, cm=cm, Dp=Dp,
                       nDp=nh + na, occ_new=occ_new, ids=visit.ids, step=visit.step, seed=params.seed,
                       shared=shared, freq=state.freq, pool=pool, unpool=unpool)
        r_c, gone, rD_new, freq = rerank(s)
        # non-residents keep their sentinel; victims become GONE; demanded experts are written last
        r_new = jnp.where(r >= GONE, r, jnp.where(gone, GONE, r_c)).astype(jnp.int16)
        # scatter at the shared indices (same for every configuration: a cheap scatter on CPU);
        # bypassed demands keep their sentinel
        r_new = r_new.at[loc_drop].set(jnp.where(Dp, rD_new, r0D), mode="drop")
        info = jnp.stack([nd, nh, nm, coll, nev, nm - na]).astype(jnp.int32)
        new = CacheState(rank=unpool(rank_all, r_new, l), occ=state.occ.at[pidx].set(occ_new),
                         freq=freq,
                         per_layer=state.per_layer.at[:, l].add(info),
                         max_occ=jnp.maximum(state.max_occ, occ_new),
                         dec_hits=state.dec_hits + jnp.where(visit.decode, nh, 0).astype(jnp.int32))
        return new, occ_new

    return Policy(spec.policy, init, shared_init, shared_step, step)
