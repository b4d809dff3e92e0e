"""The record kernel: the pinned convention's demand step over dense per-expert records.

Where :mod:`specmd_jax.kernels.demand` keeps contiguous protection ranks (fast, but each policy
needs its own re-rank algebra), this step keeps each expert's record as in the reference (``last``
and ``ins`` steps, ``freq`` since insertion, ``hist`` since the trace start, halved every
``decay`` steps for a decaying policy) and finds a step's victims by masked minimum passes over the
policy's key (:func:`specmd_jax.kernels.batches.evict_to_budget`, one slot per expert). Any policy
whose key reads only those fields runs here unchanged; it is the JAX path of policies whose order
changes in ways a rank update cannot follow (``lfu_decay``: halving merges counts, and ties then
fall to recency, reordering residents nobody touched).

Numbers (capacity, decay period) are data in :class:`RecordParams`; the policy and shapes are static.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.batches import BIG, evict_to_budget
from specmd_jax.kernels.pytree import pytree_dataclass

RECORD_KERNEL_POLICIES = ("lru", "fifo", "lfu", "lfu_history", "lfu_decay", "belady", "sb", "fld", "clock")
DECAYED = {"lfu_decay"}


class RecordSpec(NamedTuple):
    policy: str
    num_layers: int
    num_experts: int
    width: int
    partitioned: bool


@pytree_dataclass
class RecordParams:
    """capacity: int32[] slots (total over layers when partitioned); decay: int32[] steps between
    halvings of the ``hist`` counts (0: never; decaying policies only)."""

    capacity: Any
    decay: Any


@pytree_dataclass
class RecordState:
    resident: Any    # bool[N]
    gone: Any        # bool[N] evicted earlier in the current pass
    last: Any        # int32[N] last step used
    ins: Any         # int32[N] step inserted
    freq: Any        # int32[N] uses since insertion
    hist: Any        # int32[N] demands since the trace start (halved every `decay` steps if decaying)
    ref: Any         # int32[N] clock's reference bit
    pos: Any         # int32[N] clock's queue position (larger: nearer the head)
    clk: Any         # int32[] clock's last position given
    occ: Any         # int32[P] occupancy per pool
    per_layer: Any   # int32[6, L] DEMAND_COUNTERS by the layer of the visit
    max_occ: Any     # int32[]
    dec_hits: Any    # int32[] hits in decode passes


def _keys(policy, st: RecordState, shared, gid, l, E) -> tuple:
    """The policy's key arrays, the expert id last (unique: the pinned convention's tie-break)."""
    score, nextuse = shared
    k = {"lru": (st.last,), "fifo": (st.ins,), "lfu": (st.freq, st.last), "lfu_history": (st.hist, st.last),
         "lfu_decay": (st.hist, st.last), "belady": (-nextuse,), "sb": (score,),
         "fld": (-jnp.abs(gid // E - l),), "clock": (st.ref, st.pos)}[policy]
    return k + (gid,)


def clock_evict(cand, ref, pos, clk, need):
    """CLOCK's walk (the reference's ``clock_victims``): the candidate with the oldest position is
    evicted, or, with its reference bit set, cleared and moved to the head; until ``need`` are
    evicted. Returns (victims, count, ref, pos, clk)."""

    def body(c):
        cand, ref, pos, clk, ev, n = c
        h = cand & (pos == jnp.min(jnp.where(cand, pos, BIG)))
        again = jnp.any(h & (ref > 0))
        ref = jnp.where(h, 0, ref)
        pos = jnp.where(h & again, clk + 1, pos)
        return (cand & ~(h & ~again), ref, pos, clk + again, ev | (h & ~again), n + 1 - again)

    c = lax.while_loop(lambda c: (c[5] < need) & jnp.any(c[0]), body,
                       (cand, ref, pos, clk, jnp.zeros_like(cand), jnp.int32(0)))
    return c[4], c[5], c[1], c[2], c[3]


class RecordPolicy(NamedTuple):
    init: Any
    shared_init: Any
    shared_step: Any
    step: Any


def make_record_policy(spec: RecordSpec) -> RecordPolicy:
    """Pure ``init``/``step`` functions of ``spec.policy`` (the pinned convention, dense records)."""
    if spec.policy not in RECORD_KERNEL_POLICIES:
        raise ValueError(f"the record kernel serves {RECORD_KERNEL_POLICIES}; {spec.policy!r} is not one")
    L, E = spec.num_layers, spec.num_experts
    N, part, decays = L * E, spec.partitioned, spec.policy in DECAYED

    def init(params: RecordParams) -> RecordState:
        del params
        z = jnp.zeros((N,), jnp.int32)
        return RecordState(resident=jnp.zeros((N,), bool), gone=jnp.zeros((N,), bool), last=z, ins=z, freq=z, hist=z,
                           ref=z, pos=z, clk=jnp.zeros((), jnp.int32), occ=jnp.zeros((L if part else 1,), jnp.int32),
                           per_layer=jnp.zeros((len(DEMAND_COUNTERS), L), jnp.int32), max_occ=jnp.zeros((), jnp.int32),
                           dec_hits=jnp.zeros((), jnp.int32))

    def shared_init():
        return jnp.zeros((N,), jnp.int32), jnp.full((N,), -BIG, jnp.int32)

    def shared_step(shared, x):
        idx = jnp.where(x.ids >= 0, x.ids, N)
        score, nextuse = shared
        return score.at[idx].add(x.units, mode="drop"), nextuse.at[idx].set(x.next_use, mode="drop")

    def pool(a, l):
        return a.reshape(L, E)[l] if part else a

    def step(st: RecordState, x, shared, params: RecordParams):
        l, valid = x.layer, x.ids >= 0
        idx, gi = jnp.where(valid, x.ids, N), jnp.where(valid, x.ids, 0)
        hist = st.hist
        if decays:
            due = (params.decay > 0) & (x.step > 0) & (x.step % jnp.maximum(params.decay, 1) == 0)
            hist = jnp.where(due, hist >> 1, hist)
        hist = hist.at[idx].add(1, mode="drop")            # every demand counts, a bypassed one too
        gone = jnp.where(x.new_pass, False, st.gone)
        miss = valid & ~st.resident[gi]
        hit = valid & ~miss
        m, nh = jnp.sum(miss, dtype=jnp.int32), jnp.sum(hit, dtype=jnp.int32)
        pidx = l if part else 0
        cap = (params.capacity // L + (l < params.capacity % L).astype(jnp.int32)) if part else params.capacity
        occ = st.occ[pidx]
        free = cap - occ
        inD = jnp.zeros((N,), bool).at[idx].set(True, mode="drop")
        cand = st.resident & ~inD & ((jnp.arange(N) // E == l) if part else True)
        ref, pos, clk = st.ref, st.pos, st.clk
        if spec.policy == "clock":
            ev, nev, ref, pos, clk = clock_evict(cand, ref, pos, clk, m - free)
        else:
            cur = dataclasses.replace(st, gone=gone, hist=hist)
            keys = [pool(k, l) for k in _keys(spec.policy, cur, shared, jnp.arange(N, dtype=jnp.int32), l, E)]
            ev_p, nev = evict_to_budget(keys, pool(cand, l), jnp.int32(1), m - free)
            ev = ev_p.reshape(-1) if not part else jnp.zeros((L, E), bool).at[l].set(ev_p).reshape(-1)
        na = jnp.minimum(m, free + nev)
        rank = jnp.cumsum(miss) - miss
        admit = miss & (rank < na)                          # the lowest missing ids (ids ascending)
        use = hit | admit
        put = lambda a, v: a.at[jnp.where(use, x.ids, N)].set(v, mode="drop")  # noqa: E731
        occ_new = occ - nev + na
        info = jnp.stack([nh + m, nh, m, jnp.sum(miss & gone[gi], dtype=jnp.int32), nev, m - na])
        new = RecordState(resident=put(st.resident & ~ev, True), gone=gone | ev, last=put(st.last, x.step),
                          ins=put(st.ins, jnp.where(admit, x.step, st.ins[gi])),
                          freq=put(st.freq, jnp.where(admit, 1, st.freq[gi] + 1)), hist=hist,
                          ref=put(ref, jnp.where(admit, 0, 1)), pos=put(pos, jnp.where(admit, clk + 1 + rank, pos[gi])),
                          clk=clk + na, occ=st.occ.at[pidx].set(occ_new), per_layer=st.per_layer.at[:, l].add(info.astype(jnp.int32)),
                          max_occ=jnp.maximum(st.max_occ, occ_new), dec_hits=st.dec_hits + jnp.where(x.decode, nh, 0))
        return new, occ_new

    return RecordPolicy(init, shared_init, shared_step, step)
