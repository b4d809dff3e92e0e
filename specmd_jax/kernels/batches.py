"""The batch convention's JAX step (``convention="bigmoeonedge"``; the reference is
:mod:`specmd_jax.reference.batches`): one pure ``step`` per (configuration, batch).

State is dense over expert ids (``N = L * E``): residency, the per-expert record the keys read
(``last``/``ins`` stamps, ``freq`` since insertion, ``hist`` since the trace start, the tier
``mark``/``entry``) and, shared by all configurations, ``score`` (``sb``) and ``nextuse``
(``belady``). Sizes are integer *units* (the gcd of the layers' expert bytes), so budgets of many
GiB stay int32. After the batch's lookups, every configuration sorts its pool by the policy's key
(``lax.sort`` on (key, key, ins), candidates first) and evicts the shortest prefix that brings the
pool within its budget: the reference's "smallest key first until within budget", in one sort.
Under ``partitioned`` the pool is the batch's layer (``E`` ids), else all ``N``.

Numbers (the budget) are data in :class:`BatchParams`; the policy and shapes are static.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.kernels.pytree import pytree_dataclass

BIG = 2 ** 31 - 1
# counters by layer: lookups, hits, misses, collisions, evictions, lookups_decode, hits_decode, read units,
# evicted units (the reference's BATCH_COUNTERS, bytes in units)
NCOUNT = 9
BATCH_KERNEL_POLICIES = ("lru", "fifo", "lfu", "lfu_history", "belady", "sb", "ls", "fld")
NEEDS_INS = {"fifo", "belady", "sb", "fld"}     # keys not unique among residents without the ins stamp


class BatchSpec(NamedTuple):
    """Static structure (one compile per distinct spec)."""

    policy: str
    num_layers: int
    num_experts: int
    width: int
    partitioned: bool


@pytree_dataclass
class BatchParams:
    """budget: int32[] units per pool (the whole cache, or one layer's ``budget // L`` bytes)."""

    budget: Any


@pytree_dataclass
class BatchState:
    resident: Any    # bool[N]
    gone: Any        # bool[N] evicted earlier in the current pass
    last: Any        # int32[N] stamp of the last routed entry
    ins: Any         # int32[N] stamp it was inserted at
    freq: Any        # int32[N] lookups since insertion
    hist: Any        # int32[N] lookups since the trace start
    mark: Any        # int32[N] pass it entered the current tier
    entry: Any       # int32[N] stamp it entered the current tier
    used: Any        # int32[P] units resident per pool
    per_layer: Any   # int32[NCOUNT, L]
    max_used: Any    # int32[] largest pool size after a batch's admissions


@pytree_dataclass
class BatchIn:
    """One batch, shared by all configurations: ``ids[W]`` distinct global ids (-1 padding), their
    first and last stamps, next use (``belady``) and weight units (``sb``)."""

    pass_: Any
    layer: Any
    new_pass: Any
    decode: Any
    ids: Any
    first: Any
    last: Any
    next_use: Any
    units: Any


def _keys(policy, st: BatchState, shared, gid, l, E) -> tuple:
    """The policy's key arrays over ``gid`` (then ``ins`` breaks ties): smallest evicted first."""
    score, nextuse = shared
    return {"lru": lambda: (st.last,), "fifo": lambda: (), "lfu": lambda: (st.freq, st.last),
            "lfu_history": lambda: (st.hist, st.last), "belady": lambda: (-nextuse,), "sb": lambda: (score,),
            "ls": lambda: (st.mark, gid // E, st.entry), "fld": lambda: (-jnp.abs(gid // E - l),)}[policy]()


def evict_to_budget(keys, cand, size, over):
    """Victims (bool mask) and the units they free: the candidate with the smallest key (compared
    key by key; the last key is unique among candidates) goes first, one at a time, until ``over``
    units are freed or no candidate is left. A decode batch evicts a few experts, so a few
    masked minimum passes cost far less than sorting the pool (a ``lax.sort`` of the 6,144 Qwen3
    ids per batch was 20x slower here)."""

    def body(c):
        left, cand, ev = c
        v = cand
        for k in keys:
            v = v & (k == jnp.min(jnp.where(v, k, BIG)))
        return left - jnp.sum(jnp.where(v, size, 0), dtype=jnp.int32), cand & ~v, ev | v

    left, _, ev = lax.while_loop(lambda c: (c[0] > 0) & jnp.any(c[1]), body, (over, cand, jnp.zeros_like(cand)))
    return ev, over - left


class BatchPolicy(NamedTuple):
    """``init(params) -> state``, ``shared_init()``, ``shared_step(shared, batch)``,
    ``step(state, batch, shared, params) -> (state, used)`` (optax-style pure functions)."""

    init: Any
    shared_init: Any
    shared_step: Any
    step: Any


def make_batch_policy(spec: BatchSpec, size_units) -> BatchPolicy:
    """The pure functions of ``spec.policy`` under the batch convention; ``size_units``: int[L]
    units of one expert of each layer (static, from the trace)."""
    if spec.policy not in BATCH_KERNEL_POLICIES:
        raise ValueError(f"the batch kernel serves {BATCH_KERNEL_POLICIES}; {spec.policy!r} is not one")
    L, E = spec.num_layers, spec.num_experts
    N, part = L * E, spec.partitioned
    sizes = jnp.asarray(size_units, jnp.int32)
    sizes_all = jnp.repeat(sizes, E)

    def init(params: BatchParams) -> BatchState:
        del params
        z = jnp.zeros((N,), jnp.int32)
        return BatchState(resident=jnp.zeros((N,), bool), gone=jnp.zeros((N,), bool), last=z, ins=z, freq=z,
                          hist=z, mark=jnp.full((N,), -1, jnp.int32), entry=z,
                          used=jnp.zeros((L if part else 1,), jnp.int32),
                          per_layer=jnp.zeros((NCOUNT, L), jnp.int32), max_used=jnp.zeros((), jnp.int32))

    def shared_init():
        return jnp.zeros((N,), jnp.int32), jnp.zeros((N,), jnp.int32)

    def shared_step(shared, x: BatchIn):
        idx = jnp.where(x.ids >= 0, x.ids, N)
        score, nextuse = shared
        return score.at[idx].add(x.units, mode="drop"), nextuse.at[idx].set(x.next_use, mode="drop")

    def pool(a, l):
        return lax.dynamic_slice_in_dim(a, l * E, E) if part else a

    def unpool(a, new, l):
        return lax.dynamic_update_slice_in_dim(a, new, l * E, 0) if part else new

    def step(st: BatchState, x: BatchIn, shared, params: BatchParams):
        l, valid = x.layer, x.ids >= 0
        idx, gi = jnp.where(valid, x.ids, N), jnp.where(valid, x.ids, 0)
        gone = jnp.where(x.new_pass, False, st.gone)
        miss = valid & ~st.resident[gi]
        hit = valid & ~miss
        new_tier = st.mark[gi] != x.pass_
        put = lambda a, v: a.at[idx].set(v, mode="drop")  # noqa: E731
        st = BatchState(resident=put(st.resident, True), gone=gone, last=put(st.last, x.last),
                        ins=put(st.ins, jnp.where(miss, x.first, st.ins[gi])),
                        freq=put(st.freq, jnp.where(miss, 1, st.freq[gi] + 1)), hist=put(st.hist, st.hist[gi] + 1),
                        mark=put(st.mark, x.pass_), entry=put(st.entry, jnp.where(new_tier, x.first, st.entry[gi])),
                        used=st.used, per_layer=st.per_layer, max_used=st.max_used)
        pidx = l if part else 0
        nm = jnp.sum(miss, dtype=jnp.int32)
        used = st.used[pidx] + nm * sizes[l]
        # evict the smallest key among the candidates (resident, not in the batch) until within budget
        inb = pool(jnp.zeros((N,), bool).at[idx].set(True, mode="drop"), l)
        cand0 = pool(st.resident, l) & ~inb
        keys = [pool(k, l) for k in _keys(spec.policy, st, shared, jnp.arange(N, dtype=jnp.int32), l, E)]
        keys = keys + [pool(st.ins, l)] if spec.policy in NEEDS_INS else keys
        size_p = sizes[l] if part else sizes_all
        ev, freed = evict_to_budget(keys, cand0, size_p, used - params.budget)
        d = x.decode.astype(jnp.int32)
        nh = jnp.sum(hit, dtype=jnp.int32)
        info = jnp.stack([nh + nm, nh, nm, jnp.sum(miss & gone[gi], dtype=jnp.int32),
                          jnp.sum(ev, dtype=jnp.int32), (nh + nm) * d, nh * d, nm * sizes[l], freed])
        new = BatchState(resident=unpool(st.resident, pool(st.resident, l) & ~ev, l),
                         gone=unpool(gone, pool(gone, l) | ev, l), last=st.last, ins=st.ins, freq=st.freq,
                         hist=st.hist, mark=st.mark, entry=st.entry, used=st.used.at[pidx].set(used - freed),
                         per_layer=st.per_layer.at[:, l].add(info), max_used=jnp.maximum(st.max_used, used))
        return new, used - freed

    return BatchPolicy(init, shared_init, shared_step, step)
